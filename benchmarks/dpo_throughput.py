#!/usr/bin/env python
"""DPO training throughput: posttrain's `posttrain dpo` loop against TRL's `DPOTrainer`, same model, pairs and batch.

    python benchmarks/dpo_throughput.py                      # tiny model, 200 steps, 8 pairs a step, 2 threads
    python benchmarks/dpo_throughput.py --steps 20           # a quick smoke run
    python benchmarks/dpo_throughput.py --hidden-size 256 --layers 4   # a larger model built from the tiny config
    python benchmarks/dpo_throughput.py --model smollm2-135m-instruct --task word --steps 30   # a real model

What is compared (every row: same model directory, fp32, sdpa attention, DPO sigmoid loss with beta 0.1, AdamW
lr/betas/weight decay, grad-norm clip 1.0, cosine schedule to 0.1·lr, no warmup, micro-batch = --batch-size pairs
(chosen and rejected: 2 × batch-size sequences), grad accumulation 1, no gradient checkpointing, no evaluation, no
saving during the run, no progress bar, dataloader in the main process; the reference log-probs of every training
pair are computed once before training by the initial model, so one model is held while training):

    ours          posttrain.train.preference.run, data.packing=True (default): the micro-batch's 2·B responses
                  are packed best-fit-decreasing into rows as long as its longest sequence (exact, no
                  cross-attention), one forward for chosen and rejected
    ours-padded   the same with data.packing=False: one sequence per row, right-padded
    trl           trl.DPOTrainer, DPOConfig(precompute_ref_log_probs=True, precompute_ref_batch_size=
                  --ref-batch-size): chosen and rejected concatenated into one batch of 2·B rows, padded to the
                  longest; TRL computes the log-probs with its fused LM head (no full logits)

No TRL padding-free row: trl 1.16's DPOConfig still has `padding_free`, but DPOTrainer warns that it is "temporarily
unavailable after a refactor" and falls back to padding, so such a row would time the `trl` row again.

Data: the `arith` task's preference pairs (max_digits 3, '+'; by default with written-out steps, so sequences are
~28 to ~78 tokens; --solution answer for the bare answers): chosen = the correct solution, rejected = the same
with a wrong final answer. They are given to both as conversational rows
    {"prompt": [{"role": "user", ...}],
     "chosen": [{"role": "assistant", ...}], "rejected": [{"role": "assistant", ...}]}
posttrain reads them from a jsonl file (data.train_path, so it has no eval set and evaluates nothing), TRL gets the
same list as a `datasets.Dataset`. Both tokenize a response to the same input ids (the chat template rendered
once; checked on 400 pairs) and sum log π over the assistant turn only — TRL's completion also covers the newline the
template writes after </s>, one more scored token per response (the forward is the same). Data order: each tool's
own shuffle.

How it measures (the same for every row):
  * time: a wall-clock stamp (time.perf_counter) at the end of every optimizer step — for posttrain by wrapping
    `optimizer_step` as imported into posttrain.train.preference (stamp taken when it returns: forward, backward,
    clip, optimizer step done); for TRL in a `TrainerCallback.on_step_end`. The timed window runs from the end of
    step 1 to the end of step N, i.e. N-1 whole steps. Model loading, tokenization, the reference precompute, the
    trainer/optimizer construction, step 1 (first-call warmup) and the final save lie outside the window.
  * pairs/s = the pairs of steps 2..N (counted in each step's batch: (N-1) × batch-size, unless --rows makes TRL's
    last batch of an epoch short) / seconds of the window; ratio = pairs/s of `ours` ÷ pairs/s of the row (> 1:
    posttrain faster). The like-for-like pair is also printed: padded vs padded (ours-padded / trl).
  * tokens: the non-padding input tokens (prompt + response, chosen and rejected) of steps 2..N — posttrain: the
    lengths of the micro-batch's tokenized responses (counted by wrapping `accumulate_gradients`); TRL:
    `attention_mask.sum()` of each batch.
  * ref s: seconds of the reference precompute over all training pairs (reported apart, not in pairs/s) —
    posttrain: `reference_logps` (batches of eval.batch_size pairs, then the safetensors cache written); TRL:
    `DPOTrainer._precompute_ref_logps` (batches of precompute_ref_batch_size pairs, then the datasets cache file
    written; an in-memory dataset gets a random cache name, so no run reuses another's).
  * loss@1: the loss of step 1, a sanity check: the policy is the reference there, so it is ln 2 = 0.6931.
  * Before the timed runs every variant runs once for --warmup steps (discarded); then the variants run --rounds
    times (default 2), alternating (round 2 in reverse order, to cancel drift), and the best pairs/s (and the
    least ref seconds) of each variant is reported — the least disturbed run on a shared machine.

torch runs with --threads intra-op threads for both tools (torch.set_num_threads). On a shared 2-vCPU machine a
2-thread run was seen to slow down 10-80x while another job held a CPU; a warning is printed when the timed runs of
one variant differ by more than 25% — rerun then.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # importing sft_throughput also sets the offline env
from sft_throughput import (add_shared_arguments, check_shared_arguments, prepare_model, quiet_libraries, quietly,
                            run_rounds, trl_config, versions, warn_if_noisy, window)

OURS_VARIANTS = {"ours": True, "ours-padded": False}  # name -> data.packing
TRL_VARIANTS = {"trl": {}}  # name -> DPOConfig fields that differ from the shared ones
DEFAULT_VARIANTS = "ours,ours-padded,trl"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per timed run (window = steps 2..N)")
    p.add_argument("--batch-size", type=int, default=8, help="pairs per step (micro-batch, no accumulation)")
    p.add_argument("--ref-batch-size", type=int, default=64,
                   help="pairs per forward of the reference precompute (posttrain eval.batch_size, TRL "
                        "precompute_ref_batch_size)")
    p.add_argument("--lr", type=float, default=1e-4, help="peak learning rate (posttrain dpo's default)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta")
    p.add_argument("--max-length", type=int, default=256,
                   help="posttrain data.max_length (a longer pair is an error, so nothing is truncated) and TRL "
                        "max_length")
    p.add_argument("--solution", choices=["steps", "answer"], default="steps",
                   help="arith responses: written-out column steps (~28-78 tokens a sequence) or the bare answer")
    p.add_argument("--rows", type=int, default=0,
                   help="training pairs; 0: steps × batch-size (no repeats; a warmup run gets its own first rows)")
    p.add_argument("--task", choices=["arith", "word"], default="arith",
                   help="the pairs: arith (the tiny model's task) or word (worked solutions to word problems of all "
                        "five levels, rejected = a wrong final answer; for instruct models)")
    add_shared_arguments(p, [*OURS_VARIANTS, *TRL_VARIANTS], DEFAULT_VARIANTS)
    args = p.parse_args(argv)
    check_shared_arguments(p, args, [*OURS_VARIANTS, *TRL_VARIANTS])
    return args


def prepare_pairs(args) -> list[dict]:
    """The task's preference pairs in conversational form (one user turn, one assistant turn each)."""
    from posttrain import tasks

    task = (tasks.get("word") if args.task == "word"
            else tasks.get("arith", max_digits=args.max_digits, ops="+", steps=args.solution == "steps"))
    n = args.rows or args.steps * args.batch_size
    return [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]}
            for r in task.preference_rows("train", n, seed=args.seed)]


