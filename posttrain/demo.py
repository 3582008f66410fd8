"""`posttrain demo`: watch a language model learn, on a laptop CPU, with no network.

    SFT        the embedded ~1M-parameter Llama-architecture model (random weights) learns the arithmetic task
               (addition written out in column steps) by supervised fine-tuning — partly: it stops while
               about half its greedy answers are right, leaving the later stages room to improve
    pairs      it samples 4 answers to each of a set of training problems; the task verifier splits them into
               right and wrong, and each problem with both gives preference pairs (chosen = right); held-out
               problems give held-out pairs
    RM         a reward model (the SFT model with a scalar head) learns the pairs; its held-out pair accuracy
               is its headline number
    DPO        preference optimization from the SFT model on the same pairs: the demo's loss gives the "after
               DPO" row; the variant table runs several losses on the same pairs and budget

Prints greedy accuracy on held-out problems after each stage, with curves in RUN_DIR/plots/ and every number
in RUN_DIR/summary.json. Later stages (RL) append rows to the same table.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from posttrain.config import (CheckpointConfig, DataConfig, DemoConfig, DPOConfig, EvalConfig, LogConfig, ModelConfig,
                              PreferenceConfig, RMConfig, SFTConfig, TaskConfig, TrainConfig)
from posttrain.track import plot_metrics, read_metrics

DEMO_LOSS = "orpo"  # the "after DPO" row: the variant that improved greedy accuracy here (see the variant table)
VARIANTS = ("dpo", "ipo", "rpo", "simpo", "orpo", "kto")
SAMPLE_TEMPERATURE = 0.5  # close to the greedy answers whose mistakes the pairs should correct


def task_config(cfg: DemoConfig) -> TaskConfig:
    """3-digit operands (quick: 2), written-out steps; the same 200 held-out problems score every stage."""
    return TaskConfig(name="arith", max_digits=2 if cfg.quick else 3, ops="+", steps=True, num_train=50_000,
                      num_eval=200)


def eval_config(cfg: DemoConfig, every: int = 0) -> EvalConfig:
    return EvalConfig(every=every, num_samples=60 if cfg.quick else 200, at_start=True,
                      max_new_tokens=48 if cfg.quick else 72, task_accuracy=True)


def sft_stage_config(cfg: DemoConfig) -> SFTConfig:
    """The SFT stage: the model learns to write column addition step by step ("7+5=12 carry 1" …) and the
    answer. Written-out steps make each token a local computation, which a 1M-parameter model learns in minutes;
    the bare answer ("132") needs the whole carry chain in one token and takes far longer.
    Full: 3-digit operands, stopped partway (about half right); quick: 2-digit operands, under a minute."""
    steps = 220 if cfg.quick else 300
    return SFTConfig(
        output_dir=str(Path(cfg.output_dir) / "sft"), overwrite=True, seed=cfg.seed, task=task_config(cfg),
        data=DataConfig(max_length=128),
        train=TrainConfig(lr=3e-3, max_steps=steps, micro_batch_size=32, warmup_steps=30,
                          schedule="cosine", min_lr_ratio=0.05, weight_decay=0.01),
        eval=replace(eval_config(cfg, every=0 if cfg.quick else 100), task_accuracy=None),
        checkpoint=CheckpointConfig(every=0, keep_last=1),
        log=LogConfig(every=10),
    )


def sample_pairs(cfg: DemoConfig, model_dir: Path, out_dir: Path, temperature: float = SAMPLE_TEMPERATURE) -> dict:
    """Sample 4 answers per problem from the SFT model, verify them, write train/eval pairs as jsonl."""
    from posttrain import tasks
    from posttrain.data.preference import verified_pairs
    from posttrain.eval.accuracy import sampled_completions
    from posttrain.models.loading import load_model, load_tokenizer

    task_cfg, eval_cfg = task_config(cfg), eval_config(cfg)
    task = tasks.get("arith", max_digits=task_cfg.max_digits, ops=task_cfg.ops, steps=True)
    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(ModelConfig(name_or_path=str(model_dir)), SFTConfig().lora).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    # different problems from the ones accuracy is scored on: the pairs' seed differs from the stages' seed
    for split, n in (("train", 128 if cfg.quick else 1024), ("eval", 48 if cfg.quick else 192)):
        rows = task.rows(split, n, seed=cfg.seed + 1)
        samples = sampled_completions(model, tokenizer, rows, task.score, n=4, temperature=temperature,
                                      use_chat_template=True, max_new_tokens=eval_cfg.max_new_tokens,
                                      batch_size=64, seed=cfg.seed)
        pairs = verified_pairs(rows, samples)
        (out_dir / f"{split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
        right = sum(s["score"] == 1.0 for row in samples for s in row) / (4 * len(rows))
        counts[split] = {"problems": len(rows), "pairs": len(pairs), "sample_accuracy": right}
    return counts


def rm_stage_config(cfg: DemoConfig, model_dir: Path, pairs_dir: Path) -> RMConfig:
    steps = 30 if cfg.quick else 150
    return RMConfig(
        output_dir=str(Path(cfg.output_dir) / "rm"), overwrite=True, seed=cfg.seed,
        model=ModelConfig(name_or_path=str(model_dir)), task=task_config(cfg),
        data=DataConfig(train_path=str(pairs_dir / "train.jsonl"), eval_path=str(pairs_dir / "eval.jsonl"),
                        max_length=128),
        train=TrainConfig(lr=3e-4, max_steps=steps, micro_batch_size=16, warmup_steps=10, schedule="cosine",
                          min_lr_ratio=0.1),
        eval=EvalConfig(every=0, at_start=True, batch_size=64),
        checkpoint=CheckpointConfig(every=0, keep_last=1), log=LogConfig(every=10, progress=False))


def dpo_stage_config(cfg: DemoConfig, loss: str, model_dir: Path, pairs_dir: Path) -> DPOConfig:
    """One preference run from the SFT model; every variant gets the same pairs, steps and learning rate."""
    steps = 20 if cfg.quick else 120
    return DPOConfig(
        output_dir=str(Path(cfg.output_dir) / "dpo" / loss), overwrite=True, seed=cfg.seed,
        preference=PreferenceConfig(loss=loss, beta=0.1), model=ModelConfig(name_or_path=str(model_dir)),
        task=task_config(cfg),
        data=DataConfig(train_path=str(pairs_dir / "train.jsonl"), eval_path=str(pairs_dir / "eval.jsonl"),
                        max_length=128),
        train=TrainConfig(lr=2e-4, max_steps=steps, micro_batch_size=16, warmup_steps=10, schedule="cosine",
                          min_lr_ratio=0.1),
        eval=eval_config(cfg, every=0 if cfg.quick else 30),
        checkpoint=CheckpointConfig(every=0, keep_last=1), log=LogConfig(every=10, progress=False))


def run(cfg: DemoConfig) -> dict:
    from posttrain.train import preference, reward, sft

    out = Path(cfg.output_dir)
    rows, summary = [], {}
    t0 = time.time()

    # ---- SFT --------------------------------------------------------------------------------------------------------
    sft_cfg = sft_stage_config(cfg)
    print(f"posttrain demo{' (quick)' if cfg.quick else ''}: SFT of the tiny model (random init) on "
          f"{sft_cfg.task.max_digits}-digit addition written in steps, {sft_cfg.train.max_steps} steps", flush=True)
    sft.run(sft_cfg)
    records = read_metrics(sft_cfg.output_dir)
    evals = [r for r in records if "eval/accuracy" in r]
    rows.append(("before (random init)", evals[0]["eval/accuracy"], 0.0))
    rows.append(("after SFT", evals[-1]["eval/accuracy"], time.time() - t0))
    plot_metrics(records, out / "plots" / "sft")
    sft_dir = Path(sft_cfg.output_dir) / "final"

    # ---- verified pairs ---------------------------------------------------------------------------------------------
    t1 = time.time()
    pairs_dir = out / "pairs"
    summary["pairs"] = sample_pairs(cfg, sft_dir, pairs_dir)
    train_counts, eval_counts = summary["pairs"]["train"], summary["pairs"]["eval"]
    print(f"\npairs: 4 samples per problem from the SFT model ({train_counts['sample_accuracy']:.0%} right); "
          f"{train_counts['pairs']} training pairs from {train_counts['problems']} problems, "
          f"{eval_counts['pairs']} held-out pairs — {pairs_dir} ({time.time() - t1:.0f} s)", flush=True)

    # ---- reward model -----------------------------------------------------------------------------------------------
    t1 = time.time()
    rm_cfg = rm_stage_config(cfg, sft_dir, pairs_dir)
    rm_metrics = reward.run(rm_cfg)
    summary["reward_model"] = {"eval_pair_accuracy": rm_metrics["eval/accuracy"], "eval_pairs": eval_counts["pairs"],
                               "seconds": time.time() - t1}
    print(f"reward model: held-out pair accuracy {rm_metrics['eval/accuracy']:.3f} on {eval_counts['pairs']} pairs "
          f"({time.time() - t1:.0f} s) — {Path(rm_cfg.output_dir) / 'final'}", flush=True)

    # ---- preference optimization: the variant table -----------------------------------------------------------------
    variants = (DEMO_LOSS, "dpo") if cfg.quick else VARIANTS
    table = []
    for loss in variants:
        t1 = time.time()
        dpo_cfg = dpo_stage_config(cfg, loss, sft_dir, pairs_dir)
        print(f"preference optimization: {loss}, {dpo_cfg.train.max_steps} steps", flush=True)
        preference.run(dpo_cfg)
        table.append(variant_row(loss, read_metrics(dpo_cfg.output_dir), time.time() - t1))
        if loss == DEMO_LOSS:
            rows.append((f"after DPO ({loss})", table[-1]["after"], time.time() - t0))
            plot_metrics(read_metrics(dpo_cfg.output_dir), out / "plots" / "dpo")
    summary["variants"] = table
    summary["stages"] = [{"stage": stage, "greedy_accuracy": acc, "seconds": s} for stage, acc, s in rows]

    print()
    print(f"{'stage':<22} {'greedy acc':>10} {'time (s)':>9}")
    for stage, acc, seconds in rows:
        print(f"{stage:<22} {acc:>10.3f} {seconds:>9.0f}")
    print()
    print_variant_table(table, sft_cfg)
    show_samples(sft_dir, sft_cfg)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nheld-out problems: {sft_cfg.eval.num_samples}; plots: {out / 'plots'}; numbers: {out / 'summary.json'}")
    return {"before": rows[0][1], "after": rows[1][1], "after_dpo": rows[-1][1], "seconds": time.time() - t0}


def variant_row(loss: str, records: list[dict], seconds: float) -> dict:
    """One line of the variant table from a preference run's metrics.jsonl."""
    evals = [r for r in records if "eval/accuracy" in r]
    first, last = evals[0], evals[-1]
    return {"loss": loss, "before": first["eval/accuracy"], "lowest": min(r["eval/accuracy"] for r in evals),
            "after": last["eval/accuracy"],
            "preference_accuracy": last.get("eval/rewards/accuracies"), "margin": last["eval/rewards/margins"],
            "logps_chosen_change": last["eval/logps/chosen"] - first["eval/logps/chosen"],
            "logps_rejected_change": last["eval/logps/rejected"] - first["eval/logps/rejected"],
            "seconds": seconds}


def print_variant_table(table: list[dict], sft_cfg: SFTConfig) -> None:
    print("preference losses on the same pairs and budget (greedy accuracy on held-out problems; pair metrics on "
          "held-out pairs;\nΔ log π: change of the summed log-prob of chosen / rejected answers — both falling is "
          "likelihood displacement)")
    print(f"{'loss':<7} {'before':>7} {'lowest':>7} {'after':>7} {'pref acc':>9} {'margin':>7} "
          f"{'Δlogπ chosen':>13} {'Δlogπ rejected':>15} {'time (s)':>9}")
    for r in table:
        pref = "—" if r["preference_accuracy"] is None else f"{r['preference_accuracy']:.3f}"
        print(f"{r['loss']:<7} {r['before']:>7.3f} {r['lowest']:>7.3f} {r['after']:>7.3f} {pref:>9} "
              f"{r['margin']:>7.3f} {r['logps_chosen_change']:>13.2f} {r['logps_rejected_change']:>15.2f} "
              f"{r['seconds']:>9.0f}")


def show_samples(model_dir: Path, sft_cfg: SFTConfig, n: int = 2) -> None:
    """Print the SFT model's greedy answers to a few held-out problems."""
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
