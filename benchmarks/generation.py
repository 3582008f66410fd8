#!/usr/bin/env python
"""Generation throughput: posttrain's rollout engine against Hugging Face `model.generate`, side by side.

    python benchmarks/generation.py                    # tiny model (1.1M) and a ~30M model built from a config
    python benchmarks/generation.py --models tiny --batch 64 --new-tokens 48 --top-p 1.0
    python benchmarks/generation.py --models smollm2-135m-instruct --batch 32 --new-tokens 64 --top-p 1.0

Same model, same prompts (64 arith prompts through the chat template, left-padded; for any other model name — a
model directory, a .gguf file or a named model such as smollm2-135m-instruct — the word task's prompts), sampling at temperature 1.0 from
the full distribution (top-p 1.0: what RL rollouts sample from) and with top-p 0.95, the same number of new tokens
(`min_new_tokens` = `max_new_tokens` for HF and no stop token for ours, so both generate exactly batch × new-tokens
tokens and the work is identical), fp32, 2 threads. Tokens/s = generated tokens / wall time of the call; each tool
runs --rounds times alternately after one warmup call, and the best is reported. Ratio = ours ÷ HF.

Two of ours: the default engine (DynamicCache, eager) and `compile=True` (static cache, torch.compile'd decode
step). The compiled one's warmup call pays the one-time compilation, reported separately ("compile s"); the
compiled step is cached per model, so a training run pays it once.

--profile: after the timed rounds, one call of our eager engine under torch.profiler: the operators by self CPU
time, the share of the matrix products (aten::mm/addmm/bmm and the attention kernel), and, for scale, the
machine's fp32 and bf16 GEMM rates at the decode step's shapes (batch rows × hidden → each projection).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sft_throughput import gemm_rate  # noqa: E402


def build(name: str, workdir: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from posttrain.models.tiny import save_tiny, tiny_path
    from posttrain.models.loading import resolve_model_path
    if name == "tiny":
        path = tiny_path()
    elif name == "30m":  # ~30M parameters: hidden 512, 8 layers, MLP 2048, same tokenizer
        path = save_tiny(os.path.join(workdir, name), hidden_size=512, num_hidden_layers=8,
                         intermediate_size=2048, num_attention_heads=8, num_key_value_heads=8)
    elif name == "4m":  # ~4M parameters: hidden 256, 4 layers, head_dim 32 (the smallest vLLM's CPU build runs)
        path = save_tiny(os.path.join(workdir, name), hidden_size=256, num_hidden_layers=4,
                         intermediate_size=1024, num_attention_heads=8, num_key_value_heads=8)
    else:  # a real model: a directory, a .gguf file or a named model
        path = resolve_model_path(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def prompts(tokenizer, n: int, task: str = "arith") -> list[list[int]]:
    from posttrain import tasks
    from posttrain.rollout import format_prompt
    rows = (tasks.get("arith", max_digits=3) if task == "arith" else tasks.get(task)).rows("train", n, seed=0)
    return [format_prompt(tokenizer, r["prompt"], use_chat_template=True) for r in rows]


def run_ours(model, tokenizer, ids, new_tokens: int, top_p: float, compile: bool = False) -> float:
    from posttrain.rollout import SamplingParams, generate
    params = SamplingParams(temperature=1.0, top_p=top_p, max_new_tokens=new_tokens)
    t0 = time.perf_counter()
    out = generate(model, ids, params, eos_token_ids=[], pad_token_id=tokenizer.pad_token_id, batch_size=len(ids),
                   compile=compile)
    seconds = time.perf_counter() - t0
    assert sum(len(g.completion_ids) for g in out) == len(ids) * new_tokens
    return seconds


def run_hf(model, tokenizer, ids, new_tokens: int, top_p: float) -> float:
    width = max(map(len, ids))
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in ids])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids])
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, temperature=1.0, top_p=top_p,
                             top_k=0, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    seconds = time.perf_counter() - t0
    assert out.shape[1] - width == new_tokens
    return seconds


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,30m")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top-p", default="1.0,0.95", help="comma-separated top-p values, one row each")
    p.add_argument("--profile", action="store_true", help="profile one eager call per model (see the docstring)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import transformers
    print(f"torch {torch.__version__}, transformers {transformers.__version__}; batch {args.batch}, "
          f"{args.new_tokens} new tokens, sampling at T=1.0, {args.threads} threads")
    print(f"{'model':<8} {'params':>8} {'top-p':>5} {'HF tok/s':>9} {'ours tok/s':>11} {'ratio':>6} "
          f"{'compiled tok/s':>15} {'ratio':>6} {'compile s':>10}")
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models.split(","):
            model, tokenizer = build(name, workdir)
            ids = prompts(tokenizer, args.batch, "arith" if name in ("tiny", "30m") else "word")
            for top_p in map(float, args.top_p.split(",")):
                run_ours(model, tokenizer, ids, 4, top_p), run_hf(model, tokenizer, ids, 4, top_p)  # warmup
                compile_seconds = run_ours(model, tokenizer, ids, args.new_tokens, top_p, compile=True)
                best = {"ours": float("inf"), "compiled": float("inf"), "hf": float("inf")}
                for _ in range(args.rounds):
                    best["hf"] = min(best["hf"], run_hf(model, tokenizer, ids, args.new_tokens, top_p))
                    best["ours"] = min(best["ours"], run_ours(model, tokenizer, ids, args.new_tokens, top_p))
                    best["compiled"] = min(best["compiled"],
                                           run_ours(model, tokenizer, ids, args.new_tokens, top_p, compile=True))
                tokens = args.batch * args.new_tokens
                n_params = sum(p.numel() for p in model.parameters())
                print(f"{name:<8} {n_params / 1e6:>7.1f}M {top_p:>5} {tokens / best['hf']:>9.0f} "
                      f"{tokens / best['ours']:>11.0f} {best['hf'] / best['ours']:>6.2f} "
                      f"{tokens / best['compiled']:>15.0f} {best['hf'] / best['compiled']:>6.2f} "
                      f"{compile_seconds - best['compiled']:>10.1f}", flush=True)
            if args.profile:
                profile(model, tokenizer, ids, args.new_tokens)


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::_scaled_dot_product_flash_attention_for_cpu")


def profile(model, tokenizer, ids, new_tokens: int) -> None:
    """Where one eager call's time goes, and what the GEMMs of its decode step could do in bf16."""
    from torch.profiler import ProfilerActivity, profile as torch_profile
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        seconds = run_ours(model, tokenizer, ids, new_tokens, 1.0)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    print(f"\nprofile of one eager call ({seconds:.2f} s; profiler overhead included): matrix products "
          f"{matmul / total:.0%} of self CPU time")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:12]:
        print(f"  {e.key:<60} {e.self_cpu_time_total / total:6.1%}  {e.count:>7} calls")
    config, rows = model.config, len(ids)
    hidden, inter = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (hidden // config.num_attention_heads)
    shapes = {"q/o": (hidden, hidden), "k/v": (hidden, kv), "gate/up": (hidden, inter), "down": (inter, hidden),
              "head": (hidden, config.vocab_size)}
    print(f"GEMM rates at the decode step's shapes ({rows} rows), GFLOP/s fp32 → bf16:")
    for name, (k, n) in shapes.items():
        rates = [gemm_rate(rows, k, n, dtype, repeats=20) / 1e9 for dtype in (torch.float32, torch.bfloat16)]
        print(f"  {name:<8} {rows}×{k} · {k}×{n}: {rates[0]:7.1f} → {rates[1]:7.1f}")


if __name__ == "__main__":
    main()
