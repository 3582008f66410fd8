"""Reward modelling (`posttrain rm`): Bradley–Terry on preference pairs, the loop top to bottom.

    model   the causal-LM backbone with a scalar head on the last non-pad token
            (AutoModelForSequenceClassification, num_labels = 1), so `final/` loads in plain transformers; read
            by rewards.model.scores, the function RL's ModelReward scores completions with
    step    G pairs; chosen and rejected responses in one padded forward → scores r_c, r_r; per pair
            −log σ(r_c − r_r − margin) (+ c·(r_c + r_r)² with reward centering); the mean over the G pairs
            of all ranks (sum ÷ G per micro-batch: accumulation is exact)
    log     loss, accuracy (r_c > r_r), margin (mean r_c − r_r), rewards/chosen, rewards/rejected
    eval    the same on held-out pairs (eval/…): held-out pair accuracy is the RM's headline number

reward.mode=prm trains a process reward model instead (a score per reasoning step): train/process_reward.py.
"""

from __future__ import annotations

import time

import torch

from posttrain import distributed
from posttrain.algos.reward import bradley_terry, reward_centering
from posttrain.config import RMConfig
from posttrain.models.loading import load_model, load_tokenizer
from posttrain.rewards.model import scores
from posttrain.train import process_reward
from posttrain.train.common import (batch_indices, batch_plan, optimizer_step,
                                    prepare_run_dir, save_checkpoint, start_training, total_steps)
from posttrain.train.loop import StepEnd
from posttrain.train.pairs import load_preference_data
from posttrain.train.preflight import check_inputs

METRICS = ("loss", "accuracy", "margin", "rewards/chosen", "rewards/rejected")


def run(cfg: RMConfig) -> dict:
    if cfg.reward.mode == "prm":  # a score per reasoning step: its own loop, in process_reward.py
        return process_reward.run(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = distributed.init()
    check_inputs(cfg)  # model path, attention kernel, trackers; train.lr and data.max_length from the model

    # ---- setup ------------------------------------------------------------------------------------------------------
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    data = load_preference_data(cfg, tokenizer)  # the same pairs (and drop policy) as `posttrain dpo`
    train_pairs, eval_pairs, report = data.train, data.eval, data.report
    micro, accum, global_batch = batch_plan(cfg.train, world.world_size)
    num_steps = total_steps(cfg.train, len(train_pairs), global_batch)
    distributed.check_strategy(cfg.train, world)
    run_dir, resume_from = prepare_run_dir(cfg)

    model = load_model(cfg.model, cfg.lora, seed=cfg.seed, head="score",
                       weights_dir=resume_from / "model" if resume_from else None,
                       disable_dropout=cfg.train.disable_dropout)
    model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last token that is not padding
    model, optimizer, scheduler, start_step, tracker, guard = start_training(
        cfg, model, world, run_dir, resume_from, num_steps, (micro, accum, global_batch),
        f"{len(train_pairs)} training pairs{report}", unit="pairs")
    if cfg.eval.at_start and start_step == 0 and eval_pairs:
        tracker.log(0, evaluate(model, eval_pairs, tokenizer, cfg))

    # ---- loop -------------------------------------------------------------------------------------------------------
    end = StepEnd(cfg, num_steps, tracker, guard,
                  save=lambda step: save_checkpoint(run_dir, step, model, optimizer, scheduler, guard, cfg),
                  evaluate=(lambda: evaluate(model, eval_pairs, tokenizer, cfg)) if eval_pairs else None)
    per_rank = micro * accum
    metrics: dict = {}
    for step in range(start_step, num_steps):
        t0 = time.perf_counter()
        indices = batch_indices(step, global_batch, len(train_pairs), cfg.seed)
        mine = indices[world.rank * per_rank:(world.rank + 1) * per_rank]
        totals = torch.zeros(len(METRICS), dtype=torch.float64)
        for i, j in enumerate(range(0, per_rank, micro)):
            with distributed.gradient_sync(model, enabled=j + micro >= per_rank):
                losses, chosen, rejected = pair_losses(model, [train_pairs[k] for k in mine[j:j + micro]], tokenizer,
                                                       cfg)
                (losses.sum() / global_batch * world.world_size).backward()
            totals += pair_sums(losses, chosen, rejected)
        sums = distributed.all_reduce_tensor(totals) / global_batch
        grad_norm = optimizer_step(model, optimizer, cfg, guard, float(sums[0]))
        scheduler.step()
        done = step + 1
        metrics = {**{name: v.item() for name, v in zip(METRICS, sums)}, "grad_norm": grad_norm,
                   "lr": scheduler.get_last_lr()[0], "pairs_per_s": global_batch / (time.perf_counter() - t0),
                   "epoch": done * global_batch / len(train_pairs)}
        end.step(done, metrics)  # skipped_steps, eval, log, checkpoint when due (train/loop.py)

    # ---- outputs ----------------------------------------------------------------------------------------------------
    return end.finish(metrics, run_dir, model, tokenizer, world.is_main, shown=("loss", "accuracy"),
                      what="reward model")


# ---- the algorithm ---------------------------------------------------------------------------------------------------

def pair_losses(model, pairs: list[dict], tokenizer, cfg: RMConfig):
    """Per-pair loss, chosen scores, rejected scores, each [P]."""
    n = len(pairs)
    r = scores(model, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], tokenizer.pad_token_id,
               cfg.train.precision)
    chosen, rejected = r[:n], r[n:]
    margin = torch.tensor([p["margin"] for p in pairs], device=r.device)
    losses = bradley_terry(chosen, rejected, margin)
    if cfg.reward.center_rewards_coefficient:
        losses = losses + cfg.reward.center_rewards_coefficient * reward_centering(chosen, rejected)
    return losses, chosen, rejected


def pair_sums(losses, chosen, rejected) -> torch.Tensor:
    """Sums over pairs in METRICS order; a tie counts as half right."""
    chosen, rejected = chosen.detach(), rejected.detach()
    right = (chosen > rejected).double() + 0.5 * (chosen == rejected).double()
    values = [losses.detach().sum(), right.sum(), (chosen - rejected).sum(), chosen.sum(), rejected.sum()]
    return torch.stack([v.double().cpu() for v in values])


@torch.no_grad()
def evaluate(model, eval_pairs: list[dict], tokenizer, cfg: RMConfig) -> dict:
    model.eval()
    totals = torch.zeros(len(METRICS), dtype=torch.float64)
    for start in range(0, len(eval_pairs), cfg.eval.batch_size):
        totals += pair_sums(*pair_losses(model, eval_pairs[start:start + cfg.eval.batch_size], tokenizer, cfg))
    model.train()
    return {f"eval/{name}": (total / len(eval_pairs)).item() for name, total in zip(METRICS, totals)}
