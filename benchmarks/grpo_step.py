#!/usr/bin/env python
"""GRPO step time: posttrain's `posttrain rl` loop (grpo preset) against TRL's `GRPOTrainer`, same model and batch.

    python benchmarks/grpo_step.py                           # tiny model (SFT first), 20 steps, 8 prompts × 8
    python benchmarks/grpo_step.py --steps 3 --rounds 1      # a quick smoke run
    python benchmarks/grpo_step.py --beta 0.04               # with the KL term (a reference model in both)
    python benchmarks/grpo_step.py --hidden-size 256 --layers 4   # a larger model built from the tiny config
    python benchmarks/grpo_step.py --model smollm2-135m-instruct --task word --beta 0.04 --micro-batch 16 \
        --steps 5 --rounds 1 --warmup 0                      # a real instruct model on word problems

What is compared: one on-policy GRPO step — generate --prompts × --generations completions (sampling at
temperature 1.0 from the full distribution: no top-k/top-p, at most --max-new-tokens each, stopping at eos),
score each with the arith task's verifier, group-normalized advantages (mean and sample std of the prompt's
group), then ONE optimizer update over all the step's completions (PPO-clip loss with ε 0.2, each completion's
token mean then the mean over completions — posttrain's `seq_mean_token_mean` = TRL's loss_type "grpo";
micro-batches of --micro-batch completions, accumulated). Every row: same model directory, fp32, sdpa attention,
AdamW lr 1e-6 / betas (0.9, 0.99) / no weight decay, grad-norm clip 1.0, cosine schedule to 0.1·lr, no warmup,
no gradient checkpointing, no evaluation, no saving during the run, no progress bar, no completion logging.
With --beta 0 (the default, and TRL's) neither loads a reference model; with --beta > 0 both add β·k3 to the loss
(posttrain kl.where=loss, kl.estimator=k3; TRL's KL term, whose importance weight is 1 on-policy) and run the
frozen reference over every completion before the update.

    ours          posttrain.train.rl.run, algo grpo: the built-in engine (engine.py: DynamicCache, finished rows
                  leave the batch) generates all prompts × generations samples in one batch
                  (rollout.batch_size = prompts × generations); π_old is the sampler's own log-probs (temperature
                  1, unprocessed: no extra forward); the update packs each micro-batch's prompt+completion
                  sequences into rows (exact) and computes the head only at completion positions; completions
                  whose advantage is 0 (every group whose rewards are all equal) are skipped in the update when
                  nothing else (KL) needs them — the gradient is the same (they contribute exactly 0)
    ours-vllm     (not run by default) the same with rollout.engine=vllm: vLLM in the trainer's process, the
                  weights synced into it before every rollout (inside the timed window), rl.correction=tis
    trl-vllm      (not run by default) GRPOTrainer with use_vllm=True, vllm_mode="colocate" (its own weight sync
                  and truncated importance sampling) — benchmarks/gpu.sh runs both vLLM rows on a GPU
    ours-compile  (not run by default) the same with rollout.compile=true (static KV cache, torch.compile'd
                  decode step). Not a fair row yet: the static cache is sized to the step's longest prompt +
                  max new tokens and compacted to the live rows, so a step whose longest prompt or compacted batch
                  size is new recompiles inside the timed window (seen: 11 s/step against 0.5 s eager)
    trl           trl.GRPOTrainer, use_vllm=False: transformers' `model.generate` on the left-padded batch of all
                  prompts × generations (generation_batch_size = per_device_train_batch_size × gradient
                  accumulation, steps_per_generation = gradient accumulation, num_iterations 1: exactly one
                  optimizer step per generation batch and no π_old forward — TRL uses the detached current
                  log-probs), rows right-padded to the longest completion in the update, log-probs through
                  its fused LM-head path (`fused_lm_head=True`, no full logits); entropy is computed in both
                  (both log it)

--task word: the `word` task's problems (levels 1 and 3, where a small instruct model is right often enough for
groups to have mixed rewards) with its verifier, for pretrained instruct models, which need no warm start.

Data: by default --steps × --prompts problems of the arith task (max_digits 3, '+', written-out steps: the
verifier reads the number after "answer:"), given to both as conversational prompts {"prompt": [{"role": "user", "content":
"47+85="}], "answer": "132"}: posttrain reads them from a jsonl file (data.train_path; eval.task_accuracy=false,
so no held-out problems and no evaluation), TRL gets the same list as a `datasets.Dataset`. Both render the chat
template with the generation prompt and generate from the same prompt token ids (checked on every prompt of step
1: TRL's `_tokenize_prompts` against posttrain's `format_prompt`), decode with skip_special_tokens and score with
the same function, `ArithTask.score(prompt, completion, answer=…)` — posttrain through reward.verifier, TRL
through a reward function that calls it on each completion's text. Prompt order is each tool's own shuffle, and
the sampled completions differ (different random streams), so lengths and rewards differ step by step; their
means over the window are printed to check the two do the same work.

Model: the embedded tiny model starts from random weights, whose completions never earn a reward — every group
would then be all-zero, posttrain would skip the whole update and the comparison would time rollouts only. So by
default the model is first fine-tuned on the task (posttrain sft, the demo's recipe: --sft-steps steps of 32
examples, lr 3e-3; outside every timed window, once per invocation) and both tools start from that checkpoint;
its samples at temperature 1 are right often enough that most groups have mixed rewards (the `zero-var` column:
fraction of groups with all-equal rewards; `upd%`: completions that went through posttrain's update).
--sft-steps 0 times the given model as it is.

How it measures (the same for every row):
  * time: a wall-clock stamp (time.perf_counter) at the end of every optimizer step — for posttrain by wrapping
    `update` as imported into posttrain.train.rl (called once per step; stamp taken when it returns: forward,
    backward, clip, optimizer step done); for TRL in a `TrainerCallback.on_step_end`. The timed window runs from
    the end of step 1 to the end of step N, i.e. N-1 whole steps: rollout (generation, decoding, scoring),
    advantages, reference log-probs (--beta > 0), forward/backward of every micro-batch, optimizer step,
    scheduler, per-step metrics. Model loading, the trainer construction, step 1 (first-call warmup, compile) and
    the final save lie outside the window. s/step = window seconds ÷ (N-1).
  * rollout: the part of each step spent generating, decoding and scoring — posttrain: `rollouts.collect`; TRL:
    `GRPOTrainer._generate` (prompt tokenization, `generate`, decoding) + `_calculate_rewards`. update = s/step −
    rollout: advantages, reference and policy forwards, backward, optimizer and bookkeeping.
  * gen tok/step: completion tokens generated per step (eos included), averaged over steps 2..N; ms/tok is
    s/step ÷ that — a per-token view for when sampling made one tool's completions longer than the other's.
  * reward: the mean verifier reward over steps 2..N.
  * ratio = s/step of the row ÷ s/step of `ours` (> 1: posttrain faster); the same per generated token is
    printed below the table.
  * Before the timed runs every variant runs once for --warmup steps (discarded); then the variants run --rounds
    times (default 2), alternating (round 2 in reverse order, to cancel drift), and the best s/step of each
    variant is reported — the least disturbed run on a shared machine. --profile then runs each variant once
    more under cProfile (enabled for steps 2..N only) and prints where the time goes.

Caveats:
  * At --beta 0 posttrain's update skips the completions whose advantage is 0 and TRL's does not, so the update
    column compares different amounts of work by design (the gradient is the same); how much is skipped depends on
    the model (`zero-var`, `upd%`) and a note says it. --beta > 0 makes every completion needed in both (the KL
    term) and gives the like-for-like update; report both.
  * The two tools sample different completions, so tokens generated per step differ by chance; compare the
    per-token ratio too when `gen tok` differs, or raise --steps.
  * posttrain skips the whole optimizer step (AdamW included) when every group of a step has equal rewards; TRL
    still steps (moving the weights by AdamW's momentum). Rare with the warm start.

torch runs with --threads intra-op threads for both tools (torch.set_num_threads). On a shared 2-vCPU machine a
2-thread run was seen to slow down 10-80x while another job held a CPU; a warning is printed when the timed runs of
one variant differ by more than 25% — rerun then. With a CUDA device both tools run on it (posttrain picks it
itself; TRL gets use_cpu=False).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # importing sft_throughput also sets the offline env
from dpo_throughput import wrapped
from sft_throughput import (add_shared_arguments, check_shared_arguments, prepare_model, quiet_libraries, quietly,
                            run_rounds, trl_config, versions, warn_if_noisy, window)

OURS_VARIANTS = {"ours": {"engine": "hf"}, "ours-compile": {"engine": "hf", "compile": True},  # RolloutConfig fields
                 "ours-vllm": {"engine": "vllm"}}  # vLLM colocated, synced before every rollout
TRL_VARIANTS = {"trl": {},  # name -> GRPOConfig fields that differ from the shared ones
                "trl-vllm": {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}}
DEFAULT_VARIANTS = "ours,trl"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20, help="GRPO steps per timed run (window = steps 2..N)")
    p.add_argument("--prompts", type=int, default=8, help="prompts per step (posttrain rl.prompts_per_step)")
    p.add_argument("--generations", type=int, default=8, help="completions per prompt (rl.generations; TRL "
                                                                "num_generations)")
    p.add_argument("--max-new-tokens", type=int, default=64,
                   help="completion limit (posttrain sampling.max_new_tokens, TRL max_completion_length)")
    p.add_argument("--micro-batch", type=int, default=0,
                   help="completions per forward/backward (posttrain train.micro_batch_size, TRL "
                        "per_device_train_batch_size); 0: all of the step's completions in one")
    p.add_argument("--lr", type=float, default=1e-6, help="peak learning rate")
    p.add_argument("--beta", type=float, default=0.0, help="KL coefficient (0: no reference model in either)")
    p.add_argument("--sft-steps", type=int, default=None,
                   help="first fine-tune the model on the task for this many steps (the demo's SFT recipe), so "
                        "completions earn rewards; 0: use the model as it is (default: 300 for arith, 0 for word)")
    p.add_argument("--task", choices=["arith", "word"], default="arith",
                   help="the prompts and verifier: arith (the tiny model's task) or word (instruct models)")
    p.add_argument("--rows", type=int, default=0, help="prompt rows; 0: steps × prompts (no repeats)")
    p.add_argument("--profile", action="store_true", help="after the timed rounds, run each variant once more under "
                                                         "cProfile (steps 2..N) and print the top functions")
    add_shared_arguments(p, [*OURS_VARIANTS, *TRL_VARIANTS], DEFAULT_VARIANTS)
    p.set_defaults(warmup=3)
    args = p.parse_args(argv)
    check_shared_arguments(p, args, [*OURS_VARIANTS, *TRL_VARIANTS])
    args.samples = args.prompts * args.generations
    args.micro = args.micro_batch or args.samples
    args.batch_size, args.max_length = args.micro, None  # what trl_config reads (GRPOConfig has no max_length)
    if args.generations < 2:
        p.error("--generations must be at least 2 (a group baseline needs two completions; TRL refuses fewer)")
    if args.samples % args.micro:
        p.error(f"--micro-batch {args.micro} must divide the {args.samples} completions of a step")
    if args.sft_steps is None:
        args.sft_steps = 300 if args.task == "arith" else 0
    if args.max_new_tokens < 1 or args.sft_steps < 0:
        p.error("--max-new-tokens must be ≥ 1 and --sft-steps ≥ 0")
    if args.task == "word" and args.sft_steps:
        p.error("--sft-steps is the arith warm start; with --task word use --sft-steps 0 (an instruct model)")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Setup: model (optionally fine-tuned on the task first) and prompts, shared by both tools
# ---------------------------------------------------------------------------------------------------------------------

def task_config(args):
    from posttrain import config as C
    if args.task == "word":
        return C.TaskConfig(name="word", levels=[1, 3])
    return C.TaskConfig(name="arith", max_digits=args.max_digits, ops="+", steps=True)


def bench_task(args):
    from posttrain import tasks
    return tasks.from_config(task_config(args))


def prepare_prompts(args) -> list[dict]:
    """The task's RL rows in conversational form: {"prompt": [user turn], "answer": "132"}."""
    n = args.rows or args.steps * args.prompts
    return [{"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
            for r in bench_task(args).rows("train", n, seed=args.seed)]


def warm_start(args, model_dir: str, workdir: Path) -> str:
    """Fine-tune the model on the task's written-out solutions (the demo's SFT stage) → the new model directory."""
    from posttrain import config as C
    from posttrain.train import sft

    cfg = C.SFTConfig(
        output_dir=str(workdir / "sft"), overwrite=True, seed=args.seed, threads=args.threads,
        model=C.ModelConfig(name_or_path=model_dir, attn_implementation="sdpa"),
        task=C.TaskConfig(name="arith", max_digits=args.max_digits, ops="+", steps=True, num_train=50_000),
        data=C.DataConfig(max_length=128),
        train=C.TrainConfig(lr=3e-3, max_steps=args.sft_steps, micro_batch_size=32, warmup_steps=30,
                            schedule="cosine", min_lr_ratio=0.05, weight_decay=0.01),
        eval=C.EvalConfig(every=0, task_accuracy=False),
        checkpoint=C.CheckpointConfig(every=0, keep_last=1),
        log=C.LogConfig(every=max(1, args.sft_steps), progress=False),
    )
    C.validate(cfg)
    with quietly(args.verbose):
        sft.run(cfg)
    return str(workdir / "sft" / "final")


def check_prompt_ids(tokenizer, prompts: list, prompt_ids: list[list[int]], who: str) -> None:
    """Every prompt was generated from the ids posttrain's `format_prompt` gives it (chat template + generation
    prompt), so both tools continue from the same tokens."""
    from posttrain.rollout import format_prompt

    for prompt, ids in zip(prompts, prompt_ids, strict=True):
        expected = format_prompt(tokenizer, prompt, True)
        if list(ids) != expected:
            raise RuntimeError(f"{who} generated from other prompt ids than posttrain's format_prompt: {prompt!r} → "
                               f"{list(ids)} vs {expected}")


# ---------------------------------------------------------------------------------------------------------------------
# One run of each tool. Each returns {"steps", "seconds", "tokens"} over the window end(step 1) → end(step N), plus
# "rollout" (seconds of it spent generating and scoring), "reward" (mean), "zero_var" (fraction of groups whose
# rewards are all equal) and "updated" (fraction of completions that went through the update).
# ---------------------------------------------------------------------------------------------------------------------

def summarize(marks: list[tuple[float, int]], per_step: list[dict], steps: int) -> dict:
    if len(per_step) != steps:
        raise RuntimeError(f"expected {steps} rollouts, saw {len(per_step)} (has the training loop changed?)")
    timed = per_step[1:]
    n = max(1, len(timed))
    return {**window(marks, steps), "rollout": sum(s["rollout"] for s in timed),
            "reward": sum(s["reward"] for s in timed) / n, "zero_var": sum(s["zero_var"] for s in timed) / n,
            "updated": sum(s["updated"] for s in timed) / n}


def zero_variance_fraction(rewards: torch.Tensor, generations: int) -> float:
    groups = rewards.reshape(-1, generations)
    return (groups == groups[:, :1]).all(-1).float().mean().item()


def run_ours(args, model_dir: str, prompts: list[dict], rollout: dict, steps: int, out_dir: Path,
             profiler: cProfile.Profile | None = None) -> dict:
    from posttrain import config as C
    from posttrain.train import rl, rollouts

    out_dir.mkdir(parents=True, exist_ok=True)
    data_path = out_dir.with_name(out_dir.name + ".jsonl")
    data_path.write_text("".join(json.dumps(r) + "\n" for r in prompts))
    cfg = C.RLConfig(
        output_dir=str(out_dir), overwrite=True, seed=args.seed, threads=args.threads,
        algo=C.AlgoConfig(name="grpo", eps_low=0.2, eps_high=0.2, grpo_std="sample"),
        kl=C.KLSection(where="loss", estimator="k3", coef=args.beta),  # coef 0: no reference model
        rl=C.RLBatchConfig(prompts_per_step=args.prompts, generations=args.generations, mini_batch_size=0,
                           update_epochs=1),
        reward=C.RLRewardConfig(verifier=True),
        sampling=C.SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens),
        rollout=C.RolloutConfig(**{"engine": "hf", "batch_size": args.samples, **rollout}),
        model=C.ModelConfig(name_or_path=model_dir, attn_implementation="sdpa"),
        task=task_config(args),
        data=C.DataConfig(train_path=str(data_path)),
        train=C.TrainConfig(lr=args.lr, max_steps=steps, micro_batch_size=args.micro, grad_accum=1,
                            precision="fp32", schedule="cosine", warmup_steps=0, weight_decay=0.0,
                            adam_beta1=0.9, adam_beta2=0.99, max_grad_norm=1.0, min_lr_ratio=0.1),
        eval=C.EvalConfig(every=0, task_accuracy=False),  # no held-out problems: evaluate() returns at once
        checkpoint=C.CheckpointConfig(every=0, keep_last=1),
        log=C.LogConfig(every=steps, progress=False),  # like TRL's logging: metrics computed each step, written rarely
    )
    C.validate(cfg)

    marks: list[tuple[float, int]] = []
    per_step: list[dict] = []
    tokenizers = []

    def time_collect(original):  # rollouts.collect: generate, decode, score one step's groups
        def collect(cfg, engine, tokenizer, data, *a, **kw):
            t0 = time.perf_counter()
            out = original(cfg, engine, tokenizer, data, *a, **kw)
            seconds = time.perf_counter() - t0
            ro = out[0]
            if not per_step:
                check_prompt_ids(tokenizer, [r["prompt"] for r in ro.rows], ro.prompt_ids, "posttrain")
                tokenizers.append(tokenizer)
            per_step.append({"rollout": seconds, "tokens": sum(map(len, ro.completion_ids)),
                             "reward": ro.rewards.mean().item(),
                             "zero_var": zero_variance_fraction(ro.rewards, args.generations)})
            return out
        return collect

    def stamp(original):  # rl.update: the step's optimizer update(s), called once per step
        def update(*a, **kw):
            metrics = original(*a, **kw)
            marks.append((time.perf_counter(), per_step[-1]["tokens"]))
            per_step[-1]["updated"] = 1 - metrics.get("skipped_samples", 0) / args.samples
            if profiler is not None and len(marks) in (1, steps):  # on for steps 2..N only (not the final save)
                profiler.enable() if len(marks) == 1 else profiler.disable()
            return metrics
        return update

    try:
        with wrapped(rollouts, "collect", time_collect), wrapped(rl, "update", stamp):
            rl.run(cfg)
    finally:
        if profiler is not None:
            profiler.disable()
    return summarize(marks, per_step, steps)


