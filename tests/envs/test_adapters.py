"""Environments from verifiers and OpenEnv (envs/adapters.py), each driven by posttrain's run_episodes with a scripted
engine: the environment's answers land in the trajectory at mask 0 (and reach the policy), its rewards are the
episode's, its end ends the episode. The packages cannot share one environment (verifiers 0.4.0 pins mcp==2.0.0,
OpenEnv's fastmcp needs mcp<2), so `make test-vllm` runs this file in .venv-vllm (verifiers) and `make
test-openenv` in .venv-openenv; each group skips where its package is missing, and the missing-package errors are
checked everywhere."""

import os
import re
import sys
import textwrap
import threading
import time

import pytest

from conftest import ReplyEngine

from posttrain.envs import ChatDeltas, run_episodes, tool_schema
from posttrain.envs.adapters import openenv_env, tool_stub, verifiers_env
from posttrain.errors import UserError
from posttrain.models.loading import load_tokenizer
from posttrain.models.tiny import tiny_path
from posttrain.rollout import SamplingParams

PARAMS = SamplingParams(max_new_tokens=160)  # the tiny tokenizer spells most text out character by character


def tiny_chat(tools=()):
    tokenizer = load_tokenizer(str(tiny_path()))
    return tokenizer, ChatDeltas(tokenizer, [tool_schema(fn) for fn in tools])


def environment_text(tokenizer, trajectory) -> str:
    """What the environment added to the trajectory: its ids at mask 0, decoded."""
    return tokenizer.decode([x for x, m in zip(trajectory.ids, trajectory.mask) if not m])


def sampled_ids_are_trained(engine, episodes) -> bool:
    """Token in, token out: the ids at mask 1 are exactly the ids the engine sampled, turn after turn."""
    return all([x for x, m in zip(t.ids, t.mask) if m] == [x for turn in engine.given[e] for x in turn]
               for e, t in enumerate(episodes))


# ---------------------------------------------------------------------------------------------------------------------
# verifiers: environments are plugin modules (a taskset is loaded by id, a tool server runs as `python -m MODULE`)

GUESS_GAME = '''
    import re
    import verifiers.v1 as vf


    class GuessData(vf.TaskData):
        secret: int


    class GuessTask(vf.Task[GuessData, vf.State, vf.TaskConfig]):
        @vf.reward
        async def solved(self, trace) -> float:
            return float(trace.info.get("solved", False))


    class GuessTaskset(vf.Taskset[GuessTask, vf.TasksetConfig]):
        def load(self):
            yield GuessTask(GuessData(prompt="Guess my number from 1 to 9.", secret=7), self.config.task)


    class GuessConfig(vf.EnvConfig):
        player: vf.AgentConfig = vf.AgentConfig()


    class GuessEnv(vf.Env[GuessConfig]):
        """Answers each guess with higher or lower, until it is right."""

        async def run(self, task, agents):
            async with agents.player.interaction(task) as interaction:
                segment = await interaction.turn()
                while not segment.terminated:
                    guess = int((re.findall(r"[0-9]+", segment.last_reply) or ["0"])[-1])
                    if guess == task.data.secret:
                        interaction.trace.info["solved"] = True
                        break
                    segment = await interaction.turn("higher" if guess < task.data.secret else "lower")


    __all__ = ["GuessEnv", "GuessTaskset"]
'''

SUM_WITH_A_TOOL = '''
    import verifiers.v1 as vf


    class AddTools(vf.Toolset[vf.ToolsetConfig]):
        @vf.tool
        async def add(self, a: int, b: int) -> int:
            """Add two integers."""
            return a + b


    class SumData(vf.TaskData):
        answer: int


    class SumTask(vf.Task[SumData, vf.State, vf.TaskConfig]):
        @classmethod
        def toolsets(cls, config):
            return [AddTools(vf.ToolsetConfig())]

        @vf.reward
        async def correct(self, task, trace) -> float:
            return float(str(task.answer) in trace.last_reply)


    class SumTaskset(vf.Taskset[SumTask, vf.TasksetConfig]):
        def load(self):
            yield SumTask(SumData(prompt="What is 19 + 23?", answer=42), self.config.task)


    __all__ = ["SumTaskset"]

    if __name__ == "__main__":  # verifiers serves a toolset as `python -m posttrain_vf_sum`
        AddTools.run()
'''


@pytest.fixture(scope="module")
def vf_plugins(tmp_path_factory):
    """The two environments above as importable modules, here and in verifiers' tool-server subprocess."""
    pytest.importorskip("verifiers.v1")
    folder = tmp_path_factory.mktemp("vf_plugins")
    (folder / "posttrain_vf_guess.py").write_text(textwrap.dedent(GUESS_GAME))
    (folder / "posttrain_vf_sum.py").write_text(textwrap.dedent(SUM_WITH_A_TOOL))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
        yield folder