# ---------------------------------------------------------------------------------------------------------------------
# One run of each tool. Each returns {"steps", "seconds", "tokens"} over the window end(step 1) → end(step N),
# plus "pairs" (in the window), "ref_seconds" (the reference precompute) and "first_loss" (step 1).
# ---------------------------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def wrapped(module, name: str, make_wrapper):
    """Replace module.<name> by make_wrapper(original) for the duration of the block."""
    original = getattr(module, name)
    setattr(module, name, make_wrapper(original))
    try:
        yield
    finally:
        setattr(module, name, original)


def run_ours(args, model_dir: str, pairs: list[dict], packing: bool, steps: int, out_dir: Path) -> dict:
    from posttrain import config as C
    from posttrain.train import preference

    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = out_dir.with_name(out_dir.name + ".jsonl")
    data_path.write_text("".join(json.dumps(r) + "\n" for r in pairs))
    cfg = C.DPOConfig(
        output_dir=str(out_dir), overwrite=True, seed=args.seed, threads=args.threads,
        preference=C.PreferenceConfig(loss="dpo", beta=args.beta),
        model=C.ModelConfig(name_or_path=model_dir, attn_implementation="sdpa"),
        data=C.DataConfig(train_path=str(data_path), max_length=args.max_length, packing=packing),
        train=C.TrainConfig(lr=args.lr, max_steps=steps, micro_batch_size=args.batch_size, grad_accum=1,
                            precision="fp32", schedule="cosine", warmup_steps=0, weight_decay=0.0,
                            adam_beta1=0.9, adam_beta2=0.99, max_grad_norm=1.0, min_lr_ratio=0.1),
        eval=C.EvalConfig(every=0, batch_size=args.ref_batch_size),  # eval.batch_size: the precompute's batch
        checkpoint=C.CheckpointConfig(every=0, keep_last=1),
        log=C.LogConfig(every=steps, progress=False),  # like TRL's logging: metrics computed each step, written rarely
    )
    C.validate(cfg)

    marks: list[tuple[float, int]] = []
    step_tokens, step_pairs, losses, ref_seconds = [0], [], [], []

    def count_tokens(original):  # called once per step, before optimizer_step
        def accumulate_gradients(model, reference_model, micro_batches, data, *a, **kw):
            sums = original(model, reference_model, micro_batches, data, *a, **kw)
            step_tokens[0] = sum(len(data.train[i][k]["input_ids"]) for mb in micro_batches for i in mb
                                 for k in ("chosen", "rejected"))
            step_pairs.append(sum(len(mb) for mb in micro_batches))
            losses.append(sums["loss"])
            return sums
        return accumulate_gradients

    def stamp(original):
        def optimizer_step(*a, **kw):
            grad_norm = original(*a, **kw)  # clip, optimizer step, zero_grad done
            marks.append((time.perf_counter(), step_tokens[0]))
            return grad_norm
        return optimizer_step

    def timed(original):
        def reference_logps(*a, **kw):
            t0 = time.perf_counter()
            out = original(*a, **kw)
            ref_seconds.append(time.perf_counter() - t0)
            return out
        return reference_logps

    with (wrapped(preference, "accumulate_gradients", count_tokens), wrapped(preference, "optimizer_step", stamp),
          wrapped(preference, "reference_logps", timed)):
        preference.run(cfg)
    if len(ref_seconds) != 1:
        raise RuntimeError(f"expected one reference precompute, saw {len(ref_seconds)} (has the loop changed?)")
    return {**window(marks, steps), "pairs": sum(step_pairs[1:]), "ref_seconds": ref_seconds[0],
            "first_loss": losses[0]}


