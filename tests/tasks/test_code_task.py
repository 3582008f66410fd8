"""The `code` task and its verifier code_tests: hidden unit tests run on the model's function in the sandbox; the
reward is the fraction that pass. And a short `posttrain rl task.name=code` run through the CLI."""

import json
import time

import pytest

from posttrain import tasks
from posttrain.sandbox import Limits
from posttrain.tasks.code import PROBLEMS, CodeTask, code_tests, extract_code
from conftest import run_cli

TESTS = ["assert add(1, 2) == 3", "assert add(-4, 4) == 0", "assert add(10, 5) == 15", "assert add(0, 0) == 0"]


def fenced(body: str) -> str:
    return f"Sure, here it is:\n```python\n{body}\n```\nThis adds the numbers."


def test_a_correct_function_scores_1_and_one_right_on_half_the_tests_scores_half():
    assert code_tests("p", fenced("def add(a, b):\n    return a + b"), TESTS) == 1.0
    # right when a > 0: the first and third tests pass, the second and fourth fail
    assert code_tests("p", fenced("def add(a, b):\n    return a + b if a > 0 else 99"), TESTS) == 0.5


@pytest.mark.parametrize("body", ["def add(a, b) return a + b", "raise SystemExit(0)", "import nonexistent_module",
                                  "def add(a, b):\n    return str(a + b)",
                                  "print('x 4 4')\ndef add(a, b):\n    return None"],
                         ids=["syntax-error", "exits-at-import", "import-error", "wrong", "prints-a-fake-result"])
def test_broken_or_wrong_code_scores_0(body):
    assert code_tests("p", fenced(body), TESTS) == 0.0


def test_a_function_that_never_returns_fails_each_test_within_its_time_limit():
    start = time.monotonic()
    value = code_tests("p", fenced("def add(a, b):\n    while True:\n        pass"), TESTS[:2], per_test_s=0.3)
    assert value == 0.0 and time.monotonic() - start < 5


def test_a_hang_at_import_scores_0_at_the_wall_clock():
    start = time.monotonic()
    assert code_tests("p", fenced("while True:\n    pass"), TESTS, limits=Limits(wall_s=1)) == 0.0
    assert time.monotonic() - start < 5


def test_a_row_without_tests_is_unscorable_and_tests_may_be_a_json_string():
    assert code_tests("p", fenced("def add(a, b):\n    return a + b"), None) is None
    assert code_tests("p", fenced("def add(a, b):\n    return a + b"), json.dumps(TESTS[:1])) == 1.0


def test_extract_code_takes_the_last_fenced_block_an_unclosed_one_or_everything():
    assert extract_code("a\n```python\nx = 1\n```\nb\n```py\ny = 2\n```\n") == "y = 2\n"
    assert extract_code("```\nbare = 1\n```") == "bare = 1\n"
    assert extract_code("cut off:\n```python\ndef f():\n    return") == "def f():\n    return"
    assert extract_code("def f(): return 1") == "def f(): return 1"


def test_the_built_in_task_registered_with_hidden_tests_disjoint_splits_and_correct_references():
    task = tasks.get("code", max_digits=3, ops="+", steps=False)  # the options every command passes
    assert isinstance(task, CodeTask) and "code" in tasks.names()
    train = {r["prompt"] for r in task.rows("train", 200)}
    held_out = task.rows("eval", 100)
    assert len(held_out) == len({r["prompt"] for r in held_out}) >= 4
    assert train.isdisjoint(r["prompt"] for r in held_out) and len(train) + len(held_out) == len(PROBLEMS)
    for row in held_out:
        assert "assert" not in row["prompt"]  # the tests stay hidden
    for problem in PROBLEMS[:8]:
        row = {"tests": [f"assert {t}" for t in problem[4]]}
        assert task.score(task.prompt_text(problem), task.solution_text(problem), **row) == 1.0, problem[0]


def test_posttrain_rl_on_the_code_task_runs_and_logs_the_reward(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("rl", "--algo", "grpo", f"output_dir={run_dir}", "task.name=code", "train.max_steps=2",
                   "rl.prompts_per_step=2", "rl.generations=2", "train.micro_batch_size=4", "eval.num_samples=2",
                   "sampling.max_new_tokens=16", "threads=1", "log.progress=false", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "reward/mean" in r]
    assert [r["step"] for r in steps] == [1, 2]
    assert all(0.0 <= r["reward/verifier/mean"] <= 1.0 and r["reward/unscored_frac"] == 0.0 for r in steps)


def test_reward_function_code_tests_is_the_built_in_reward_with_the_timeout_as_the_sandbox_wall_clock():
    from posttrain.errors import ConfigError
    from posttrain.rewards import FileReward, score_all

    source = FileReward.from_spec("code_tests", timeout_s=1.0, batched=False)  # as rl builds reward.function
    completions = [fenced("def add(a, b):\n    return a + b"), fenced("def add(a, b):\n    return 0"),
                   fenced("while True:\n    pass"), "no tests in this row"]
    rows = [{"prompt": "p", "tests": TESTS}] * 3 + [{"prompt": "p"}]
    start = time.monotonic()
    batch = score_all([(source, 1.0)], ["p"] * 4, completions, rows)
    assert batch.per_source["code_tests"][:3].tolist() == [1.0, 0.5, 0.0] and time.monotonic() - start < 6
    assert batch.scored.tolist() == [True, True, True, False] and batch.failures["none"] == 1
    with pytest.raises(ConfigError, match="reward.function_batched=false"):
        FileReward.from_spec("code_tests", timeout_s=1.0, batched=True)