def run_trl(args, model_dir: str, prompts: list[dict], overrides: dict, steps: int, out_dir: Path,
            profiler: cProfile.Profile | None = None) -> dict:
    import datasets
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    torch.set_num_threads(args.threads)
    own = dict(num_generations=args.generations, max_completion_length=args.max_new_tokens, temperature=1.0,
               top_p=1.0, top_k=0, min_p=None, repetition_penalty=1.0, beta=args.beta, num_iterations=1,
               epsilon=0.2, epsilon_high=None, loss_type="grpo", scale_rewards="group",
               importance_sampling_level="token", mask_truncated_completions=False, top_entropy_quantile=1.0,
               entropy_coef=0.0, use_vllm=False, use_transformers_continuous_batching=False, log_completions=False,
               disable_dropout=False, cast_lm_head_to_fp32=False, shuffle_dataset=True, eval_on_start=False,
               generation_batch_size=None, steps_per_generation=None)  # derived: one generation per optimizer step
    shared = dict(per_device_train_batch_size=args.micro, gradient_accumulation_steps=args.samples // args.micro,
                  use_cpu=not torch.cuda.is_available())
    with contextlib.redirect_stderr(io.StringIO()) as notes:  # GRPOConfig has no max_length/dataset_num_proc
        grpo_config = trl_config(trl.GRPOConfig, args, out_dir, steps, own, {**shared, **overrides},
                                 required=tuple(own))
    unexpected = [line for line in notes.getvalue().splitlines()
                  if line.strip() and "['dataset_num_proc', 'max_length']" not in line]
    if unexpected:
        print("\n".join(unexpected), file=sys.stderr)

    task = bench_task(args)

    def verifier(prompts, completions, answer, **kwargs) -> list[float | None]:
        return [task.score(p, c[0]["content"] if isinstance(c, list) else c, answer=a)
                for p, c, a in zip(prompts, completions, answer, strict=True)]

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    marks: list[tuple[float, int]] = []
    per_step: list[dict] = []
    current = {"rollout": 0.0, "tokens": 0}  # the step in progress

    class Trainer(trl.GRPOTrainer):
        def _generate(self, prompts):  # tokenize the prompts, model.generate, decode
            t0 = time.perf_counter()
            out = super()._generate(prompts)
            current["rollout"] += time.perf_counter() - t0
            current["tokens"] += sum(map(len, out[1]))
            if not per_step:
                check_prompt_ids(tokenizer, prompts, out[0], "TRL")
            return out

        def _calculate_rewards(self, inputs, prompts, *a, **kw):  # the reward function(s)
            t0 = time.perf_counter()
            rewards = super()._calculate_rewards(inputs, prompts, *a, **kw)
            current["rollout"] += time.perf_counter() - t0
            total = rewards.nansum(dim=1)
            per_step.append({"reward": total.mean().item(), "zero_var": zero_variance_fraction(total, args.generations),
                             "updated": 1.0})  # TRL runs every completion through the update
            return rewards

    class Stamp(TrainerCallback):
        def on_step_end(self, *a, **kw):
            marks.append((time.perf_counter(), current["tokens"]))
            per_step[-1].update(current)
            current.update(rollout=0.0, tokens=0)
            if profiler is not None and len(marks) in (1, steps):  # on for steps 2..N only
                profiler.enable() if len(marks) == 1 else profiler.disable()

    trainer = Trainer(model=model, reward_funcs=[verifier], args=grpo_config,
                      train_dataset=datasets.Dataset.from_list(prompts), processing_class=tokenizer,
                      callbacks=[Stamp()])
    a = trainer.args
    if (a.gradient_checkpointing or a.bf16 or a.generation_batch_size != args.samples or a.num_iterations != 1
            or a.steps_per_generation != a.gradient_accumulation_steps or a.log_completions
            or trainer.use_vllm != bool(overrides.get("use_vllm"))
            or (trainer.ref_model is None) != (args.beta == 0)):
        raise RuntimeError("TRL run is not fp32 on-policy GRPO with one optimizer step per generation batch of "
                           f"{args.samples} completions (generation_batch_size {a.generation_batch_size}, "
                           f"steps_per_generation {a.steps_per_generation}, accumulation "
                           f"{a.gradient_accumulation_steps}), a reference model iff beta > 0, vLLM only in "
                           "trl-vllm, no logging")
    try:
        trainer.train()
    finally:
        if profiler is not None:
            profiler.disable()
    return summarize(marks, per_step, steps)


