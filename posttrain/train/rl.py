"""Online RL (`posttrain rl`): PPO with a critic and the critic-free family, one loop.

An algorithm is a preset (presets.py) naming registered functions; this loop composes them:

    setup       preset expanded → pieces and batch arithmetic checked (plan.rl_plan) → prompts → reward sources →
                run dir → policy; the frozen reference (the starting policy) only when a KL term or the KL
                monitor needs it (new LoRA adapters: the same model with its adapters disabled); the critic only
                for GAE (a value head on the reward model or the policy's backbone)
    rollout     rollouts.collect: prompts_per_step × generations samples from the engine, scored, shaped,
                filtered (DAPO) — on each rank its share, then gathered
    score       no-grad passes: π_old (the sampler's log-probs reused when its distribution is the policy's,
                unless a rollout correction compares the two; recomputed only for the samples that will train
                when the advantages do not depend on it), π_ref (every sample for a KL term; kl.monitor's
                share when it is only logged), the critic's values
    correct     rl.correction (algos/correction.py; tis by default with vLLM): per-token weights π_old / π_sampler,
                truncated or masked, that multiply the policy loss
    advantage   KL in the reward (β·k per token; sequence-level estimators get the sum), then the registered
                estimator with its declared hyperparameters; unscored samples get 0; optional whitening
    update      rl.update_epochs × mini-batches; per micro-batch the registered policy loss per token
                (+ β·k in the loss, − entropy bonus), reduced by aggregate.py with the mini-batch's global
                token and sequence counts, so any micro-batch × accumulation split gives the same gradient;
                samples whose every advantage is 0 contribute nothing and are skipped when nothing else
                (KL or entropy in the loss) needs them; the critic's clipped value loss likewise
    log         rl_diagnostics: rewards, KL, entropy, clipping, ratios, value loss, lengths, … and warnings
    checkpoint  policy, critic, optimizers, scheduler, KL controller, prompt-stream position, RNGs
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from posttrain import checkpoint, distributed, presets
from posttrain.algos import advantages as estimators, correction, kl as kl_algos, policy as policy_losses
from posttrain.algos.aggregate import aggregate
from posttrain.config import LoraConfig, RLConfig
from posttrain.data import collate
from posttrain.errors import ConfigError
from posttrain.eval.accuracy import greedy_accuracy_metrics
from posttrain.models.loading import load_model, load_tokenizer, resolve_model_path
from posttrain.models.logits import autocast, device_of, target_logprobs
from posttrain.train import rl_diagnostics as diagnostics, rollouts
from posttrain.train.common import build_optimizer, optimizer_step, prepare_run_dir, start_training
from posttrain.train.loop import StepEnd
from posttrain.train.plan import (advantage_arguments, correction_arguments, correction_name, loss_arguments,
                                  needs_reference, rl_plan, scores_reference)
from posttrain.train.preflight import check_inputs


def run(cfg: RLConfig) -> dict:
    cfg = presets.expand(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = distributed.init()
    check_inputs(cfg)  # model path, attention kernel, trackers; train.lr and data.max_length from the model

    # ---- setup: every check on user input happens before the run directory is touched -----------------------------
    rl_plan(cfg, world.world_size)  # the pieces and the divisibility, before anything is loaded
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    data = rollouts.load_prompts(cfg, tokenizer)
    plan = rl_plan(cfg, world.world_size, len(data.rows), data.longest_prompt)
    if cfg.rl.prompts_per_step % world.world_size:
        raise ConfigError(f"rl.prompts_per_step = {cfg.rl.prompts_per_step} must be a multiple of the "
                          f"{world.world_size} processes (each generates its share)")
    distributed.check_strategy(cfg.train, world)
    sources = rollouts.build_reward_sources(cfg, data, tokenizer, world.device)
    run_dir, resume_from = prepare_run_dir(cfg)

    model = load_model(cfg.model, cfg.lora, seed=cfg.seed,
                       weights_dir=resume_from / "model" if resume_from else None,
                       disable_dropout=cfg.train.disable_dropout).to(world.device)
    reference = None
    if scores_reference(cfg) and not cfg.lora.r:  # full training, or an adapter continued: a frozen copy of the start
        reference = load_model(cfg.model, LoraConfig(r=0), seed=cfg.seed).to(world.device).eval().requires_grad_(False)
    critic = critic_optimizer = None
    if cfg.algo.critic == "value":
        critic, critic_optimizer = load_critic(cfg, world, resume_from)
    model, optimizer, scheduler, start_step, tracker, guard = start_training(
        cfg, model, world, run_dir, resume_from, plan.steps,
        (plan.micro_batch, plan.accumulation, plan.mini_batch),
        f"{len(data.rows)} prompts{data.report}; {cfg.algo.name}: {plan.prompts} prompts × {plan.generations} "
        f"generations per step, {plan.updates_per_step} update(s) per step", unit="samples per update")
    controller = kl_controller(cfg)
    state = {"cursor": 0}
    if resume_from is not None:
        state = checkpoint_state(resume_from, controller)
    if cfg.eval.at_start and start_step == 0:
        tracker.log(0, evaluate(model, tokenizer, data, cfg))

    # ---- loop -------------------------------------------------------------------------------------------------------
    from posttrain.rewards import UnscorableGuard
    unscorable = UnscorableGuard(cfg.reward.max_unscored_fraction)
    watch = diagnostics.Watch(cfg)
    end = StepEnd(cfg, plan.steps, tracker, guard,
                  save=lambda step: save_checkpoint(run_dir, step, model, critic, optimizer, critic_optimizer,
                                                    scheduler, controller, guard, state, cfg),
                  evaluate=lambda: evaluate(model, tokenizer, data, cfg))
    metrics: dict = {}
    engine = rollouts.rollout_engine(cfg, model, tokenizer, data)
    if not engine.reproducible:
        tracker.write("note: vLLM's CPU build cannot seed a request: a step's samples come from one generator seeded "
                      "by (seed, step), so they repeat (resume included) but change with the batch, e.g. another "
                      "world size (rollout/vllm_engine.py)")
    try:
        for step in range(start_step, plan.steps):
            t0 = time.perf_counter()
            sent = engine.sync(model)  # vLLM: the weights of the last update (at the first step: the start's)
            t_sync = time.perf_counter() - t0
            rollout, state["cursor"] = rollouts.collect(cfg, engine, tokenizer, data, sources, step, state["cursor"],
                                                        unscorable)
            t1 = time.perf_counter()
            batch = prepare(cfg, model, reference, critic, tokenizer, rollout, controller.value)
            metrics = update(cfg, plan, model, optimizer, critic, critic_optimizer, batch, guard, step,
                             controller.value)
            controller.update(batch.kl_per_seq, plan.samples)
            scheduler.step()
            done = step + 1
            metrics.update({**rollout.metrics, **batch.metrics, "kl_coef": controller.value,
                            "lr": scheduler.get_last_lr()[0], "time/rollout": t1 - t0 - t_sync,
                            **({"time/weight_sync": t_sync, "rollout/sync_mb": sent / 2**20} if sent else {}),
                            "time/update": time.perf_counter() - t1,
                            "samples_per_s": plan.samples / (time.perf_counter() - t0)})
            for message in watch.check(done, metrics, rollout):  # reads the step's own metrics, not skipped_steps
                tracker.write(f"warning (step {done}): {message}")
            end.step(done, metrics)  # skipped_steps, eval, log, checkpoint when due (train/loop.py)
    finally:
        engine.close()  # a vLLM server started for the run stops with it
        rollouts.close_sources(sources)

    # ---- outputs ----------------------------------------------------------------------------------------------------
    return end.finish(metrics, run_dir, model, tokenizer, world.is_main, shown=("reward/mean", "kl"))


# ---------------------------------------------------------------------------------------------------------------------
# Scoring tokens: one (packed) forward, outputs scattered back to [samples, completion tokens]
# ---------------------------------------------------------------------------------------------------------------------

def forward_tokens(model, prompt_ids, completion_ids, width: int, cfg: RLConfig, *, entropy: bool = False):
    """log π(token) of every completion token of each sample at the sampling temperature → [b, width]
    (0 past a completion's end), and the policy's entropy at those positions ([b, width] or None), the output
    layer applied train.logits_chunk positions at a time (models/logits.target_logprobs)."""
    device = device_of(model)
    batch = _sample_batch(prompt_ids, completion_ids, device, cfg.data.packing)
    # the policy is the distribution sampled from: softmax(logits / T); the entropy carries a gradient only when
    # the entropy bonus is in the loss, otherwise it is just logged
    out = target_logprobs(model, batch, cfg.train.precision, chunk=cfg.train.logits_chunk,
                          temperature=cfg.sampling.temperature, entropy=entropy,
                          entropy_grad=cfg.algo.entropy_coef > 0)
    found = out.targets != -100
    seq, pos = _completion_positions(batch, out.keep, found, prompt_ids)
    shape = (len(prompt_ids), width)
    logps = torch.zeros(shape, device=device).index_put((seq, pos), out.logps[found])
    ent = None if out.entropy is None else torch.zeros(shape, device=device).index_put((seq, pos), out.entropy[found])
    return logps, ent


def forward_values(critic, prompt_ids, completion_ids, width: int, cfg: RLConfig):
    """The critic's V(s_t) before each completion token → [b, width], and V after the last token → [b] (the
    bootstrap value of a truncated completion)."""
    device = device_of(critic)
    batch = _sample_batch(prompt_ids, completion_ids, device, cfg.data.packing)
    with autocast(cfg.train.precision, device):
        out = critic(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                     position_ids=batch["position_ids"], use_cache=False).logits[..., 0].float()
    keep = torch.arange(batch["input_ids"].shape[1], device=device)
    found = batch["targets"] != -100
    seq, pos = _completion_positions(batch, keep, found, prompt_ids)
    values = torch.zeros(len(prompt_ids), width, device=device).index_put((seq, pos), out[found])
    lengths = torch.tensor([len(p) + len(c) for p, c in zip(prompt_ids, completion_ids)], device=device)
    index = batch["seq_index"].clamp(min=0)
    last = (batch["seq_index"] >= 0) & (batch["position_ids"] == lengths[index] - 1)
    bootstrap = torch.zeros(len(prompt_ids), device=device).index_put((batch["seq_index"][last],), out[last])
    return values, bootstrap


def _sample_batch(prompt_ids, completion_ids, device, packing: bool) -> dict:
    """prompt + completion of each sample, collated (packed or padded), with targets on the completion tokens."""
    examples = [{"input_ids": p + c, "labels": [-100] * len(p) + c} for p, c in zip(prompt_ids, completion_ids)]
    return {k: v.to(device) for k, v in collate(examples, pad_id=0, packing=packing).items()}


def _completion_positions(batch, keep, found, prompt_ids):
    """(sample, completion token) coordinates of the kept positions that have a target: a sample's prompt of
    length p predicts its completion token t at position p − 1 + t."""
    seq = batch["seq_index"][:, keep][found]
    prompt_len = torch.tensor([len(p) for p in prompt_ids], device=seq.device)
    return seq, batch["position_ids"][:, keep][found] - (prompt_len[seq] - 1)


# ---------------------------------------------------------------------------------------------------------------------
# Before the update: π_old, π_ref, values, rewards with KL, advantages
# ---------------------------------------------------------------------------------------------------------------------

class Batch:
    """A step's samples as [B, T] tensors (T = longest completion), ready for the update."""

    def __init__(self, rollout: rollouts.Rollout):
        self.prompt_ids, self.completion_ids = rollout.prompt_ids, rollout.completion_ids
        self.width = max(1, max(map(len, self.completion_ids)))
        self.mask = torch.zeros(len(self.completion_ids), self.width)  # the tokens the loss sees
        for i, ids in enumerate(self.completion_ids):
            self.mask[i, :len(ids)] = 1 if rollout.token_masks is None else torch.tensor(rollout.token_masks[i],
                                                                                         dtype=torch.float)
        self.old_logps = self.ref_logps = self.old_values = self.returns = None
        self.advantages = self.loss_mask = None
        self.weights = None  # rollout correction's per-token weights (None: 1)
        self.kl_per_seq = 0.0
        self.metrics: dict = {}


