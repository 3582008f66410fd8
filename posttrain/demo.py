"""`posttrain demo`: watch a language model learn, on a laptop CPU, with no network.

Builds the embedded ~1M-parameter Llama-architecture model (random weights) and the arithmetic task
(addition of 1–3-digit operands, solved in written-out column steps), trains it with supervised fine-tuning, and
prints greedy accuracy on held-out problems before and after, with curves in RUN_DIR/plots/.
Later stages (reward model, DPO, RL) append rows to the same table.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from posttrain.config import CheckpointConfig, DataConfig, DemoConfig, EvalConfig, LogConfig, SFTConfig, TaskConfig, TrainConfig
from posttrain.track import plot_metrics, read_metrics


def sft_stage_config(cfg: DemoConfig) -> SFTConfig:
    """The SFT stage: the model learns to write column addition step by step ("7+5=12 carry 1" …) and the
    answer. Written-out steps make each token a local computation, which a 1M-parameter model learns in minutes;
    the bare answer ("132") needs the whole carry chain in one token and takes far longer.
    Full: 3-digit operands, ~3 minutes on 2 cores. Quick: 2-digit operands, under a minute (it only has to show
    learning)."""
    steps = 220 if cfg.quick else 900
    return SFTConfig(
        output_dir=str(Path(cfg.output_dir) / "sft"), overwrite=True, seed=cfg.seed,
        task=TaskConfig(name="arith", max_digits=2 if cfg.quick else 3, ops="+", steps=True,
                        num_train=50_000, num_eval=200),
        data=DataConfig(max_length=128),
        train=TrainConfig(lr=3e-3, max_steps=steps, micro_batch_size=32, warmup_steps=30,
                          schedule="cosine", min_lr_ratio=0.05, weight_decay=0.01),
        eval=EvalConfig(every=0 if cfg.quick else 300, num_samples=60 if cfg.quick else 200, at_start=True,
                        max_new_tokens=48 if cfg.quick else 72),
        checkpoint=CheckpointConfig(every=0, keep_last=1),
        log=LogConfig(every=10),
    )


def run(cfg: DemoConfig) -> dict:
    from posttrain.train import sft

    out = Path(cfg.output_dir)
    rows = []
    t0 = time.time()
    sft_cfg = sft_stage_config(cfg)
    print(f"posttrain demo{' (quick)' if cfg.quick else ''}: SFT of the tiny model (random init) on "
          f"{sft_cfg.task.max_digits}-digit addition written in steps, {sft_cfg.train.max_steps} steps", flush=True)
    sft.run(sft_cfg)
    records = read_metrics(sft_cfg.output_dir)
    evals = [r for r in records if "eval/accuracy" in r]
    rows.append(("before (random init)", evals[0]["eval/accuracy"], evals[0].get("eval/loss"), 0.0))
    rows.append(("after SFT", evals[-1]["eval/accuracy"], evals[-1].get("eval/loss"), time.time() - t0))
    plots = plot_metrics(records, out / "plots")

    print()
    print(f"{'stage':<22} {'greedy acc':>10} {'eval loss':>10} {'time (s)':>9}")
    for stage, acc, loss, seconds in rows:
        print(f"{stage:<22} {acc:>10.3f} {loss:>10.3f} {seconds:>9.0f}")
    show_samples(Path(sft_cfg.output_dir) / "final", sft_cfg)
    print(f"\nheld-out problems: {sft_cfg.eval.num_samples}; plots: {out / 'plots'} ({len(plots)} files); "
          f"model: {Path(sft_cfg.output_dir) / 'final'}")
    return {"before": rows[0][1], "after": rows[-1][1], "seconds": time.time() - t0}


def show_samples(model_dir: Path, sft_cfg: SFTConfig, n: int = 2) -> None:
    """Print the trained model's greedy answers to a few held-out problems."""
    from posttrain import tasks
    from posttrain.eval.accuracy import greedy_completions
    from posttrain.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(replace(sft_cfg.model, name_or_path=str(model_dir)), sft_cfg.lora).eval()
    task = tasks.get(sft_cfg.task.name, max_digits=sft_cfg.task.max_digits, ops=sft_cfg.task.ops, steps=True)
    rows = task.rows("eval", n, seed=sft_cfg.seed + 1)
    outputs = greedy_completions(model, tokenizer, [r["prompt"] for r in rows], use_chat_template=True,
                                 max_new_tokens=sft_cfg.eval.max_new_tokens, batch_size=n)
    for row, completion in zip(rows, outputs):
        verdict = "correct" if task.score(completion=completion, **row) == 1.0 else "wrong"
        print(f"\n{row['prompt']}  ({verdict})\n  " + completion.strip().replace("\n", "\n  "))
