"""`posttrain demo model=smollm2-135m-instruct`: a real pretrained instruct model, made better at arithmetic word
problems by RL with a verifier — on a laptop CPU, offline.

    zero-shot  the model as it comes: greedy answers through its chat template to 500 held-out problems of the
               `word` task (levels 1 and 3: 2-digit + and −, 2-digit × 1-digit), scored by the task's verifier
    GRPO       LoRA (rank 16 on every linear layer) trained by GRPO with the verifier as the only reward:
               8 problems × 8 samples per step at T = 0.7, at most 64 new tokens, lr 2e-4, 40 steps
    RFT        from the same start, for the same wall time: rounds of 8 samples on 96 fresh problems, keep one
               verified answer per problem, SFT the LoRA on them (posttrain rft, rft.max_seconds = GRPO's time)
    after      each model's greedy accuracy on the same 500 problems, with the exact sign test against zero-shot
               (eval.metrics.paired_sign_test): p is the chance of a split of the changed problems this lopsided
               if training had changed nothing

Why LoRA, measured on this model (fp32, 2 cores, 64 samples a step). The rollout is the same either way: about
27 s. The update differs. Full fine-tuning with a KL term (benchmarks/grpo_step.py --beta 0.04) took 68 s per
update; LoRA with a KL term (this demo's first run, kl.coef=1e-3) took 58 s, reference pass included. That
reference is the same weights with the adapter switched off, so no second 538 MB copy is held, and AdamW keeps
state for 4.9M parameters instead of 134.5M. LoRA at 10× the full fine-tuning rate is the usual recipe for RL
on a small budget, where the signal is a few bits per episode and rank matters little.

Why no KL term: most groups have all-equal rewards here (62–88% of them early on), and their samples have a zero
advantage, so the update skips them; a KL term gives every sample a gradient again, and a first run with
kl.coef=1e-3 took 85 s per step (55–65 s of it the update) against 33 s without — 40 steps would not fit in 25
minutes. Without the term (as in DAPO and Dr. GRPO) nothing holds the policy near the start but the small number
of steps and the rank-16 adapter. The KL to the start is still watched: kl.monitor=8 scores the first sample of
each group with the adapter switched off (one no-grad forward of 8 samples, ~1.6 s a step) and logs kl.

Writes RUN_DIR/summary.json, the curves in RUN_DIR/plots/grpo and plots/rft (reward, held-out accuracy, KL,
response length, entropy, truncation; RFT's yield and sample accuracy per round), each evaluation's
completions in RUN_DIR/eval/NAME/, and prints the table. The zero-shot accuracy per level on all five levels is in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from posttrain.config import (AlgoConfig, CheckpointConfig, DataConfig, DemoConfig, EvalConfig, KLSection,
                              LogConfig, LoraConfig, ModelConfig, RFTConfig, RLBatchConfig, RLConfig, RLRewardConfig,
                              RolloutConfig, SamplingParams, TaskConfig, TrainConfig)
from posttrain.config.rl import RFTSection
from posttrain.eval.metrics import paired_sign_test, wins
from posttrain.track import plot_metrics, read_metrics

LEVELS = [1, 3]  # the levels where the model is right often enough (about 1 sample in 20) for RL to get a signal
HELD_OUT = 500
EVAL_TOKENS = 128  # generous for the zero-shot model, whose answers run long; the trained ones are shorter
RL_CURVES = ("reward/mean", "eval/accuracy", "kl", "response_len/mean", "entropy", "truncated_frac",
             "rollout/zero_variance_frac")
RFT_CURVES = ("rft/yield", "rft/sample_accuracy", "rft/kept", "eval/accuracy", "loss")


def task_config(cfg: DemoConfig) -> TaskConfig:
    return TaskConfig(name="word", levels=list(LEVELS), num_eval=16 if cfg.quick else HELD_OUT)


def eval_tokens(cfg: DemoConfig) -> int:
    return 16 if cfg.quick else EVAL_TOKENS


def lora() -> LoraConfig:
    return LoraConfig(r=16, alpha=32, target_modules=["all-linear"])


def in_training_eval(cfg: DemoConfig, every: int) -> EvalConfig:
    """A quick look during training (64 held-out problems, the training length limit) for the accuracy curve;
    the table's numbers come from the 500-problem evaluations."""
    return EvalConfig(every=every, num_samples=8 if cfg.quick else 64, max_new_tokens=64, at_start=True,
                      task_accuracy=True)


