"""`posttrain demo`: watch a language model learn, on a laptop CPU, with no network.

Builds the embedded ~1M-parameter Llama-architecture model (random weights) and the arithmetic task
(addition, operands of 1–3 digits, digit count drawn uniformly), trains it with supervised fine-tuning, and
prints greedy accuracy on held-out problems before and after, with curves in RUN_DIR/plots/.
Later stages (reward model, DPO, RL) append rows to the same table.
"""

from __future__ import annotations

import time
from pathlib import Path

from posttrain.config import CheckpointConfig, DemoConfig, EvalConfig, LogConfig, SFTConfig, TaskConfig, TrainConfig
from posttrain.track import plot_metrics, read_metrics


def sft_stage_config(cfg: DemoConfig) -> SFTConfig:
    """The SFT stage. Full: ~2–3 minutes on 2 cores; quick: ~30 s (it only has to show learning)."""
    steps = 150 if cfg.quick else 1200
    return SFTConfig(
        output_dir=str(Path(cfg.output_dir) / "sft"), overwrite=True, seed=cfg.seed,
        task=TaskConfig(name="arith", max_digits=3, ops="+", num_train=50_000, num_eval=200),
        train=TrainConfig(lr=3e-3, max_steps=steps, micro_batch_size=64, warmup_steps=20,
                          schedule="cosine", min_lr_ratio=0.05, weight_decay=0.01),
        eval=EvalConfig(every=max(steps // 6, 1), num_samples=100 if cfg.quick else 200, at_start=True,
                        max_new_tokens=8),
        checkpoint=CheckpointConfig(every=0, keep_last=1),
        log=LogConfig(every=10),
    )


def run(cfg: DemoConfig) -> dict:
    from posttrain.train import sft

    out = Path(cfg.output_dir)
    rows = []
    t0 = time.time()
    sft_cfg = sft_stage_config(cfg)
    print(f"posttrain demo{' (quick)' if cfg.quick else ''}: SFT of the tiny model on {sft_cfg.task.ops!r} "
          f"arithmetic, {sft_cfg.train.max_steps} steps", flush=True)
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
    print(f"\nheld-out problems: {sft_cfg.eval.num_samples}; plots: {out / 'plots'} ({len(plots)} files); "
          f"model: {Path(sft_cfg.output_dir) / 'final'}")
    return {"before": rows[0][1], "after": rows[-1][1], "seconds": time.time() - t0}
