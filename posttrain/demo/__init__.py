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

from posttrain.config import (AlgoConfig, CheckpointConfig, DataConfig, DemoConfig, DPOConfig, EvalConfig, KLSection,
                              LogConfig, ModelConfig, PreferenceConfig, RLBatchConfig, RLConfig, RLRewardConfig,
                              RMConfig, SamplingParams, SFTConfig, TaskConfig, TrainConfig)
from posttrain.errors import ConfigError
from posttrain.track import plot_metrics, read_metrics

DEMO_LOSS = "orpo"  # the "after DPO" row: the variant that improved greedy accuracy here (see the variant table)
VARIANTS = ("dpo", "ipo", "rpo", "simpo", "orpo", "kto")
SAMPLE_TEMPERATURE = 0.5  # close to the greedy answers whose mistakes the pairs should correct
NOISY_DEMOS = 128  # the scarce demonstration set of the RL-vs-SFT comparison
RL_CURVES = ("reward/mean", "kl", "response_len/mean", "entropy", "eval/accuracy", "value_loss",
             "explained_variance", "rollout/zero_variance_frac")


def task_config(cfg: DemoConfig) -> TaskConfig:
    """3-digit operands (quick: 2, and fewer training rows to build), written-out steps; the same 200 held-out
    problems score every stage."""
    return TaskConfig(name="arith", max_digits=2 if cfg.quick else 3, ops="+", steps=True,
                      num_train=8_000 if cfg.quick else 50_000, num_eval=200)


def eval_config(cfg: DemoConfig, every: int = 0) -> EvalConfig:
    return EvalConfig(every=every, num_samples=50 if cfg.quick else 200, at_start=True,
                      max_new_tokens=48 if cfg.quick else 72, task_accuracy=True)


def sft_stage_config(cfg: DemoConfig) -> SFTConfig:
    """The SFT stage: the model learns to write column addition step by step ("7+5=12 carry 1" …) and the
    answer. Written-out steps make each token a local computation, which a 1M-parameter model learns in minutes;
    the bare answer ("132") needs the whole carry chain in one token and takes far longer.
    Full: 3-digit operands, stopped partway (about half right); quick: 2-digit operands, under a minute."""
    steps = 200 if cfg.quick else 300
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
        eval=eval_config(cfg, every=0 if cfg.quick else 60),
        checkpoint=CheckpointConfig(every=0, keep_last=1), log=LogConfig(every=10, progress=False))


