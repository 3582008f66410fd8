"""env.progress_reward (envs/base.py ToolEnv.progress): a tool turn earns the reward for each value the solution
needs that its results show for the first time — the per-turn reward that turn-level credit (turn_grpo) acts on.
Worked examples, the built-in demonstrations earning it, and the refusals."""

import pytest

from posttrain.config.sections import EnvSection
from posttrain.data.chat import tool_call_text
from posttrain.envs import ToolEnv
from posttrain.envs.builtin import calculator, demonstrations, environment_factory
from posttrain.errors import ConfigError, UserError
from posttrain.tasks.lookup import LookupTask
from posttrain.tasks.word import WordTask


def call(expression: str) -> dict:
    return {"role": "assistant", "content": tool_call_text({"name": "calculator", "arguments": {"expression": expression}})}


def test_the_worked_example():
    """(12 × 6) − 9: values 72 and 63. 12 * 6 shows 72 (+0.5); the same call again shows nothing new (0); the
    echo calculator("63") shows 63 but its own argument held it (0); 72 - 9 shows 63 (+0.5); a malformed call
    shows nothing (0); the answer is left to the reward sources (None). The episode's environment reward: 1.0."""
    env = ToolEnv([calculator], score=None, progress_reward=0.5, max_tool_turns=6)
    env.reset({"prompt": "…", "answer": "63", "values": ["72", "63"]})
    rewards = [env.step(m).reward for m in [call("12 * 6"), call("12 * 6"), call("63"), call("72 - 9"),
                                            {"role": "assistant", "content": "<tool_call>{\"name\": </tool_call>"},
                                            {"role": "assistant", "content": "The answer is 63."}]]
    assert rewards == [0.5, 0.0, 0.0, 0.5, 0.0, None]
    env.reset({"prompt": "…", "answer": "63", "values": ["72", "63"]})  # a new episode finds them again
    assert env.step(call("12 * 6")).reward == 0.5
    env.reset({"prompt": "…", "answer": "7"})  # no values: the answer is the one needed value
    assert [env.step(call(e)).reward for e in ["3 + 4", "70 / 10", "1.7 * 1"]] == [0.5, 0.0, 0.0]  # not "1.7"


def test_whole_numbers_only():
    env = ToolEnv([calculator], score=None, progress_reward=1.0)
    env.reset({"prompt": "…", "values": ["7"]})
    assert env.step(call("70 + 1")).reward == 0.0 and env.step(call("3.5 * 2")).reward == 1.0  # "71" holds no 7


def test_without_progress_reward_tool_turns_are_unscored():
    env = environment_factory("calculator", max_turns=3, timeout=1.0)({"prompt": "…"})
    env.reset({"prompt": "…", "values": ["72"]})
    assert env.step(call("12 * 6")).reward is None


def expected(row: dict) -> int:
    """The values a word demonstration finds: each step's result, unless an earlier step found it or its own
    expression already holds it (mul by 1, say)."""
    found = []
    for calls, value in zip(row["calls"], row["values"]):
        if value not in found and value not in calls[0]["arguments"]["expression"].split():
            found.append(value)
    return len(found)


def test_the_demonstrations_earn_it_turn_by_turn():
    """Played through the environments with progress_reward 0.5, the built-in demonstrations earn 0.5 on each
    step that finds a new value (word: every step but degenerate ones; lookup: the one search)."""
    word = WordTask().tool_rows("train", 60)
    lookup = LookupTask().tool_rows("train", 20)
    for name, rows in [("calculator", word), ("search", lookup)]:
        make = environment_factory(name, max_turns=4, timeout=10.0, progress_reward=0.5)
        for row, demo in zip(rows, demonstrations(name, rows, max_turns=4)):
            env = make(row)
            env.reset(row)
            earned = [env.step({"role": "assistant", "content": "\n".join(map(tool_call_text, m["tool_calls"]))}).reward
                      for m in demo["messages"] if m.get("tool_calls")]
            assert sum(earned) == 0.5 * (expected(row) if name == "calculator" else 1), (row, earned)
    assert sum(expected(r) for r in word) > len(word)  # two-step problems earn twice


@pytest.mark.parametrize("name", ["code", "{user}:make"])
def test_environments_that_name_no_values_refuse_it(tmp_path, name):
    user = tmp_path / "my_env.py"
    user.write_text("def make(row):\n    return None\n")
    with pytest.raises(UserError, match="fix: env.progress_reward=0"):
        environment_factory(name.format(user=user), max_turns=3, timeout=1.0, progress_reward=0.5)
    with pytest.raises(ConfigError, match="env.progress_reward=0.5"):
        EnvSection(progress_reward=-1.0).validate()