def bisect_guesses():
    """A policy that guesses the middle of what the game's answers (higher/lower) leave open."""
    bounds = {}

    def reply(prompt, episode):
        low, high, last = bounds.get(episode, (1, 9, None))
        if last is not None:
            low, high = (last + 1, high) if prompt.rfind("higher") > prompt.rfind("lower") else (low, last - 1)
        guess = (low + high) // 2
        bounds[episode] = (low, high, guess)
        return f"My guess is {guess}."
    return reply


def test_verifiers_game_answers_each_turn_and_its_rubric_scores_the_episode(vf_plugins):
    import posttrain_vf_guess as game
    make = verifiers_env(game.GuessEnv(game.GuessConfig(taskset={"id": "posttrain_vf_guess"})))
    tokenizer, chat = tiny_chat()
    rows = [{"prompt": "Guess my number from 1 to 9.", "secret": s} for s in (7, 3, 9)]
    engine = ReplyEngine(tokenizer, bisect_guesses())
    episodes = run_episodes(engine, [make(row) for row in rows], rows, chat, PARAMS, max_turns=3)

    assert sampled_ids_are_trained(engine, episodes)
    seven, three, nine = episodes
    assert (seven.turns, seven.done, seven.truncated, seven.reward) == (2, True, False, 1.0)  # 5, 7
    assert (three.turns, three.done, three.truncated, three.reward) == (3, True, False, 1.0)  # 5, 2, 3
    assert three.answer == "My guess is 3." and three.turn_rewards == [None, None, 1.0]
    assert [(m["role"], m["content"]) for m in three.messages] == [
        ("user", rows[1]["prompt"]), ("assistant", "My guess is 5."), ("user", "lower"),
        ("assistant", "My guess is 2."), ("user", "higher"), ("assistant", "My guess is 3.")]
    assert re.findall("higher|lower", environment_text(tokenizer, three)) == ["lower", "higher"]
    # out of turns before the game ended (5, 7, 8): posttrain stops it, unscored, and verifiers' episode is dropped
    assert (nine.turns, nine.truncated, nine.reward) == (3, True, None)
    assert re.findall("higher|lower", environment_text(tokenizer, nine)) == ["higher"] * 3


def test_verifiers_tools_run_in_the_environment_and_reach_the_model(vf_plugins):
    make = verifiers_env("posttrain_vf_sum")
    row = {"prompt": "What is 19 + 23?", "answer": 42}
    env = make(row)
    assert [tool_schema(fn) for fn in env.tools] == [  # as its MCP server offers it, qualified by the server
        {"type": "function", "function": {"name": "add_tools_add", "description": "Add two integers.",
         "parameters": {"type": "object", "properties": {"a": {"type": "integer", "description": "A"},
                                                         "b": {"type": "integer", "description": "B"}},
                        "required": ["a", "b"]}}}]
    tokenizer, chat = tiny_chat(env.tools)

    def reply(prompt, episode):  # call the tool, then answer with what it returned
        results = re.findall(r"<\|tool\|>\s*(\S+?)</s>", prompt)
        if not results:
            return '<tool_call>{"name": "add_tools_add", "arguments": {"a": 19, "b": 23}}</tool_call>'
        return f"The answer is {results[-1]}."

    engine = ReplyEngine(tokenizer, reply)
    (t,) = run_episodes(engine, [env], [row], chat, PARAMS, max_turns=4)
    assert sampled_ids_are_trained(engine, [t])
    assert (t.turns, t.done, t.tool_calls, t.tool_errors) == (2, True, 1, 0)
    assert t.messages[2] == {"role": "tool", "content": "42", "name": "add_tools_add"}
    assert "42" in environment_text(tokenizer, t)
    assert (t.answer, t.reward) == ("The answer is 42.", 1.0)  # the task's @vf.reward read the answer


def test_verifiers_env_with_several_seats_needs_the_policys_named(vf_plugins):
    from verifiers.v1.envs.user_sim.env import UserSimEnv, UserSimEnvConfig
    env = UserSimEnv(UserSimEnvConfig(taskset={"id": "posttrain_vf_guess"}))
    with pytest.raises(UserError, match=r"seats \['assistant', 'user'\] — fix: verifiers_env\(\.\.\., role=NAME\)"):
        verifiers_env(env)
    with pytest.raises(UserError, match="seat 'user' has no model of its own"):
        verifiers_env(env, role="assistant")


# ---------------------------------------------------------------------------------------------------------------------
# OpenEnv

@pytest.fixture(scope="module")
def counting():
    """A counting game as an OpenEnv Environment: say the number after the last one; three numbers end it, each
    right one earns 1."""
    pytest.importorskip("openenv.core")
    from openenv.core.env_server.interfaces import Environment
    from openenv.core.env_server.types import Action, Observation, State

    class CountAction(Action):
        number: int

    class CountObservation(Observation):
        prompt: str = ""

    class CountEnvironment(Environment):
        SUPPORTS_CONCURRENT_SESSIONS = True

        def __init__(self):
            super().__init__()
            self._state, self.last = State(step_count=0), 0

        def reset(self, seed=None, episode_id=None, **kwargs):
            self._state, self.last = State(episode_id=episode_id, step_count=0), seed or 0
            return CountObservation(prompt=f"Count on from {self.last}.")

        def step(self, action, timeout_s=None, **kwargs):
            self._state.step_count += 1
            right, self.last = action.number == self.last + 1, action.number
            return CountObservation(prompt=f"{'right' if right else 'wrong'}, go on", reward=float(right),
                                    done=self._state.step_count == 3)

        @property
        def state(self):
            return self._state

    return CountEnvironment, CountAction, CountObservation