@torch.no_grad()
def prepare(cfg: RLConfig, model, reference, critic, tokenizer, rollout: rollouts.Rollout, beta: float) -> Batch:
    batch = Batch(rollout)
    B, chunk = len(batch.completion_ids), cfg.train.micro_batch_size

    def over_chunks(fn, rows=None):  # fn(prompts, completions) on train.micro_batch_size samples at a time
        rows = list(range(B)) if rows is None else rows
        parts = [fn([batch.prompt_ids[i] for i in rows[s:s + chunk]],
                    [batch.completion_ids[i] for i in rows[s:s + chunk]]) for s in range(0, len(rows), chunk)]
        return [torch.cat(p).cpu() for p in zip(*parts)]

    was_training = model.training
    model.eval()
    sampler = _sampler_logps(rollout, batch, cfg.sampling)
    corrected = correction_name(cfg) != "none" and sampler is not None
    in_reward = cfg.kl.where == "reward" and needs_reference(cfg)
    adv = rows = None  # rows: the samples π_old is computed for (None: all)
    if sampler is not None and not cfg.rl.recompute_old_logprobs and not corrected:
        batch.old_logps = sampler
    else:
        if trains_only_nonzero_advantages(cfg, critic, in_reward):  # the advantages do not depend on π_old: the
            adv = advantages(cfg, rollout, batch, None, None)      # update reads it only where they are not 0
            rows = sorted({i for i in range(B) if adv[i].abs().sum() > 0} |
                          set(monitored(B, cfg.kl.monitor) if scores_reference(cfg) else []))
        r = rows if rows is not None else slice(None)
        batch.old_logps = torch.zeros_like(batch.mask) if sampler is None else sampler.clone()
        if rows != []:
            batch.old_logps[r], = over_chunks(lambda p, c: forward_tokens(model, p, c, batch.width, cfg)[:1], rows)
        if sampler is not None:
            batch.metrics.update(diagnostics.mismatch(batch.old_logps[r], sampler[r], batch.mask[r]))
    kl_tokens = torch.zeros_like(batch.mask)
    if scores_reference(cfg):
        # the KL term needs every sample; the monitor (no term) only its evenly spaced share
        ref_rows = list(range(B)) if needs_reference(cfg) else monitored(B, cfg.kl.monitor)
        ref_logps, = over_chunks(lambda p, c: (reference_logps(model, reference, p, c, batch.width, cfg),), ref_rows)
        old, mask = batch.old_logps[ref_rows], batch.mask[ref_rows]
        kl = kl_algos.get(cfg.kl.estimator)(old, ref_logps) * mask
        batch.kl_per_seq = (kl_algos.k1(old, ref_logps) * mask).sum(-1).mean().item()
        batch.metrics.update({"kl": kl.sum().item() / mask.sum().clamp(min=1).item(), "kl/seq": batch.kl_per_seq})
        if needs_reference(cfg):
            batch.ref_logps, kl_tokens = ref_logps, kl
    bootstrap = None
    if critic is not None:
        critic.eval()
        batch.old_values, bootstrap = over_chunks(lambda p, c: forward_values(critic, p, c, batch.width, cfg))
        bootstrap = torch.where(rollout.truncated, bootstrap, torch.zeros_like(bootstrap))  # eos: terminal
        critic.train()
    model.train(was_training)

    # ---- algorithm: advantages (with the KL penalty in the reward), correction, normalization --------------------
    if adv is None:
        adv = advantages(cfg, rollout, batch, beta * kl_tokens if in_reward else None, bootstrap)
    batch.loss_mask = batch.mask * (~rollout.truncated).float()[:, None] if cfg.rl.mask_truncated else batch.mask
    if corrected and rows != []:  # the sampler is not the trainer: weigh each token by π_old / π_sampler, or drop it
        r = rows if rows is not None else slice(None)  # the other samples do not train: weight 1
        fix = correction.get(correction_name(cfg))(batch.old_logps[r], sampler[r], batch.mask[r],
                                                   **correction_arguments(cfg))
        keep, batch.weights = batch.mask.clone(), torch.ones_like(batch.mask)
        keep[r], batch.weights[r] = fix.keep, fix.weights
        batch.loss_mask = batch.loss_mask * keep
        batch.metrics.update(correction.metrics(fix, batch.mask[r]))
    if critic is not None:
        batch.returns = estimators.gae_returns(adv, batch.old_values, batch.mask)
    valid = batch.loss_mask * rollout.scored.float()[:, None]
    batch.advantages = estimators.whiten(adv, valid) if cfg.algo.normalize_advantages else adv * valid
    batch.metrics.update(diagnostics.batch_metrics(batch, rollout, sampler is not None))
    return batch


