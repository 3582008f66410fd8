"""`posttrain eval env.name=calculator`: a "greedy + tools" row — multi-turn episodes with the calculator, final
answers scored like every row. A scripted policy that always calls the calculator and then reports its result
solves every problem with tools and none without."""

import json
import re

from conftest import ReplyEngine
from posttrain import cli
from posttrain.models.tiny import save_tiny


def calculator_user(eos: str):
    """A reply for ReplyEngine: call the calculator on the numbers in the question, then answer with what it
    said."""
    def reply(text, episode):
        if "<|tool|>" in text:
            return f"The answer is {text.rsplit('<|tool|>', 1)[1].split(eos)[0].strip()}."
        a, b = re.findall(r"What is (\d+) \+ (\d+)\?", text)[-1]
        return f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{a} + {b}"}}}}</tool_call>'
    return reply


def test_eval_reports_success_with_tools(tmp_path, monkeypatch):
    from posttrain.eval import run as eval_run
    model = save_tiny(tmp_path / "tiny2k", max_position_embeddings=2048)
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
                            for a, b in [(12, 30), (7, 95), (250, 250), (3, 4)]))
    monkeypatch.setattr(eval_run, "inference_engine",
                        lambda rollout, m, tokenizer, d: ReplyEngine(tokenizer, calculator_user(tokenizer.eos_token)))
    out = tmp_path / "eval"
    assert cli.main(["eval", f"model={model}", f"data_path={data}", "env.name=calculator", "task.name=word",
                     "strategies=greedy", "search.max_new_tokens=128", f"output_dir={out}"]) == 0
    rows = {r["strategy"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["greedy"]["accuracy"] == 0.0  # its first message is a tool call, not an answer
    tools = rows["greedy + tools"]
    assert tools["accuracy"] == 1.0 and "tool calls in 100% of episodes, 0.00 errors and 2.0 turns" in tools["note"]