def grpo_config(cfg: DemoConfig) -> RLConfig:
    steps = 2 if cfg.quick else 40
    return RLConfig(
        output_dir=str(Path(cfg.output_dir) / "grpo"), overwrite=True, seed=cfg.seed,
        model=ModelConfig(name_or_path=cfg.model), lora=lora(), algo=AlgoConfig(name="grpo"),
        kl=KLSection(coef=0.0, monitor=2 if cfg.quick else 8),  # no KL term, the KL logged: see the module docstring
        rl=RLBatchConfig(prompts_per_step=2 if cfg.quick else 8, generations=4 if cfg.quick else 8),
        reward=RLRewardConfig(verifier=True),
        sampling=SamplingParams(temperature=0.7, max_new_tokens=16 if cfg.quick else 64),
        task=task_config(cfg), data=DataConfig(max_length=256),
        train=TrainConfig(lr=2e-4, max_steps=steps, micro_batch_size=8 if cfg.quick else 16, schedule="constant"),
        eval=in_training_eval(cfg, every=1 if cfg.quick else 20),
        checkpoint=CheckpointConfig(every=0, keep_last=1), log=LogConfig(every=1, progress=False))


def rft_config(cfg: DemoConfig, seconds: float) -> RFTConfig:
    return RFTConfig(
        output_dir=str(Path(cfg.output_dir) / "rft"), overwrite=True, seed=cfg.seed,
        model=ModelConfig(name_or_path=cfg.model), lora=lora(),
        rft=RFTSection(rounds=1 if cfg.quick else 50, keep_per_prompt=1, prompts_per_round=4 if cfg.quick else 96,
                       max_seconds=seconds),
        sampling=SamplingParams(temperature=0.7, n=4 if cfg.quick else 8, max_new_tokens=16 if cfg.quick else 64),
        rollout=RolloutConfig(batch_size=64), task=task_config(cfg), data=DataConfig(max_length=256),
        train=TrainConfig(lr=2e-4, epochs=3.0, micro_batch_size=8, schedule="constant"),
        eval=in_training_eval(cfg, every=0),
        checkpoint=CheckpointConfig(keep_last=1), log=LogConfig(every=1, progress=False))


def evaluate(cfg: DemoConfig, name: str, model_path: str) -> dict:
    """Greedy accuracy of the model (a name, directory or run's adapter) on the held-out problems, the same way as
    `posttrain eval strategies=greedy`; every completion and its verdict go to eval/NAME/completions.jsonl.
    Returns the accuracy, per level, and the verdict on each problem for the sign test."""
    from posttrain import tasks
    from posttrain.eval.accuracy import greedy_accuracy
    from posttrain.eval.metrics import by_group
    from posttrain.models.inference import load_for_inference

    t0 = time.time()
    task_cfg = task_config(cfg)
    task = tasks.from_config(task_cfg)
    rows = task.rows("eval", task_cfg.num_eval, cfg.seed)
    model, tokenizer, _ = load_for_inference(model_path)
    accuracy, samples = greedy_accuracy(model, tokenizer, rows, task.score, use_chat_template=True,
                                        max_new_tokens=eval_tokens(cfg), batch_size=64)
    samples = [{**sample, "answer": row["answer"], "level": row["level"]} for row, sample in zip(rows, samples)]
    scores = [s["score"] or 0.0 for s in samples]
    out = Path(cfg.output_dir) / "eval" / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "completions.jsonl").write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    print(f"{name}: greedy accuracy {accuracy:.3f} on {len(rows)} held-out problems ({time.time() - t0:.0f} s)",
          flush=True)
    return {"accuracy": accuracy, "by_level": by_group(rows, scores), "scores": scores, "samples": samples,
            "seconds": time.time() - t0}


def versus(before: dict, after: dict) -> dict:
    """The accuracy change on the same problems and the exact sign test's p-value."""
    lost, won = wins(before["scores"], after["scores"])
    return {"gain": after["accuracy"] - before["accuracy"], "p_value": paired_sign_test(before["scores"],
            after["scores"]), "won": won, "lost": lost}