def advantages(cfg: RLConfig, rollout: rollouts.Rollout, batch: Batch, kl_penalty, bootstrap) -> torch.Tensor:
    """The registered estimator on the step's rewards → [B, T]; kl_penalty: β·k per token when the KL is in the
    reward (sequence-level estimators get its sum), else None. Episodes (env.name) also give each token's turn
    and the per-turn rewards; token-level estimators then see each turn's reward where that turn ends."""
    rewards, token_rewards, turn_index, turn_rewards = rollout.rewards, None, None, None
    if rollout.token_turns is not None:  # multi-turn episodes, padded: turn −1, reward 0
        turn_index = torch.full(batch.mask.shape, -1, dtype=torch.long)
        turn_rewards = torch.zeros(len(rollout.turn_rewards), max(1, max(map(len, rollout.turn_rewards))))
        for i, (turns, per_turn) in enumerate(zip(rollout.token_turns, rollout.turn_rewards)):
            turn_index[i, :len(turns)] = torch.tensor(turns, dtype=torch.long)
            turn_rewards[i, :len(per_turn)] = torch.tensor(per_turn)
    if estimators.ADVANTAGES.entry(cfg.algo.advantage).level == "token":  # reads per-token rewards
        if turn_index is None:
            token_rewards = estimators.token_level_rewards(rewards, batch.mask, kl_penalty)
        else:
            token_rewards = estimators.turn_token_rewards(turn_rewards, turn_index) * batch.mask
            if kl_penalty is not None:
                token_rewards = token_rewards - kl_penalty * batch.mask
    elif kl_penalty is not None:
        rewards = rewards - kl_penalty.sum(-1)
    inputs = estimators.AdvantageInputs(
        rewards=rewards, mask=batch.mask, group_index=rollout.group_index, scored=rollout.scored,
        token_rewards=token_rewards, values=batch.old_values, bootstrap=bootstrap,
        baseline_rewards=rollout.baseline_rewards, turn_index=turn_index, turn_rewards=turn_rewards)
    return estimators.get(cfg.algo.advantage)(inputs, **advantage_arguments(cfg.algo)).float()