def run_trl(args, model_dir: str, pairs: list[dict], overrides: dict, steps: int, out_dir: Path) -> dict:
    import datasets
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    torch.set_num_threads(args.threads)
    own = dict(loss_type=["sigmoid"], beta=args.beta, label_smoothing=0.0, padding_free=False,
               precompute_ref_log_probs=True, precompute_ref_batch_size=args.ref_batch_size)
    dpo_config = trl_config(trl.DPOConfig, args, out_dir, steps, own, overrides, required=("precompute_ref_log_probs",))

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    marks: list[tuple[float, int]] = []
    counted, step_pairs, losses, ref_seconds = [0], [], [], []

    class Trainer(trl.DPOTrainer):
        def _precompute_ref_logps(self, *a, **kw):  # runs in __init__, before training
            t0 = time.perf_counter()
            out = super()._precompute_ref_logps(*a, **kw)
            ref_seconds.append(time.perf_counter() - t0)
            return out

        def training_step(self, model, inputs, *a, **kw):
            counted[0] += int(inputs["attention_mask"].sum())  # chosen rows + rejected rows
            step_pairs.append(len(inputs["input_ids"]) // 2)
            loss = super().training_step(model, inputs, *a, **kw)
            losses.append(float(loss))
            return loss

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **kw):
            marks.append((time.perf_counter(), counted[0]))
            counted[0] = 0

    trainer = Trainer(model=model, args=dpo_config, train_dataset=datasets.Dataset.from_list(pairs),
                      processing_class=tokenizer, callbacks=[Stamp()])
    if trainer.args.gradient_checkpointing or trainer.args.bf16 or trainer.ref_model is not None:
        raise RuntimeError("TRL run is not plain fp32, single-model (precomputed reference), without checkpointing")
    if len(ref_seconds) != 1:
        raise RuntimeError(f"expected one reference precompute, saw {len(ref_seconds)} (has DPOTrainer changed?)")
    trainer.train()
    return {**window(marks, steps), "pairs": sum(step_pairs[1:]), "ref_seconds": ref_seconds[0],
            "first_loss": losses[0]}


# ---------------------------------------------------------------------------------------------------------------------

