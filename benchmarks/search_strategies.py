#!/usr/bin/env python
"""Test-time compute on the built-in arithmetic task (3-digit addition, steps format): the `posttrain eval` table
from an SFT checkpoint, with an outcome reward model and a process reward model trained here from scratch.

    OMP_NUM_THREADS=1 python benchmarks/search_strategies.py                     # every stage from scratch
    OMP_NUM_THREADS=1 python benchmarks/search_strategies.py --reuse             # keep stages already in --out
    OMP_NUM_THREADS=1 python benchmarks/search_strategies.py --sft-steps 300     # the demo's early-stopped policy

Stages (each a plain posttrain run; --out keeps every run directory):
    sft     the demo's SFT stage (`posttrain.demo.sft_stage_config`: the embedded tiny Llama, 1.1M parameters,
            lr 3e-3, cosine) for --sft-steps steps of 32 solutions. The demo stops at 300 steps (greedy 0.455);
            the same config trained longer writes much better solutions (600: ~0.8, 1000: ~0.95 greedy)
    pairs   --pair-problems training problems (seed 1, so not the scored ones), 4 samples each at T 0.5 from the
            SFT model, split by the verifier into chosen/rejected pairs (at most 2 per problem); 512 held-out
            problems the same way give held-out pairs (the RM's headline number, pair accuracy)
    rm      `posttrain rm` (Bradley–Terry, the SFT model with a scalar head) on those pairs, --rm-steps steps of 16
    prm     `posttrain rm reward.mode=prm` on the task's step-labelled solutions (half carry one injected error,
            labelled from it on), --prm-steps steps of 32 at lr 3e-4 (1e-3 left it a position prior: its held-out
            step accuracy stayed at the always-"correct" rate)
    eval    `posttrain eval` on the task's 200 held-out problems: greedy, sampling, pass@k, maj@k, best-of-8 and
            weighted vote by the RM and by the PRM, step-level beam search and MCTS with the PRM, the last two
            stopped at the generated tokens best-of-8 spent on each problem

Prints every stage's headline numbers, the table (also in OUT/eval/results.md), and the runtime.

Measured (OMP_NUM_THREADS=1, a shared 2-core CPU; the SFT stage reused with --reuse, so the runtime is pairs + RM +
PRM + eval: 912 s at 300 SFT steps, about 15 min at 600), accuracy on the 200 held-out problems, T = 0.5, N = 8:

    SFT steps (greedy) → sampling  maj@8  pass@8  best-of-8 RM  wvote RM  best-of-8 PRM  beam PRM  MCTS PRM
    300  (0.455)          0.332    0.415  0.650   0.315         0.450     0.200          0.265     0.440
    450  (0.855)          0.844    0.855  0.930   0.855         0.860     0.815          0.835     0.855
    600  (0.935)          0.926    0.935  0.970   0.930         0.935     0.925          0.930     0.935
    (RM held-out pair accuracy 0.602 on 1845 pairs at 300 steps, 0.516 on 591 pairs at 450 (--rm-steps 1000
    --prm-steps 400, 634 s), 0.583 on 224 pairs at 600; PRM held-out step accuracy 0.746 / 0.689 / 0.730 where
    always "correct" scores 0.670.) Greedy and maj@8 only: 1000 steps 0.990 / 0.990.
    No checkpoint has maj@8 or a reward-model best-of-8 above greedy: the samples' errors
    are systematic per problem (a misread operand digit, a wrong digit copied into the answer line), not noise
    around the right answer, and the reward models, the same 1.1M-parameter backbone, check a line's local
    arithmetic at best — a misread operand gives a locally consistent line they rank high.

--task sums (3..6 one-digit terms added in any order: many correct solutions; 400 held-out problems), the
defaults (2000 SFT steps, on-policy pairs from 8192 problems plus 64000 of the task's swapped-term pairs, 5000
RM steps), 2124 s with the SFT stage reused; in parentheses the lead over greedy and the sign test's p-value:

    greedy 0.797, sampling 0.739, maj@8 0.865 (+0.068, p 0.003), pass@8 0.990,
    best-of-8 RM 0.887 (+0.090, p 1e-4), weighted vote RM 0.927, best-of-8 PRM 0.703, beam PRM 0.698,
    MCTS PRM 0.762; RM held-out pair accuracy 0.838 (0.571 on the on-policy pairs alone, best-of-8 0.800).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from posttrain import tasks
from posttrain.config import (CheckpointConfig, DataConfig, DemoConfig, EvalConfig, EvaluateConfig, LogConfig,
                              ModelConfig, RewardConfig, RMConfig, SearchConfig, SFTConfig, TaskConfig, TrainConfig)
from posttrain.demo import SAMPLE_TEMPERATURE, eval_config, rm_stage_config, sft_stage_config, task_config


TASK_DEFAULTS = {"arith": {"sft_steps": 600, "pair_problems": 4096, "task_pairs": 0, "rm_steps": 400},
                 "sums": {"sft_steps": 2000, "pair_problems": 8192, "task_pairs": 64000, "rm_steps": 5000}}


def bench_task(args, demo: DemoConfig) -> TaskConfig:
    """arith: the demo's task (3-digit column addition, one correct solution per problem). sums: 3..6 one-digit
    terms added in any order (many correct solutions), 400 held-out problems."""
    if args.task == "arith":
        return task_config(demo)
    return TaskConfig(name="sums", max_digits=1, ops="+", steps=True, num_train=50_000, num_eval=400)


def sft_stage(args, demo: DemoConfig) -> Path:
    from posttrain.train import sft

    cfg = sft_stage_config(demo)
    cfg = replace(cfg, threads=args.threads, task=bench_task(args, demo),
                  train=replace(cfg.train, max_steps=args.sft_steps),
                  eval=replace(cfg.eval, every=0), log=replace(cfg.log, progress=False))
    print(f"sft: greedy accuracy {sft.run(cfg)['eval/accuracy']:.3f} after {args.sft_steps} steps", flush=True)
    return Path(cfg.output_dir) / "final"


def pairs_stage(args, demo: DemoConfig, model_dir: Path, out_dir: Path) -> dict:
    """4 verified samples per problem → chosen/rejected pairs (posttrain.demo.sample_pairs, more problems); the
    training file adds --task-pairs of the task's own preference rows."""
    from posttrain.data.preference import verified_pairs
    from posttrain.eval.accuracy import sampled_completions
    from posttrain.models.loading import load_model, load_tokenizer

    task_cfg = bench_task(args, demo)
    task = tasks.get(task_cfg.name, max_digits=task_cfg.max_digits, ops=task_cfg.ops, steps=True)
    tokenizer = load_tokenizer(str(model_dir))
    model = load_model(ModelConfig(name_or_path=str(model_dir)), SFTConfig().lora).eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, n in (("train", args.pair_problems), ("eval", 512)):
        rows = task.rows(split, n, seed=demo.seed + 1)  # not the problems the table scores (seed 0)
        samples = sampled_completions(model, tokenizer, rows, task.score, n=4, temperature=SAMPLE_TEMPERATURE,
                                      use_chat_template=True, max_new_tokens=eval_config(demo).max_new_tokens,
                                      batch_size=64, seed=demo.seed)
        pairs = verified_pairs(rows, samples)
        right = sum(s["score"] == 1.0 for row in samples for s in row) / (4 * len(rows))
        counts[split] = {"problems": len(rows), "pairs": len(pairs), "sample_accuracy": round(right, 3)}
        if split == "train" and args.task_pairs:
            pairs += task.preference_rows("train", args.task_pairs, seed=demo.seed + 2)
            counts[split]["task_pairs"] = args.task_pairs
        (out_dir / f"{split}.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    print(f"pairs: {counts}", flush=True)
    return counts


def rm_stage(args, demo: DemoConfig, model_dir: Path, pairs_dir: Path) -> Path:
    from posttrain.train import reward

    cfg = rm_stage_config(demo, model_dir, pairs_dir)
    cfg = replace(cfg, threads=args.threads, task=bench_task(args, demo),
                  train=replace(cfg.train, max_steps=args.rm_steps))
    metrics = reward.run(cfg)
    print(f"rm: held-out pair accuracy {metrics['eval/accuracy']:.3f}", flush=True)
    return Path(cfg.output_dir)


def prm_stage(args, demo: DemoConfig, model_dir: Path) -> Path:
    from posttrain.train import reward

    cfg = RMConfig(
        output_dir=str(Path(demo.output_dir) / "prm"), overwrite=True, seed=demo.seed, threads=args.threads,
        reward=RewardConfig(mode="prm"), model=ModelConfig(name_or_path=str(model_dir)),
        task=replace(bench_task(args, demo), num_train=20_000), data=DataConfig(max_length=256),
        train=TrainConfig(lr=args.prm_lr, max_steps=args.prm_steps, micro_batch_size=32, warmup_steps=50,
                          schedule="cosine", min_lr_ratio=0.1, adam_beta2=0.99),
        eval=EvalConfig(every=0, batch_size=64), checkpoint=CheckpointConfig(every=0, keep_last=1),
        log=LogConfig(every=20, progress=False))
    metrics = reward.run(cfg)
    print(f"prm: held-out step accuracy {metrics['eval/step_accuracy']:.3f}, first-error accuracy "
          f"{metrics['eval/first_error_accuracy']:.3f}", flush=True)
    return Path(cfg.output_dir)


def eval_stage(args, demo: DemoConfig, model_dir: Path, rm_dir: Path, prm_dir: Path) -> Path:
    from posttrain.eval import run as evaluate

    task_cfg = bench_task(args, demo)
    cfg = EvaluateConfig(model=str(model_dir), reward_model=str(rm_dir), prm=str(prm_dir),
                         output_dir=str(Path(demo.output_dir) / "eval"), seed=0, task=task_cfg,
                         search=SearchConfig(max_new_tokens=eval_config(demo).max_new_tokens))
    evaluate.run(cfg)
    return Path(cfg.output_dir) / "results.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench_search")
    parser.add_argument("--reuse", action="store_true", help="keep every stage whose output is already in --out")
    parser.add_argument("--task", choices=["arith", "sums"], default="arith")
    parser.add_argument("--sft-steps", type=int, help="default: 600 (arith), 2000 (sums)")
    parser.add_argument("--pair-problems", type=int, help="default: 4096 (arith), 8192 (sums)")
    parser.add_argument("--task-pairs", type=int, help="the task's own preference rows added to the RM's "
                        "training pairs; default: 0 (arith), 64000 (sums: a term swapped for another)")
    parser.add_argument("--rm-steps", type=int, help="default: 400 (arith), 5000 (sums)")
    parser.add_argument("--prm-steps", type=int, default=600)
    parser.add_argument("--prm-lr", type=float, default=3e-4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per stage")
    args = parser.parse_args()
    for name, value in TASK_DEFAULTS[args.task].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    demo = DemoConfig(output_dir=args.out, seed=0)
    out = Path(args.out)
    t0 = time.perf_counter()

    def reused(path: Path) -> bool:
        if args.reuse and path.exists():
            print(f"reusing {path}", flush=True)
            return True
        return False

    sft_dir = out / "sft" / "final"
    if not reused(sft_dir):
        sft_dir = sft_stage(args, demo)
    if not reused(out / "pairs" / "eval.jsonl"):
        pairs_stage(args, demo, sft_dir, out / "pairs")
    rm_dir = out / "rm"
    if not reused(rm_dir / "final"):
        rm_dir = rm_stage(args, demo, sft_dir, out / "pairs")
    prm_dir = out / "prm"
    if not reused(prm_dir / "final"):
        prm_dir = prm_stage(args, demo, sft_dir)
    table = eval_stage(args, demo, sft_dir, rm_dir, prm_dir)  # posttrain eval prints the table
    print(f"table in {table}")
    print(f"runtime: {time.perf_counter() - t0:.0f} s ({args.threads} torch thread(s) per stage)")


if __name__ == "__main__":
    main()