def scripted(replies: dict[int, list[str]]):
    return lambda prompt, episode: replies[episode].pop(0)


def test_openenv_environment_in_process_rewards_each_step(counting):
    CountEnvironment, CountAction, _ = counting
    make = openenv_env(CountEnvironment, lambda message: CountAction(number=int(message["content"])),
                       lambda observation: [{"role": "user", "content": observation.prompt}])
    tokenizer, chat = tiny_chat()
    rows = [{"reset": {"seed": 4}}, {"reset": {"seed": 10}}]
    engine = ReplyEngine(tokenizer, scripted({0: ["5", "6", "7"], 1: ["eleven", "11", "13", "14"]}))
    first, second = run_episodes(engine, [make(row) for row in rows], rows, chat, PARAMS, max_turns=5)

    assert sampled_ids_are_trained(engine, [first, second])
    assert first.messages[0] == {"role": "user", "content": "Count on from 4."}
    assert (first.turns, first.done, first.reward, first.answer) == (3, True, 3.0, "7")
    # a message that is no action is answered (and counted), not sent; 13 after 11 is wrong
    assert (second.turns, second.done, second.turn_rewards) == (4, True, [None, 1.0, 0.0, 1.0])
    assert (second.reward, second.tool_errors) == (2.0, 1)
    assert re.findall(r"error: invalid literal|right|wrong", environment_text(tokenizer, second)) == [
        "error: invalid literal", "right", "wrong"]  # the last observation ends the episode: never rendered


def test_openenv_client_talks_to_a_server(counting):
    from openenv.core import GenericEnvClient
    from openenv.core.env_server.http_server import create_fastapi_app
    import uvicorn
    CountEnvironment, CountAction, CountObservation = counting
    server = uvicorn.Server(uvicorn.Config(create_fastapi_app(CountEnvironment, CountAction, CountObservation),
                                           host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    try:
        make = openenv_env(lambda: GenericEnvClient(base_url=url), lambda m: {"number": int(m["content"])},
                           lambda observation: [{"role": "user", "content": observation["prompt"]}])
        tokenizer, chat = tiny_chat()
        engine = ReplyEngine(tokenizer, scripted({0: ["2", "3", "5"]}))
        (t,) = run_episodes(engine, [make({"reset": {"seed": 1}})], [{"reset": {"seed": 1}}], chat, PARAMS)
    finally:
        server.should_exit = True
        thread.join(10)
    assert t.messages[0]["content"] == "Count on from 1."
    assert (t.turns, t.done, t.turn_rewards) == (3, True, [1.0, 1.0, 0.0])
    assert environment_text(tokenizer, t).count("right, go on") == 2


def test_openenv_env_refuses_an_environment_object(counting):
    CountEnvironment, _, _ = counting
    with pytest.raises(UserError, match="needs a factory, not an environment object"):
        openenv_env(CountEnvironment(), str, list)


# ---------------------------------------------------------------------------------------------------------------------
# Without the packages

@pytest.mark.parametrize("adapter, modules, pin, call", [
    ("verifiers_env", ["verifiers", "verifiers.v1"], "verifiers==0.4.0", lambda: verifiers_env("any")),
    ("openenv_env", ["openenv", "openenv.core"], "openenv==0.10.0", lambda: openenv_env(dict, str, list)),
], ids=["verifiers", "openenv"])
def test_a_missing_package_is_one_line_with_the_install_command(monkeypatch, adapter, modules, pin, call):
    for module in modules:  # as if not installed, whether it is or not
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(UserError) as error:
        call()
    message = str(error.value)
    assert message.startswith(f"{adapter} needs {modules[0]}, which is not installed")
    assert message.endswith(f"— fix: pip install '{pin}'") and "\n" not in message


def test_a_tool_stub_has_the_environments_schema():
    schema = {"type": "function", "function": {
        "name": "search", "description": "Search the web.\nReturns snippets.",
        "parameters": {"type": "object", "required": ["query"], "properties": {
            "query": {"type": "string", "description": "what to look for"},
            "limit": {"anyOf": [{"type": "integer"}, {"type": "null"}], "title": "Limit"},
            "engine": {"type": "string", "enum": ["web", "news"], "description": "where"}}}}}
    stub = tool_stub(schema)
    assert tool_schema(stub) == {"type": "function", "function": {
        "name": "search", "description": "Search the web. Returns snippets.",
        "parameters": {"type": "object", "required": ["query"], "properties": {
            "query": {"type": "string", "description": "what to look for"},
            "limit": {"type": "integer", "description": "Limit"},
            "engine": {"type": "string", "enum": ["web", "news"], "description": "where"}}}}}
    with pytest.raises(RuntimeError, match="runs inside the environment"):
        stub(query="x")
