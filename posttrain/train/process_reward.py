"""Process reward modelling (`posttrain rm reward.mode=prm`): a score for every reasoning step, the loop top to
bottom. Lightman et al. 2023, "Let's Verify Step by Step" (arXiv:2305.20050); Math-Shepherd's soft labels,
Wang et al. 2023 (arXiv:2312.08935).

    data    prompt + completions (the steps) + labels (one per step) — or the task's solutions, half with an
            error, labelled 1 before it and 0 from it on — or (reward.labels=mc) a policy's own solutions labelled
            by Monte-Carlo rollouts (rewards/step_labels.py), sampled into RUN_DIR/prm_data.jsonl; tokenized by
            data/process.py with the step separator after every step
    model   the causal-LM backbone with a scalar head on every token (AutoModelForTokenClassification,
            num_labels = 1), so `final/` loads in plain transformers; the logit z at the token that ends a step
            (its separator) is the step's score, σ(z) = P(the step is correct)
    step    G solutions; per step the binary cross-entropy of z against the label y (algos.reward.prm_step_loss;
            z read by rewards.process.step_logits, as test-time search reads it); the loss is the mean over every
            step of the G solutions of all ranks — each micro-batch's sum is divided by the whole batch's step
            count, known before the first forward, so accumulation is exact
    log     loss, step_accuracy (σ(z) > 0.5 agrees with y ≥ 0.5)
    eval    the same on held-out solutions (eval/…), and eval/first_error_accuracy: the fraction of solutions
            whose first step scored σ(z) ≤ 0.5 is their first step labelled y < 0.5 — or, for a solution with no
            bad step, whose every step scored above 0.5. It is what step-level search needs: where it goes wrong.

Test-time search scores a partial or complete solution with `rewards.step_scores(model, tokenizer, prompt, steps)`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from posttrain import distributed, tasks
from posttrain.algos.reward import prm_step_loss
from posttrain.config import RMConfig
from posttrain.data import load_rows
from posttrain.data.process import build_step_examples
from posttrain.models.loading import load_model, load_tokenizer
from posttrain.rewards import step_labels
from posttrain.rewards.process import step_logits, step_scores  # noqa: F401  (step_scores: importable from here, too)
from posttrain.train.common import (batch_indices, batch_plan, optimizer_step,
                                    prepare_run_dir, save_checkpoint, start_training, total_steps,
                                    train_and_eval_rows)
from posttrain.train.loop import StepEnd
from posttrain.train.preflight import check_inputs

METRICS = ("loss", "step_accuracy")


def run(cfg: RMConfig) -> dict:
    cfg.validate()  # with reward.labels=mc: a setup that can label steps
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = distributed.init()
    check_inputs(cfg)  # model path, attention kernel, trackers; train.lr and data.max_length from the model

    # ---- setup: every check on user input happens before the run directory is touched -----------------------------
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    mc = cfg.reward.labels == "mc"
    data = None if mc else load_step_data(cfg, tokenizer)  # MC labels are sampled into the run directory, below
    micro, accum, global_batch = batch_plan(cfg.train, world.world_size)
    num_steps = 0 if mc else total_steps(cfg.train, len(data.train), global_batch)
    distributed.check_strategy(cfg.train, world)
    run_dir, resume_from = prepare_run_dir(cfg)
    if mc:
        data = load_step_data(cfg, tokenizer, train_rows=step_labels.rows_for_run(cfg, run_dir, world.device))
        num_steps = total_steps(cfg.train, len(data.train), global_batch)

    model = load_model(cfg.model, cfg.lora, seed=cfg.seed, head="token",
                       weights_dir=resume_from / "model" if resume_from else None,
                       disable_dropout=cfg.train.disable_dropout)
    labelled = sum(len(e["step_labels"]) for e in data.train)
    model, optimizer, scheduler, start_step, tracker, guard = start_training(
        cfg, model, world, run_dir, resume_from, num_steps, (micro, accum, global_batch),
        f"{len(data.train)} training solutions, {labelled} labelled steps{data.report}", unit="solutions")
    pad_id = tokenizer.pad_token_id
    if cfg.eval.at_start and start_step == 0 and data.eval:
        tracker.log(0, evaluate(model, data.eval, pad_id, cfg))

    # ---- loop -------------------------------------------------------------------------------------------------------
    end = StepEnd(cfg, num_steps, tracker, guard,
                  save=lambda step: save_checkpoint(run_dir, step, model, optimizer, scheduler, guard, cfg),
                  evaluate=(lambda: evaluate(model, data.eval, pad_id, cfg)) if data.eval else None)
    per_rank = micro * accum
    metrics: dict = {}
    for step in range(start_step, num_steps):
        t0 = time.perf_counter()
        indices = batch_indices(step, global_batch, len(data.train), cfg.seed)
        mine = indices[world.rank * per_rank:(world.rank + 1) * per_rank]
        # every rank knows the whole batch, so the divisor of the step mean needs no communication
        batch_steps = sum(len(data.train[k]["step_labels"]) for k in indices)
        totals = torch.zeros(len(METRICS), dtype=torch.float64)
        for j in range(0, per_rank, micro):
            with distributed.gradient_sync(model, enabled=j + micro >= per_rank):
                logits, labels, _ = step_logits(model, [data.train[k] for k in mine[j:j + micro]], pad_id,
                                                cfg.train.precision)
                losses = prm_step_loss(logits, labels)
                (losses.sum() / batch_steps * world.world_size).backward()  # DDP averages over ranks: × world
            totals += step_sums(losses, logits, labels)
        sums = distributed.all_reduce_tensor(totals) / batch_steps
        grad_norm = optimizer_step(model, optimizer, cfg, guard, float(sums[0]))
        scheduler.step()
        done = step + 1
        metrics = {**{name: v.item() for name, v in zip(METRICS, sums)}, "grad_norm": grad_norm,
                   "lr": scheduler.get_last_lr()[0], "solutions_per_s": global_batch / (time.perf_counter() - t0),
                   "epoch": done * global_batch / len(data.train)}
        end.step(done, metrics)  # skipped_steps, eval, log, checkpoint when due (train/loop.py)

    # ---- outputs ----------------------------------------------------------------------------------------------------
    return end.finish(metrics, run_dir, model, tokenizer, world.is_main, shown=METRICS,
                      what="process reward model")


# ---- the algorithm ---------------------------------------------------------------------------------------------------

def step_sums(losses, logits, labels) -> torch.Tensor:
    """Sums over steps in METRICS order: loss, steps whose verdict (σ(z) > 0.5 ⇔ z > 0) matches y ≥ 0.5."""
    right = (logits.detach() > 0) == (labels >= 0.5)
    return torch.stack([losses.detach().sum().double().cpu(), right.sum().double().cpu()])


def first_errors(bad: torch.Tensor, solution: torch.Tensor, num_solutions: int) -> list[int]:
    """Index of each solution's first step flagged in `bad` [N] (solution [N] says whose step it is); a solution
    with none gets its step count (one past its last step).

    Example: bad [F, T, T, F, F], solution [0, 0, 0, 1, 1] → [1, 2].
    """
    out = []
    for s in range(num_solutions):
        flags = bad[solution == s].tolist()
        out.append(flags.index(True) if True in flags else len(flags))
    return out


@torch.no_grad()
def evaluate(model, examples: list[dict], pad_id: int, cfg: RMConfig) -> dict:
    """eval/loss and eval/step_accuracy (means over held-out steps), eval/first_error_accuracy (over solutions)."""
    model.eval()
    totals = torch.zeros(len(METRICS), dtype=torch.float64)
    found, num_steps = 0, 0
    for start in range(0, len(examples), cfg.eval.batch_size):
        chunk = examples[start:start + cfg.eval.batch_size]
        logits, labels, solution = step_logits(model, chunk, pad_id, cfg.train.precision)
        totals += step_sums(prm_step_loss(logits, labels), logits, labels)
        predicted = first_errors(logits <= 0, solution, len(chunk))
        true = first_errors(labels < 0.5, solution, len(chunk))
        found += sum(p == t for p, t in zip(predicted, true))
        num_steps += len(labels)
    model.train()
    out = {f"eval/{name}": (total / num_steps).item() for name, total in zip(METRICS, totals)}
    return {**out, "eval/first_error_accuracy": found / len(examples)}


# ---- data ------------------------------------------------------------------------------------------------------------

@dataclass
class StepData:
    train: list[dict]
    eval: list[dict]
    report: str  # " (dropped …)" or ""


def load_step_data(cfg: RMConfig, tokenizer, train_rows: list[dict] | None = None) -> StepData:
    """User files when data.train_path / data.eval_path are set, else the task's step-labelled solutions
    (written in its steps format whatever task.steps says: a PRM needs steps). train_rows: training rows labelled
    elsewhere (the MC labels), held out as usual: data.eval_path, else the task's exactly labelled solutions."""
    task = None
    if cfg.data.train_path is None or cfg.data.eval_path is None:
        task = tasks.from_config(cfg.task, steps=True)

    def build(rows):
        return build_step_examples(rows, tokenizer, max_length=cfg.data.max_length, policy=cfg.data.truncation,
                                   separator=cfg.reward.step_separator)

    if train_rows is None:
        train_rows, eval_rows = train_and_eval_rows(cfg, task.process_rows if task else None)
    elif cfg.data.eval_path is not None:
        eval_rows = load_rows(cfg.data.eval_path, columns=cfg.data.columns)
    else:
        eval_rows = task.process_rows("eval", cfg.task.num_eval, cfg.seed)
    train, report = build(train_rows)
    eval_examples = build(eval_rows)[0] if eval_rows is not None else []
    return StepData(train, eval_examples, f" ({report.summary()})" if report.dropped else "")