def rl_stage_config(cfg: DemoConfig, algo: str, model_dir: Path, reward_model: Path | None = None) -> RLConfig:
    """GRPO or PPO from the SFT model, rewarded by the task's verifier (and a reward model as PPO's critic init).

    What made RL work on this 1M-parameter model (measured from the same 0.455 checkpoint): sampling at T = 0.5,
    close to the greedy answers whose mistakes it should fix (at T = 1 the samples' errors are mostly sampling
    noise); dynamic sampling, so every group carries a signal; a small constant learning rate, 3e-5 (1e-4 and
    above drift the weights with Adam's per-parameter noise and undo SFT); a KL coefficient of only 1e-3 (the small
    rate keeps the policy near the SFT model; the term is there so the KL to it is measured and plotted)."""
    steps = 3 if cfg.quick else (60 if algo == "grpo" else 70)
    ppo = algo == "ppo"
    return RLConfig(
        output_dir=str(Path(cfg.output_dir) / algo), overwrite=True, seed=cfg.seed,
        algo=AlgoConfig(name=algo, critic_lr=3e-4 if ppo else 0.0,
                        critic_init=str(reward_model) if ppo and reward_model else ""),
        kl=KLSection(coef=0.0 if cfg.quick else 1e-3),  # small enough not to hold the policy back; logs the KL
        rl=RLBatchConfig(prompts_per_step=64 if ppo else 16, dynamic_sampling=None if ppo else True),
        reward=RLRewardConfig(verifier=True),
        sampling=SamplingParams(temperature=0.5, max_new_tokens=eval_config(cfg).max_new_tokens),
        model=ModelConfig(name_or_path=str(model_dir)), task=task_config(cfg), data=DataConfig(max_length=128),
        train=TrainConfig(lr=3e-5, max_steps=steps, micro_batch_size=32, schedule="constant"),
        eval=eval_config(cfg, every=0 if cfg.quick else steps // 2),
        checkpoint=CheckpointConfig(every=0, keep_last=1), log=LogConfig(every=1, progress=False))


def noisy_demonstrations(cfg: DemoConfig, out: Path) -> dict:
    """The scarce, imperfect demonstration set: NOISY_DEMOS worked solutions, a quarter of them with a miscopied
    final answer (the task's own corruption, off by 1 or 10) — like a small set written by hand in a hurry."""
    from posttrain import tasks

    task_cfg = task_config(cfg)
    task = tasks.get("arith", max_digits=task_cfg.max_digits, ops=task_cfg.ops, steps=True)
    n = NOISY_DEMOS // 4 if cfg.quick else NOISY_DEMOS
    rows = task.sft_rows("train", n, seed=cfg.seed + 2)
    corrupted = task.preference_rows("train", n, seed=cfg.seed + 2)
    wrong = set(range(0, n, 4))  # every fourth one
    for i in wrong:
        rows[i]["messages"][1]["content"] = corrupted[i]["rejected"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"demonstrations": n, "wrong": len(wrong)}


def continued_sft_config(cfg: DemoConfig, name: str, model_dir: Path, steps: int,
                         train_path: Path | None = None) -> SFTConfig:
    """More SFT from the SFT model: on the task's clean data (train_path None) or on a demonstration file."""
    base = sft_stage_config(cfg)
    return replace(base, output_dir=str(Path(cfg.output_dir) / name), model=ModelConfig(name_or_path=str(model_dir)),
                   data=replace(base.data, train_path=str(train_path) if train_path else None),
                   train=TrainConfig(lr=1e-4, max_steps=steps, micro_batch_size=32, warmup_steps=0,
                                     schedule="constant"),
                   eval=replace(eval_config(cfg, every=0), at_start=False),  # it starts at the SFT model's score
                   log=LogConfig(every=10, progress=False))


def seconds_per_step(records: list[dict]) -> float:
    """Training seconds per step from a run's metrics.jsonl (the `time` of its last record over its last step)."""
    last = records[-1]
    return last["time"] / max(1, last["step"])


def run(cfg: DemoConfig) -> dict:
    if cfg.env:
        from posttrain.demo import agent
        if not cfg.model or cfg.env not in agent.ENVIRONMENTS:
            raise ConfigError(f"demo env={cfg.env}: the tool-use demo needs a pretrained instruct model (model=) and "
                              f"one of the environments {', '.join(agent.ENVIRONMENTS)} — fix: posttrain demo "
                              "model=smollm2-135m-instruct env=calculator")
        return agent.run(cfg)
    if cfg.model:
        from posttrain.demo import pretrained
        return pretrained.run(cfg)
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
    variants = (DEMO_LOSS,) if cfg.quick else VARIANTS
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

    # ---- online RL from the SFT model: GRPO with the verifier, PPO with a critic ------------------------------------
    summary["rl"] = {}
    for algo in ("grpo", "ppo"):
        summary["rl"][algo] = rl_stage(cfg, algo, sft_dir, Path(rm_cfg.output_dir) / "final")
        label = "after GRPO (verifier)" if algo == "grpo" else "after PPO (critic)"
        rows.append((label, summary["rl"][algo]["accuracy"], time.time() - t0))

    # ---- scarce, imperfect demonstrations: RL vs more SFT for the same wall time ------------------------------------
    summary["demonstrations"], arms = scarce_comparison(cfg, sft_cfg, summary["rl"]["grpo"])
    summary["scarce_demonstrations"] = arms
    summary["stages"] = [{"stage": stage, "greedy_accuracy": acc, "seconds": s} for stage, acc, s in rows]

    print()
    print(f"{'stage':<22} {'greedy acc':>10} {'time (s)':>9}")
    for stage, acc, seconds in rows:
        print(f"{stage:<22} {acc:>10.3f} {seconds:>9.0f}")
    print()
    print_variant_table(table, sft_cfg)
    print_scarce_table(arms, rows[1][1])
    show_samples(sft_dir, sft_cfg)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nheld-out problems: {sft_cfg.eval.num_samples}; plots: {out / 'plots'}; numbers: {out / 'summary.json'}")
    return {"before": rows[0][1], "after": rows[1][1], "after_dpo": rows[2][1], "after_grpo": rows[3][1],
            "after_ppo": rows[4][1], "seconds": time.time() - t0}


def rl_stage(cfg: DemoConfig, algo: str, sft_dir: Path, rm_dir: Path) -> dict:
    """One RL stage from the SFT model; its curves go to plots/ALGO. Returns its summary entry."""
    from posttrain.train import rl

    rl_cfg = rl_stage_config(cfg, algo, sft_dir, rm_dir)
    print(f"\nonline RL: {algo}, {rl_cfg.train.max_steps} steps", flush=True)
    rl.run(rl_cfg)
    records = read_metrics(rl_cfg.output_dir)
    plot_metrics([{k: v for k, v in r.items() if k in ("step", *RL_CURVES)} for r in records],
                 Path(cfg.output_dir) / "plots" / algo)
    return {"accuracy": records[-1]["eval/accuracy"], "training_seconds": records[-1]["time"],
            "steps": rl_cfg.train.max_steps, "reward_first": records[1]["reward/mean"],
            "reward_last": records[-1]["reward/mean"], "kl_last": records[-1].get("kl")}


def scarce_comparison(cfg: DemoConfig, sft_cfg: SFTConfig, grpo: dict) -> tuple[dict, list[dict]]:
    """More SFT from the SFT model for GRPO's training seconds (at the SFT stage's measured seconds per step): on
    the noisy demonstrations, and on the clean task data. Returns (the demonstration counts, the table's rows)."""
    from posttrain.train import sft

    sft_dir = Path(sft_cfg.output_dir) / "final"
    budget = grpo["training_seconds"]
    steps = max(1, round(budget / seconds_per_step(read_metrics(sft_cfg.output_dir))))
    demos = Path(cfg.output_dir) / "demonstrations" / "noisy.jsonl"
    counts = noisy_demonstrations(cfg, demos)
    arms = []
    for name, path, label in (("sft_noisy", demos, f"more SFT on {counts['demonstrations']} demonstrations, "
                                                   f"{counts['wrong']} wrong"),
                              ("sft_clean", None, f"more SFT on {sft_cfg.task.num_train:,} clean demonstrations")):
        arm_cfg = continued_sft_config(cfg, name, sft_dir, steps, path)
        print(f"\n{label}: {steps} steps (about GRPO's {budget:.0f} s)", flush=True)
        sft.run(arm_cfg)
        records = read_metrics(arm_cfg.output_dir)
        arms.append({"method": label, "accuracy": records[-1]["eval/accuracy"], "seconds": records[-1]["time"]})
    arms.insert(1, {"method": "GRPO: prompts and the verifier only", "accuracy": grpo["accuracy"],
                    "seconds": budget})
    return counts, arms


def print_scarce_table(arms: list[dict], sft_accuracy: float) -> None:
    print(f"\nfrom the SFT model ({sft_accuracy:.3f}), for the same wall time: RL with a verifier against more SFT on "
          f"few, imperfect demonstrations — and on perfect ones")
    print(f"{'method':<48} {'greedy acc':>10} {'time (s)':>9}")
    for arm in arms:
        print(f"{arm['method']:<48} {arm['accuracy']:>10.3f} {arm['seconds']:>9.0f}")


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
