"""`posttrain eval env.name=calculator`: a "greedy + tools" row — multi-turn episodes with the calculator, final
answers scored like every row. A scripted policy that always calls the calculator and then reports its result
solves every problem with tools and none without."""

import json

from posttrain import cli
from posttrain.models.tiny import save_tiny


class CalculatorUser:
    """Turn 1: call the calculator on the numbers in the question; turn 2: answer with what it said."""
    reproducible = True

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def generate(self, prompts, params, *, seed=0, step=0, example_ids=None, stop_sequence=None):
        import re

        from posttrain.rollout.engine import Generation
        out = []
        for i, prompt in enumerate(prompts):
            text = self.tokenizer.decode(prompt)
            if "<|tool|>" in text:
                reply = f"The answer is {text.rsplit('<|tool|>', 1)[1].split(self.tokenizer.eos_token)[0].strip()}."
            else:
                a, b = re.findall(r"What is (\d+) \+ (\d+)\?", text)[-1]
                reply = f'<tool_call>{{"name": "calculator", "arguments": {{"expression": "{a} + {b}"}}}}</tool_call>'
            ids = self.tokenizer(reply, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            out.append(Generation(i, 0, completion_ids=ids, logprobs=[0.0] * len(ids), finish_reason="stop"))
        return out

    def sync(self, model):
        return 0

    def close(self):
        pass


def test_eval_reports_success_with_tools(tmp_path, monkeypatch):
    from posttrain.eval import run as eval_run
    model = save_tiny(tmp_path / "tiny2k", max_position_embeddings=2048)
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
                            for a, b in [(12, 30), (7, 95), (250, 250), (3, 4)]))
    monkeypatch.setattr(eval_run, "inference_engine", lambda rollout, m, tokenizer, d: CalculatorUser(tokenizer))
    out = tmp_path / "eval"
    assert cli.main(["eval", f"model={model}", f"data_path={data}", "env.name=calculator", "task.name=word",
                     "strategies=greedy", f"output_dir={out}"]) == 0
    rows = {r["strategy"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert rows["greedy"]["accuracy"] == 0.0  # its first message is a tool call, not an answer
    tools = rows["greedy + tools"]
    assert tools["accuracy"] == 1.0 and "tool calls in 100% of episodes, 0.00 errors and 2.0 turns" in tools["note"]