def run_variant(name: str, args, model_dir: str, pairs: list[dict], steps: int, workdir: Path) -> dict:
    out_dir = workdir / f"run-{name}"
    with quietly(args.verbose):
        if name in OURS_VARIANTS:
            return run_ours(args, model_dir, pairs, OURS_VARIANTS[name], steps, out_dir)
        return run_trl(args, model_dir, pairs, TRL_VARIANTS[name], steps, out_dir)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_libraries(args.verbose)

    print("command:", shlex.join([sys.executable, *(sys.argv if argv is None else [sys.argv[0], *argv])]))
    print("versions:", versions())
    with tempfile.TemporaryDirectory(prefix="dpo-throughput-") as tmp:
        workdir = Path(tmp)
        model_dir, model_desc = prepare_model(args, workdir)
        pairs = prepare_pairs(args)
        print(f"model: {model_desc}")
        print(f"data: {len(pairs)} {args.task} preference pairs; batch {args.batch_size} pairs, {args.steps} steps "
              f"(timed: steps 2..{args.steps}), reference precompute in batches of {args.ref_batch_size}, "
              f"threads {args.threads}, cpu count {os.cpu_count()}")

        def run_one(name: str, steps: int) -> dict:
            run_pairs = pairs if args.rows else pairs[:steps * args.batch_size]
            return {**run_variant(name, args, model_dir, run_pairs, steps, workdir), "num_pairs": len(run_pairs)}

        results, failed = run_rounds(args, run_one, lambda res: (
            f"{pairs_per_s(res):8.1f} pairs/s {res['tokens'] / res['seconds']:9.0f} tok/s  ref "
            f"{res['ref_seconds']:6.2f} s ({res['num_pairs']} pairs)  loss@1 {res['first_loss']:.4f}"), width=12)

    best = {v: max(rs, key=pairs_per_s) for v, rs in results.items() if rs}
    rate = {v: pairs_per_s(b) for v, b in best.items()}
    ref = {v: min(x["ref_seconds"] for x in rs) for v, rs in results.items() if rs}
    print()
    print(f"best of {args.rounds} (tokens = non-padding input tokens of chosen and rejected; ref s = reference "
          f"precompute over {len(pairs)} pairs, outside the window; ratio = ours pairs/s ÷ row pairs/s)")
    print(f"{'tool':13s} {'steps':>6s} {'seconds':>9s} {'tok/step':>9s} {'pairs/s':>9s} {'tokens/s':>10s} "
          f"{'ref s':>8s} {'loss@1':>7s} {'ratio':>7s}")
    for v in args.variant_list:
        if v in failed:
            print(f"{v:13s} failed: {failed[v]}")
            continue
        b = best[v]
        ratio = f"{rate['ours'] / rate[v]:7.2f}" if "ours" in rate else f"{'-':>7s}"
        print(f"{v:13s} {b['steps']:6d} {b['seconds']:9.2f} {b['tokens'] / b['steps']:9.0f} {rate[v]:9.1f} "
              f"{b['tokens'] / b['seconds']:10.0f} {ref[v]:8.2f} {b['first_loss']:7.4f} {ratio}")
    pairs_shown = [("ours", "trl", "default vs default"), ("ours-padded", "trl", "padded vs padded")]
    shown = [f"{what} ({a}/{b}) {rate[a] / rate[b]:.2f}" for a, b, what in pairs_shown if a in rate and b in rate]
    if shown:
        print("ratio ours/TRL pairs/s: " + "; ".join(shown))
    if "ours" in ref and "trl" in ref:
        print(f"reference precompute: trl {ref['trl']:.2f} s ÷ ours {ref['ours']:.2f} s = "
              f"{ref['trl'] / ref['ours']:.2f} (> 1: posttrain faster)")
    off = {v: x["first_loss"] for v, rs in results.items() for x in rs if abs(x["first_loss"] - math.log(2)) > 1e-3}
    if off:
        print("warning: step-1 loss is not ln 2 = 0.6931 (policy = reference there) for "
              + ", ".join(f"{v} {loss:.4f}" for v, loss in off.items()) + " — the two sides do not train the same "
              "objective from the same start")
    warn_if_noisy(results, pairs_per_s)
    return 1 if failed else 0


def pairs_per_s(res: dict) -> float:
    return res["pairs"] / res["seconds"]


if __name__ == "__main__":
    sys.exit(main())