def trains_only_nonzero_advantages(cfg: RLConfig, critic, in_reward: bool) -> bool:
    """Whether the update reads π_old only of the samples whose advantage is not all 0, and those advantages can
    be known before π_old: no critic, no KL in the reward or the loss, no entropy bonus, no whitening, one
    process (under DDP every rank runs every sample of its share). A GRPO step on a small model often has most
    groups with equal rewards; π_old is then computed for a fraction of the samples."""
    return (critic is None and not in_reward and not every_sample_in_loss(cfg) and not cfg.algo.normalize_advantages
            and distributed.world_size() == 1)


def every_sample_in_loss(cfg: RLConfig) -> bool:
    """A KL term or an entropy bonus in the loss: every sample has a gradient, whatever its advantage."""
    return (cfg.kl.where == "loss" and needs_reference(cfg)) or cfg.algo.entropy_coef > 0


def monitored(samples: int, n: int) -> list[int]:
    """kl.monitor's rows: n of the step's samples, evenly spaced — e.g. 8 of 64 (8 prompts × 8) are
    0, 8, …, 56, the first of each group."""
    n = min(n, samples)
    return [i * samples // n for i in range(n)]


def reference_logps(model, reference, prompt_ids, completion_ids, width: int, cfg: RLConfig) -> torch.Tensor:
    """log π_ref of the completion tokens → [b, width]. The reference is the frozen copy when one is loaded,
    otherwise (new LoRA adapters) the policy with its adapters switched off — the start."""
    if reference is not None:
        return forward_tokens(reference, prompt_ids, completion_ids, width, cfg)[0]
    with distributed.unwrap(model).disable_adapter():
        return forward_tokens(model, prompt_ids, completion_ids, width, cfg)[0]


def _sampler_logps(rollout, batch: Batch, sampling) -> torch.Tensor | None:
    """The sampler's log-probs as [B, T], or None when they are not the policy's: the policy is softmax(logits / T),
    and top-k/top-p/min-p or a repetition penalty make the engine sample (and report log-probs of) another
    distribution — e.g. top-k 20 on a near-uniform model gives log(1/20) where the policy has log(1/V)."""
    lengths_differ = any(len(lp) != len(ids) for lp, ids in zip(rollout.sampler_logps, batch.completion_ids))
    if sampling.truncates or lengths_differ:
        return None
    out = torch.zeros_like(batch.mask)
    for i, lp in enumerate(rollout.sampler_logps):
        out[i, :len(lp)] = torch.tensor(lp)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The update
# ---------------------------------------------------------------------------------------------------------------------

def update(cfg: RLConfig, plan, model, optimizer, critic, critic_optimizer, batch: Batch, guard, step: int,
           beta: float) -> dict:
    """rl.update_epochs passes of mini-batches over the step's samples; one optimizer update per mini-batch
    (none for a mini-batch without any gradient). beta: the KL coefficient now (kl.where=loss). Returns the
    step's update metrics (means over updates)."""
    world, rank = distributed.world_size(), distributed.rank()
    loss_fn, loss_kwargs = policy_losses.get(cfg.algo.policy_loss), loss_arguments(cfg.algo)
    needs_grad = every_sample_in_loss(cfg)
    totals = diagnostics.UpdateTotals()
    for epoch in range(cfg.rl.update_epochs):
        order = list(range(plan.samples))
        if plan.mini_batches > 1:  # PPO shuffles the samples into new mini-batches every epoch
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1_009 + epoch)
            order = torch.randperm(plan.samples, generator=g).tolist()
        for m in range(plan.mini_batches):
            mini = order[m * plan.mini_batch:(m + 1) * plan.mini_batch]
            mine = mini[rank * len(mini) // world:(rank + 1) * len(mini) // world]
            if critic is not None:
                totals.add("value_loss", critic_step(cfg, plan, critic, critic_optimizer, batch, mine,
                                                     _value_tokens(batch, mini), world))
                if step < cfg.algo.critic_warmup:  # the critic learns first; the policy waits for its values
                    totals.skipped += len(mine)
                    continue
            # A sample whose advantages are all 0 adds nothing to the gradient (unless KL or entropy is in the loss):
            # skip its forward. Every rank holds every advantage, so all agree when a whole mini-batch has none.
            active = {i for i in mini if needs_grad or batch.advantages[i].abs().sum() > 0}
            if not active:
                totals.skipped += len(mine)
                continue
            keep = mine if world > 1 else [i for i in mine if i in active]  # DDP: every rank runs a backward
            totals.skipped += len(mine) - len(keep)
            micro_batches = [keep[j:j + plan.micro_batch] for j in range(0, len(keep), plan.micro_batch)]
            norm = _normalizers(batch, mini, cfg)
            loss = 0.0
            for k, idx in enumerate(micro_batches):
                with distributed.gradient_sync(model, enabled=k == len(micro_batches) - 1):
                    loss += policy_micro_step(cfg, model, batch, idx, norm, loss_fn, loss_kwargs, totals, world,
                                              beta, first=epoch == 0 and m == 0)
            loss = distributed.all_reduce_sum(loss)
            totals.add("loss", loss)
            totals.add("grad_norm", optimizer_step(model, optimizer, cfg, guard, loss))
    return totals.metrics()


def _normalizers(batch: Batch, mini: list[int], cfg: RLConfig) -> dict:
    """The mini-batch's global counts (all ranks' samples): what aggregate.py divides by."""
    mask = batch.loss_mask[mini]
    return {"num_tokens": mask.sum().clamp(min=1).item(), "num_seqs": max(1, int((mask.sum(-1) > 0).sum())),
            "max_len": cfg.sampling.max_new_tokens}


def _value_tokens(batch: Batch, mini: list[int]) -> float:
    return batch.mask[mini].sum().clamp(min=1).item()


def policy_micro_step(cfg, model, batch: Batch, idx: list[int], norm: dict, loss_fn, loss_kwargs, totals, world: int,
                      beta: float, first: bool) -> float:
    """Forward, per-token policy loss (+ KL, − entropy), aggregate with the mini-batch's counts, backward."""
    device = device_of(model)
    logps, entropy = forward_tokens(model, [batch.prompt_ids[i] for i in idx],
                                    [batch.completion_ids[i] for i in idx], batch.width, cfg, entropy=True)
    mask = batch.loss_mask[idx].to(device)
    old, adv = batch.old_logps[idx].to(device), batch.advantages[idx].to(device)
    out = loss_fn(logps, old, adv, mask, **loss_kwargs)
    per_token = out.losses if batch.weights is None else out.losses * batch.weights[idx].to(device)
    if cfg.kl.where == "loss" and needs_reference(cfg):
        per_token = per_token + beta * kl_algos.get(cfg.kl.estimator)(logps, batch.ref_logps[idx].to(device))
    if cfg.algo.entropy_coef > 0:
        per_token = per_token - cfg.algo.entropy_coef * entropy
    loss = aggregate(per_token, mask, cfg.algo.aggregate, **norm) * world  # DDP averages gradients over ranks
    loss.backward()
    totals.record_policy(out, logps.detach(), old, entropy.detach(), mask, first)
    return loss.item() / world


def critic_step(cfg, plan, critic, critic_optimizer, batch: Batch, mine: list[int], num_tokens: float,
                world: int) -> float:
    """One update of the critic on this rank's share of the mini-batch: clipped value loss, token mean."""
    from posttrain.algos.policy import value_loss

    total = 0.0
    for j in range(0, len(mine), plan.micro_batch):
        idx = mine[j:j + plan.micro_batch]
        values, _ = forward_values(critic, [batch.prompt_ids[i] for i in idx], [batch.completion_ids[i] for i in idx],
                                   batch.width, cfg)
        device = values.device
        mask = batch.mask[idx].to(device)
        losses, _ = value_loss(values, batch.old_values[idx].to(device), batch.returns[idx].to(device), mask,
                               clip=cfg.algo.value_clip or None)
        loss = (losses * mask).sum() / num_tokens * world  # token mean over the mini-batch, all ranks
        loss.backward()
        total += loss.item() / world
    torch.nn.utils.clip_grad_norm_([p for p in critic.parameters() if p.requires_grad],
                                   cfg.train.max_grad_norm or float("inf"))
    critic_optimizer.step()
    critic_optimizer.zero_grad(set_to_none=True)
    return distributed.all_reduce_sum(total)


# ---------------------------------------------------------------------------------------------------------------------
# Models, controllers, evaluation, checkpoints
# ---------------------------------------------------------------------------------------------------------------------

def load_critic(cfg: RLConfig, world, resume_from: Path | None):
    """The value model: a per-token scalar head on the reward model (its score head carries over) or on the
    policy's backbone; full fine-tuning, its own AdamW."""
    from dataclasses import replace
    source = cfg.algo.critic_init or cfg.reward.model or cfg.model.name_or_path
    model_cfg = replace(cfg.model, name_or_path=resolve_model_path(source))  # an adapter is merged (lora.r=0)
    weights = resume_from / "critic" if resume_from is not None else None
    critic = load_model(model_cfg, LoraConfig(r=0), seed=cfg.seed + 1, weights_dir=weights, head="token",
                        disable_dropout=cfg.train.disable_dropout)
    # Weights read from safetensors keep the file's byte offsets, and the [1, H] value head's dot products round
    # differently when misaligned: own fresh memory, so a resumed run matches one whose head was newly allocated.
    for p in critic.parameters():
        p.data = p.data.clone()
    critic = distributed.wrap(critic.to(world.device).train(), world, cfg.train.strategy,
                              precision=cfg.train.precision)
    optimizer = build_optimizer(critic, replace(cfg.train, lr=cfg.algo.critic_lr or cfg.train.lr))
    if resume_from is not None:
        optimizer.load_state_dict(torch.load(resume_from / "critic_optimizer.pt", weights_only=True))
    return critic, optimizer


def kl_controller(cfg: RLConfig):
    coef = cfg.kl.coef if needs_reference(cfg) else 0.0
    if cfg.kl.target > 0:
        return kl_algos.AdaptiveKLController(coef, cfg.kl.target, cfg.kl.horizon)
    return kl_algos.FixedKLController(coef)


def checkpoint_state(resume_from: Path, controller) -> dict:
    import json
    state = json.loads((resume_from / "trainer_state.json").read_text())
    controller.load_state_dict(state["kl_controller"])
    return {"cursor": state["cursor"]}


@torch.no_grad()
def evaluate(model, tokenizer, data: rollouts.PromptData, cfg: RLConfig) -> dict:
    if not data.problems:
        return {}
    with torch.random.fork_rng(devices=[]):
        metrics = greedy_accuracy_metrics(distributed.unwrap(model), tokenizer, data.problems, data.task.score,
                                          use_chat_template=data.use_chat_template,
                                          max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size)
    model.train()
    return metrics


def save_checkpoint(run_dir: Path, step: int, model, critic, optimizer, critic_optimizer, scheduler, controller,
                    guard, state: dict, cfg: RLConfig) -> Path:
    def write(directory: Path) -> None:
        checkpoint.write_training_state(directory, model=model, optimizer=optimizer, scheduler=scheduler,
                                        state={"step": step, "cursor": state["cursor"],
                                               "kl_controller": controller.state_dict(), "guard": guard.state_dict()})
        if critic is not None:
            distributed.save_pretrained(critic, directory / "critic")
            if distributed.rank() == 0:
                torch.save(critic_optimizer.state_dict(), directory / "critic_optimizer.pt")
    return checkpoint.save(run_dir, step, write, keep_last=cfg.checkpoint.keep_last)