# ---------------------------------------------------------------------------------------------------------------------

def run_variant(name: str, args, model_dir: str, prompts: list[dict], steps: int, workdir: Path,
                profiler: cProfile.Profile | None = None) -> dict:
    out_dir = workdir / f"run-{name}"
    with quietly(args.verbose):
        if name in OURS_VARIANTS:
            return run_ours(args, model_dir, prompts, OURS_VARIANTS[name], steps, out_dir, profiler)
        return run_trl(args, model_dir, prompts, TRL_VARIANTS[name], steps, out_dir, profiler)


def s_per_step(res: dict) -> float:
    return res["seconds"] / res["steps"]


def describe(res: dict) -> str:
    n = res["steps"]
    return (f"{s_per_step(res):7.3f} s/step (rollout {res['rollout'] / n:6.3f})  {res['tokens'] / n:6.0f} gen "
            f"tok/step  reward {res['reward']:.2f}  zero-var {res['zero_var']:.2f}  upd {res['updated']:.0%}")


def print_profile(name: str, profiler: cProfile.Profile, top: int = 25) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out).strip_dirs()
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    print(f"\n---- cProfile of {name}, steps 2..N (tottime, then cumulative) ----")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    quiet_libraries(args.verbose)

    print("command:", shlex.join([sys.executable, *(sys.argv if argv is None else [sys.argv[0], *argv])]))
    print("versions:", versions())
    with tempfile.TemporaryDirectory(prefix="grpo-step-") as tmp:
        workdir = Path(tmp)
        model_dir, model_desc = prepare_model(args, workdir)
        print(f"model: {model_desc}")
        if args.sft_steps:
            t0 = time.perf_counter()
            model_dir = warm_start(args, model_dir, workdir)
            print(f"warm start: {args.sft_steps} SFT steps on the task ({time.perf_counter() - t0:.0f} s, untimed)")
        prompts = prepare_prompts(args)
        print(f"data: {len(prompts)} {args.task} prompts; {args.prompts} prompts × {args.generations} generations = "
              f"{args.samples} completions per step, ≤ {args.max_new_tokens} new tokens, micro-batch {args.micro}, "
              f"beta {args.beta}, lr {args.lr:g}; {args.steps} steps (timed: steps 2..{args.steps}), "
              f"threads {args.threads}, cpu count {os.cpu_count()}")

        def run_one(name: str, steps: int) -> dict:
            run_prompts = prompts if args.rows else prompts[:steps * args.prompts]
            return run_variant(name, args, model_dir, run_prompts, steps, workdir)

        results, failed = run_rounds(args, run_one, describe, width=12)

        profiles = {}
        if args.profile:
            for name in args.variant_list:
                if name not in failed:
                    profiles[name] = cProfile.Profile()
                    run_variant(name, args, model_dir, prompts[:args.steps * args.prompts] if not args.rows
                                else prompts, args.steps, workdir, profiles[name])

    best = {v: min(rs, key=s_per_step) for v, rs in results.items() if rs}
    print()
    print(f"best of {args.rounds} (s/step = seconds per GRPO step: rollout + scoring + update; rollout = generation, "
          f"decoding, rewards; ratio = row s/step ÷ ours s/step, > 1: posttrain faster)")
    print(f"{'tool':13s} {'steps':>6s} {'s/step':>8s} {'rollout':>8s} {'update':>8s} {'gen tok':>8s} "
          f"{'ms/tok':>7s} {'reward':>7s} {'zero-var':>8s} {'upd%':>5s} {'ratio':>7s}")
    for v in args.variant_list:
        if v in failed:
            print(f"{v:13s} failed: {failed[v]}")
            continue
        b, n = best[v], best[v]["steps"]
        ratio = f"{s_per_step(b) / s_per_step(best['ours']):7.2f}" if "ours" in best else f"{'-':>7s}"
        print(f"{v:13s} {n:6d} {s_per_step(b):8.3f} {b['rollout'] / n:8.3f} {(b['seconds'] - b['rollout']) / n:8.3f} "
              f"{b['tokens'] / n:8.0f} {1000 * b['seconds'] / max(1, b['tokens']):7.2f} {b['reward']:7.3f} "
              f"{b['zero_var']:8.2f} {b['updated']:5.0%} {ratio}")
    if "ours" in best and "trl" in best:
        o, t = best["ours"], best["trl"]
        per_tok = (t["seconds"] / max(1, t["tokens"])) / (o["seconds"] / max(1, o["tokens"]))
        print(f"ratio TRL/ours: {s_per_step(t) / s_per_step(o):.2f} per step (target ≥ 2), {per_tok:.2f} per "
              f"generated token; rollout {t['rollout'] / max(1e-9, o['rollout']):.2f}, update "
              f"{(t['seconds'] - t['rollout']) / max(1e-9, o['seconds'] - o['rollout']):.2f}")
        if abs(t["tokens"] / o["tokens"] - 1) > 0.1:
            print(f"note: TRL generated {t['tokens'] / o['tokens'] - 1:+.0%} tokens per step against ours (sampling "
                  "differs): compare the per-token ratio too, or raise --steps")
    skipped = {v: 1 - best[v]["updated"] for v in best if v in OURS_VARIANTS and best[v]["updated"] < 1}
    if skipped:
        print(f"{'warning' if max(skipped.values()) > 0.5 else 'note'}: posttrain's update skipped "
              + ", ".join(f"{s:.0%} ({v})" for v, s in skipped.items()) + " of the completions — those with "
              "advantage 0 (groups whose rewards are all equal), which add nothing to the gradient; TRL runs every "
              "completion through its update. For a like-for-like update use --beta > 0 (the KL term needs every "
              "completion, in both)" + (", or raise --sft-steps" if max(skipped.values()) > 0.5 else ""))
    warn_if_noisy(results, lambda x: 1 / s_per_step(x))
    for name, profiler in profiles.items():
        print_profile(name, profiler)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
