"""Tool calls (envs/tools.py): the parser's worked examples, malformed calls answered with an error, tools run
concurrently with a timeout, schemas from type hints."""

import time

import pytest

from posttrain.envs import ToolCall, ToolEnv, call_tools, parse_tool_calls, tool_schema


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first
        b: the second
    """
    return a + b


def test_the_worked_examples():
    t = parse_tool_calls('Let me add. <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>')
    assert (t.content, t.calls, t.errors) == ("Let me add.", [ToolCall("add", {"a": 1, "b": 2})], [])
    assert parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 1</tool_call>').errors == [
        "tool call 1 is not valid JSON (Expecting ',' delimiter at character 36)"]
    assert parse_tool_calls('{"name": "add", "parameters": {"a": 1, "b": 2}}').calls == [
        ToolCall("add", {"a": 1, "b": 2})]


@pytest.mark.parametrize("text, error", [
    ('<tool_call>{"name": "add", "arguments": {"a": 1}}', "tool call 1 has no closing </tool_call>"),
    ('<tool_call>{"arguments": {"a": 1}}</tool_call>', 'tool call 1 has no "name"'),
    ('<tool_call>["add", 1, 2]</tool_call>', 'tool call 1 has no "name"'),
    ('<tool_call>{"name": "add", "arguments": [1, 2]}</tool_call>', 'tool call 1 (add): "arguments" must be'),
])
def test_malformed_calls_become_errors(text, error):
    t = parse_tool_calls(text)
    assert t.calls == [] and len(t.errors) == 1 and t.errors[0].startswith(error)


def test_several_calls_and_arguments_written_as_a_string():
    t = parse_tool_calls('<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}</tool_call> and '
                         '<tool_call>{"name": "add", "arguments": {"a": 3, "b": 4}}</tool_call>')
    assert t.calls == [ToolCall("add", {"a": 1, "b": 2}), ToolCall("add", {"a": 3, "b": 4})] and t.content == "and"
    assert parse_tool_calls("no calls here").calls == []


def test_tools_run_concurrently_and_failures_are_answered():
    def slow(seconds: float) -> str:
        """Sleep.

        Args:
            seconds: how long
        """
        time.sleep(seconds)
        return "slept"

    def broken() -> str:
        """Fail."""
        raise ValueError("no")

    tools = {"add": add, "slow": slow, "broken": broken}
    calls = [ToolCall("slow", {"seconds": 0.3})] * 4 + [ToolCall("add", {"a": 1, "b": 2}),
                                                         ToolCall("add", {"a": 1}), ToolCall("nope", {}),
                                                         ToolCall("broken", {}), ToolCall("slow", {"seconds": 5})]
    t0 = time.perf_counter()
    answers = call_tools(calls, tools, timeout=1.0)
    assert time.perf_counter() - t0 < 2.5  # the four 0.3 s calls overlapped; the 5 s one was not waited for
    assert answers[:5] == ["slept"] * 4 + ["3"]
    assert answers[5].startswith("error: add: ") and "missing 1 required positional argument" in answers[5]
    assert answers[6] == "error: no tool named 'nope'; the tools are: add, broken, slow"
    assert answers[7] == "error: broken failed: ValueError: no"
    assert answers[8] == "error: slow took longer than 1 s"


def test_a_hung_tool_does_not_keep_the_process_alive():
    """A tool that never returns is answered with a timeout error, and the process still exits at once."""
    import subprocess
    import sys
    program = ("import time\nfrom posttrain.envs import ToolCall, call_tools\n"
               "def hang() -> str:\n    time.sleep(1000)\n"
               "print(call_tools([ToolCall('hang', {})], {'hang': hang}, timeout=0.2)[0])\n")
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "error: hang took longer than 0.2 s" and time.perf_counter() - t0 < 30


def test_schema_from_type_hints_and_docstring():
    schema = tool_schema(add)["function"]
    assert schema["name"] == "add" and schema["description"] == "Add two integers."
    assert schema["parameters"]["properties"] == {"a": {"type": "integer", "description": "the first"},
                                                  "b": {"type": "integer", "description": "the second"}}


def test_tool_env_answers_calls_and_scores_the_answer():
    env = ToolEnv([add], score=lambda row, answer: float(str(row["answer"]) in answer), max_tool_turns=1)
    assert env.reset({"prompt": "2+3?", "answer": 5}) == [{"role": "user", "content": "2+3?"}]
    step = env.step({"role": "assistant",
                     "content": '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
                                '<tool_call>{"name": "add"</tool_call>'})
    assert [m["content"] for m in step.messages][0] == "5" and step.messages[1]["content"].startswith("error: ")
    assert (step.reward, step.done, step.info) == (None, False, {"tool_calls": 2, "tool_errors": 1})
    last = env.step({"role": "assistant", "content": '<tool_call>{"name": "add"}</tool_call> It is 5.'})
    assert (last.reward, last.done) == (1.0, True)  # out of tool turns: the message is the answer


def test_the_calculator_computes_arithmetic_and_nothing_else():
    from posttrain.envs.builtin import calculator
    assert calculator("(47 + 85) * 3") == "396" and calculator("7 / 2") == "3.5" and calculator("10 / 5") == "2"
    assert calculator("52 + 19 − 33") == "38" and calculator("6 × 7") == "42"  # the word task's symbols
    for bad, error in [("2 ** 100", "exponent too large"), ("__import__('os')", "not arithmetic"),
                       ("x + 1", "not arithmetic")]:
        with pytest.raises(ValueError, match=error):
            calculator(bad)
    answer = call_tools([ToolCall("calculator", {"expression": "1/0"})], {"calculator": calculator})[0]
    assert answer == "error: calculator failed: ZeroDivisionError: division by zero"


def test_environment_names(tmp_path):
    from posttrain.envs.builtin import environment_factory
    from posttrain.errors import UserError
    env = environment_factory("calculator", max_turns=3, timeout=1.0)({"prompt": "2+2?"})
    assert env.reset({"prompt": "2+2?"})[0]["role"] == "system" and env.max_tool_turns == 2
    with pytest.raises(UserError, match="env.name=calculator or env.name=my_env.py:make"):
        environment_factory("calculater", max_turns=3, timeout=1.0)
    user = tmp_path / "my_env.py"
    user.write_text("from posttrain.envs import ToolEnv\n"
                    "def make(row):\n    return ToolEnv([], score=lambda row, answer: 1.0)\n")
    assert environment_factory(f"{user}:make", max_turns=3, timeout=1.0)({}).step(
        {"role": "assistant", "content": "hi"}).reward == 1.0
    with pytest.raises(UserError, match="defines no function 'build'"):
        environment_factory(f"{user}:build", max_turns=3, timeout=1.0)


def test_bm25_worked_example_and_the_formula():
    import math

    from posttrain.envs.builtin import BM25
    index = BM25(["the river Elm", "the river Tarn", "a town"])
    assert index.top("Elm") == [0] and index.top("nothing here") == []
    # by hand: N = 3, df(elm) = 1 → idf = ln(2.5 / 1.5 + 1); tf = 1, |d| = 3, avg = 8/3
    idf = math.log((3 - 1 + 0.5) / (1 + 0.5) + 1)
    norm = 1.5 * (1 - 0.75 + 0.75 * 3 / (8 / 3))
    assert index.scores("Elm")[0] == pytest.approx(idf * 2.5 / (1 + norm))


def test_search_finds_the_document_that_answers_each_held_out_question():
    from posttrain import tasks
    from posttrain.envs.builtin import search
    task = tasks.get("lookup")
    rows = task.rows("eval", 50)
    assert all(row["answer"] in search(row["prompt"]) for row in rows)
    towns = {split: {town for town, _ in task.problems(split, 500)} for split in ("train", "eval")}
    assert towns["eval"] and not towns["eval"] & towns["train"]  # a held-out question is about a held-out town
    assert task.score(rows[0]["prompt"], f"It is {rows[0]['answer']}.", answer=rows[0]["answer"]) == 1.0
    assert task.score(rows[0]["prompt"], "I do not know.", answer=rows[0]["answer"]) == 0.0
