"""Shared test setup: offline, a private cache for the embedded model, and helpers to run the CLI."""

import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("POSTTRAIN_HOME", str(Path(tempfile.gettempdir()) / "posttrain-test-home"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def smollm2_home() -> Path | None:
    """The $POSTTRAIN_HOME (this one, or the default ~/.cache/posttrain) that already holds smollm2 converted."""
    from posttrain.models import gguf
    digest = gguf.NAMED_MODELS["smollm2-135m-instruct"].sha256[:16]
    for home in (os.environ.get("POSTTRAIN_HOME"), Path.home() / ".cache" / "posttrain"):
        if home and (Path(home) / "models" / f"gguf-{digest}" / "config.json").is_file():
            return Path(home)
    return None


needs_smollm2 = pytest.mark.skipif(
    smollm2_home() is None, reason="smollm2-135m-instruct is not converted in $POSTTRAIN_HOME or ~/.cache/posttrain, "
    "and tests never fetch a 93 MB wheel; convert it once with `posttrain generate model=smollm2-135m-instruct "
    "num_prompts=1`")


def run_cli(*args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """`python -m posttrain ARGS` in a real subprocess (one torch thread, no progress bar noise)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "posttrain", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def losses(run_dir: Path) -> dict[int, float]:
    """step → training loss from a run's metrics.jsonl."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


@pytest.fixture
def varied_rows():
    """Chat rows of clearly different lengths (for invariance tests)."""
    rows = []
    for i in range(24):
        a, b = 7 ** (i % 9 + 1) % 100003, 3 ** (i % 7 + 2) % 997
        user = f"{a}+{b}=" + " please" * (i % 5)
        rows.append({"messages": [{"role": "user", "content": user},
                                  {"role": "assistant", "content": str(a + b) + "!" * (i % 4)}]})
    return rows


@pytest.fixture(scope="session")
def small_policy(tmp_path_factory) -> Path:
    """The tiny model after 120 SFT steps on 1-digit sums written in steps (about a sixth of its samples at
    T = 0.7 right): a policy whose samples are sometimes correct. Built once per session (test_rft and
    test_prm_labels use it)."""
    from posttrain import cli

    path = tmp_path_factory.getbasetemp() / "small_policy"
    if not (path / "final" / "config.json").is_file():
        code = cli.main(["sft", "task.max_digits=1", "task.steps=true", "task.num_train=2000", "task.num_eval=20",
                         "train.max_steps=120", "train.micro_batch_size=32", "train.lr=3e-3", "train.warmup_steps=10",
                         "eval.num_samples=4", "eval.max_new_tokens=24", f"output_dir={path}", "overwrite=true",
                         "log.progress=false", "threads=1"])
        assert code == 0
    return path / "final"


# ChatML with native tools (Qwen 2.5's layout, shortened): tools in the system turn, an assistant's tool_calls as
# Hermes <tool_call> JSON after its content, tool results as a user turn; turns end with the tokenizer's eos
CHATML_TOOLS = (
    "{% if tools %}{{ '<|im_start|>system\\n' }}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% endif %}{{ '\\n# Tools\\n' }}{% for t in tools %}{{ t | tojson }}{{ '\\n' }}{% endfor %}{{ eos_token + '\\n' }}"
    "{% endif %}{% for m in messages %}{% if m['role'] == 'system' and tools %}{% elif m['role'] == 'tool' %}"
    "{{ '<|im_start|>user\\n<tool_response>\\n' + m['content'] + '\\n</tool_response>' + eos_token + '\\n' }}"
    "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}{% for c in m.get('tool_calls') or [] %}"
    "{% if m['content'] or not loop.first %}{{ '\\n' }}{% endif %}{{ '<tool_call>\\n' }}"
    "{{ {'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson }}{{ '\\n</tool_call>' }}"
    "{% endfor %}{{ eos_token + '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


class ReplyEngine:
    """An engine (rollout/backends.Engine) that answers each prompt with reply(decoded prompt, episode id) → text,
    tokenized and ended by eos — a scripted policy for multi-turn tests (the embedded model never calls tools).
    reply may return (text, finished): finished False cuts the turn at the length limit (no eos). Records what
    it was asked (`asked`: (episode, prompt ids)) and what it gave (`given`: episode → list of ids)."""
    reproducible = True

    def __init__(self, tokenizer, reply):
        self.tokenizer, self.reply = tokenizer, reply
        self.asked, self.given = [], {}

    def generate(self, prompts, params, *, seed=0, step=0, example_ids=None, stop_sequence=None):
        from posttrain.rollout.engine import Generation
        out = []
        for i, prompt in enumerate(prompts):
            episode = i if example_ids is None else example_ids[i]
            answer = self.reply(self.tokenizer.decode(prompt), episode)
            text, finished = answer if isinstance(answer, tuple) else (answer, True)
            ids = text if isinstance(text, list) else self.tokenizer(text, add_special_tokens=False)["input_ids"]
            ids = ids[:params.max_new_tokens - 1] + ([self.tokenizer.eos_token_id] if finished else [])
            logprobs = [-0.5] * len(ids)
            out.append(Generation(i, 0, completion_ids=ids, logprobs=logprobs, sampling_logprobs=logprobs,
                                  finish_reason="stop" if finished else "length"))
            self.asked.append((episode, list(prompt)))
            self.given.setdefault(episode, []).append(ids)
        return out

    def sync(self, model):
        return 0

    def close(self):
        pass


def random_turns(tokenizer, rng: random.Random):
    """A reply for ReplyEngine: a random turn — a tool call, a malformed call, a final answer or random ids, each
    ended by eos, or a turn cut short without it."""
    def reply(prompt_text, episode):
        kind = rng.choice(["call"] * 4 + ["bad", "answer", "noise", "cut"])
        if kind == "noise":  # ids no tokenizer would produce from text: never re-encoded
            return [rng.randrange(3, len(tokenizer)) for _ in range(rng.randint(1, 12))]
        text = {"call": f'<tool_call>{{"name": "add", "arguments": {{"a": {rng.randint(0, 99)}, '
                        f'"b": {rng.randint(0, 99)}}}}}</tool_call>',
                "bad": '<tool_call>{"name": "add", "arguments": {"a": </tool_call>',
                "answer": f"The answer is {rng.randint(0, 200)}."}.get(kind, "abc")
        return text, kind != "cut"
    return reply