def run(cfg: DemoConfig) -> dict:
    from posttrain.train import rft, rl

    out = Path(cfg.output_dir)
    t0 = time.time()
    print(f"posttrain demo{' (quick)' if cfg.quick else ''}: {cfg.model} on arithmetic word problems (levels "
          f"{', '.join(map(str, LEVELS))}); zero-shot → GRPO with the verifier → RFT for the same time", flush=True)

    # ---- zero-shot --------------------------------------------------------------------------------------------------
    evals = {"zero_shot": evaluate(cfg, "zero_shot", cfg.model)}

    # ---- GRPO, then RFT for GRPO's wall time -----------------------------------------------------------------------
    grpo_cfg = grpo_config(cfg)
    grpo_seconds, grpo_records = train_stage(cfg, "grpo", rl.run, grpo_cfg, RL_CURVES, evals)
    rft_cfg = rft_config(cfg, grpo_seconds)
    rft_seconds, rft_records = train_stage(cfg, "rft", rft.run, rft_cfg, RFT_CURVES, evals)

    # ---- the table --------------------------------------------------------------------------------------------------
    zero = evals["zero_shot"]
    stages = [{"stage": "zero-shot", "accuracy": zero["accuracy"], "by_level": zero["by_level"],
               "training_seconds": 0.0}]
    for stage, seconds, detail in (("GRPO", grpo_seconds, f"{grpo_cfg.train.max_steps} steps"),
                                   ("RFT", rft_seconds, f"{len(rft_records) - 1} rounds")):
        after = evals[stage.lower()]
        stages.append({"stage": stage, "detail": detail, "accuracy": after["accuracy"], "by_level": after["by_level"],
                       "training_seconds": seconds, **versus(zero, after)})
    summary = {"model": cfg.model, "levels": LEVELS, "held_out": len(zero["scores"]), "eval_max_new_tokens":
               eval_tokens(cfg), "stages": stages,
               "grpo": {"reward_first": next(r["reward/mean"] for r in grpo_records if "reward/mean" in r),
                        "reward_last": grpo_records[-1]["reward/mean"], "kl_last": grpo_records[-1].get("kl")},
               "eval_seconds": {name: e["seconds"] for name, e in evals.items()}, "seconds": time.time() - t0}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_table(summary)
    show_changed(zero["samples"], evals["grpo"]["samples"], n=2)
    print(f"\nplots: {out / 'plots'}; numbers: {out / 'summary.json'}; completions: {out / 'eval'}")
    return {s["stage"]: s["accuracy"] for s in stages} | {"seconds": summary["seconds"]}


def train_stage(cfg: DemoConfig, name: str, run, stage_cfg, curves: tuple[str, ...], evals: dict) -> tuple[float, list]:
    """Run one training stage (`run(stage_cfg)`), plot its curves to plots/NAME and evaluate its final model into
    evals[NAME]; returns (its wall seconds, its metrics records)."""
    t0 = time.time()
    run(stage_cfg)
    seconds = time.time() - t0
    records = read_metrics(stage_cfg.output_dir)
    plot_metrics([{k: v for k, v in r.items() if k in ("step", *curves)} for r in records],
                 Path(cfg.output_dir) / "plots" / name)
    evals[name] = evaluate(cfg, name, str(Path(stage_cfg.output_dir) / "final"))
    return seconds, records


def print_table(summary: dict) -> None:
    levels = [f"level_{n}" for n in summary["levels"]]
    print(f"\n{summary['model']}: greedy accuracy on {summary['held_out']} held-out word problems "
          f"(≤ {summary['eval_max_new_tokens']} new tokens); vs zero-shot: accuracy change, problems won/lost, "
          f"exact sign test")
    print(f"{'stage':<22} {'accuracy':>8} " + " ".join(f"{'level ' + n[6:]:>8}" for n in levels)
          + f" {'vs zero-shot':>13} {'won/lost':>9} {'p':>8} {'train (s)':>9}")
    for s in summary["stages"]:
        cells = " ".join(f"{s['by_level'][n]:>8.3f}" if s["by_level"] and n in s["by_level"] else f"{'—':>8}"
                         for n in levels)
        stage = s["stage"] + (f" ({s['detail']})" if "detail" in s else "")
        if "gain" in s:
            rest = f"{s['gain']:>+13.3f} {str(s['won']) + '/' + str(s['lost']):>9} {s['p_value']:>8.2g}"
        else:
            rest = f"{'—':>13} {'—':>9} {'—':>8}"
        print(f"{stage:<22} {s['accuracy']:>8.3f} {cells} {rest} {s['training_seconds']:>9.0f}")
    print(f"total wall time {summary['seconds']:.0f} s (evaluations {sum(summary['eval_seconds'].values()):.0f} s)")


def show_changed(zero_shot: list[dict], grpo: list[dict], n: int) -> None:
    """Print a few problems zero-shot got wrong and GRPO got right, both answers."""
    changed = [(a, b) for a, b in zip(zero_shot, grpo) if b["score"] == 1.0 and a["score"] != 1.0]
    for before, after in changed[:n]:
        print(f"\n{before['prompt']}  (answer {before['answer']})\n  zero-shot: "
              + before["completion"].strip().replace("\n", " ") + "\n  GRPO:      "
              + after["completion"].strip().replace("\n", " "))
