"""Preference optimization (`posttrain dpo`): the DPO family on pairs, KTO on unpaired examples, one loop.

    setup      tokenizer → pairs (validated, bad rows per data.truncation, counted) → run dir → model
               (KTO: single responses labelled desirable / undesirable; pairs become one of each)
    reference  log π_ref of every response, computed ONCE before the first step with the initial weights and
               cached in RUN_DIR/reference_logps.safetensors (resume reads it back), so only one model is in
               memory while training. The initial model is the starting policy: with new LoRA adapters (they
               start at zero) their base, continuing an adapter (lora.r unset) the base with that adapter.
               tr_dpo is the exception: its reference moves, so it keeps a live copy (saved in checkpoints).
    step       G = micro_batch_size × grad_accum pairs; chosen and rejected responses of a micro-batch go through
               one (packed) forward; Σ log π per response; the registered loss (algos/preference.py) gives a
               loss per pair; the step's loss is their mean over the G pairs of all ranks (sum ÷ G per
               micro-batch, so accumulation is exact)
    KTO step   G examples; first a no-grad pass over the step's mismatched examples (prompt i + another
               example's completion) gives the reference point z0 ≈ KL(π‖π_ref) for the whole step, all ranks;
               then the loss per example against that z0, accumulated exactly as above
    log        loss, rewards/{chosen,rejected,margins,accuracies}, logps/{chosen,rejected} — TRL's names (KTO:
               no accuracies — there are no pairs — and `kl`, the step's z0)
    eval       the same metrics on held-out pairs (eval/…) and task accuracy by greedy generation
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from posttrain import checkpoint, distributed
from posttrain.algos import preference as losses
from posttrain.algos.logprobs import LOGITS_CHUNK
from posttrain.config import DPOConfig
from posttrain.data import collate
from posttrain.errors import ConfigError
from posttrain.eval.accuracy import greedy_accuracy_metrics
from posttrain.models.loading import load_model, load_tokenizer
from posttrain.models.logits import device_of, sequence_logps
from posttrain.train.common import (batch_indices, batch_plan, optimizer_step,
                                    prepare_run_dir, start_training, total_steps)
from posttrain.train.loop import StepEnd
from posttrain.train.pairs import PreferenceData, load_preference_data
from posttrain.train.preflight import check_inputs

REFERENCE_FILE = "reference_logps.safetensors"
METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
           "logps/rejected")
UNPAIRED_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                    "kl")


def run(cfg: DPOConfig) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = distributed.init()
    check_inputs(cfg)  # model path, attention kernel, trackers; train.lr and data.max_length from the model
    loss_fn, loss_kwargs = resolve_loss(cfg)
    live_reference = losses.LOSSES.entry(cfg.preference.loss).moving_reference
    if live_reference and cfg.train.strategy == "fsdp":
        raise ConfigError(f"preference.loss={cfg.preference.loss} keeps a live reference copy, which is not "
                          "sharded — fix: train.strategy=ddp")

    # ---- setup: every check on user input happens before the run directory is touched -----------------------------
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    data = load_preference_data(cfg, tokenizer, unpaired=losses.LOSSES.entry(cfg.preference.loss).unpaired)
    accumulate = accumulate_unpaired if data.unpaired else accumulate_gradients
    micro, accum, global_batch = batch_plan(cfg.train, world.world_size)
    num_steps = total_steps(cfg.train, len(data.train), global_batch)
    distributed.check_strategy(cfg.train, world)
    run_dir, resume_from = prepare_run_dir(cfg)

    model = load_model(cfg.model, cfg.lora, seed=cfg.seed,
                       weights_dir=resume_from / "model" if resume_from else None,
                       disable_dropout=cfg.train.disable_dropout).to(world.device)
    reference_model = None
    if live_reference:
        reference_model = load_model(cfg.model, cfg.lora, seed=cfg.seed).to(world.device).eval()
        if resume_from is not None:
            reference_model.load_state_dict(load_file(str(resume_from / "reference_model.safetensors")))
        reference_model.requires_grad_(False)
    elif losses.LOSSES.entry(cfg.preference.loss).needs_reference:
        data.reference = reference_logps(model, data, tokenizer, cfg, run_dir, resume_from)
    model, optimizer, scheduler, start_step, tracker, guard = start_training(
        cfg, model, world, run_dir, resume_from, num_steps, (micro, accum, global_batch),
        f"{len(data.train)} training {data.unit}{data.report}; loss {cfg.preference.loss}", unit=data.unit)
    if cfg.eval.at_start and start_step == 0:
        tracker.log(0, evaluate(model, reference_model, tokenizer, data, cfg, loss_fn, loss_kwargs))

    # ---- loop -------------------------------------------------------------------------------------------------------
    end = StepEnd(cfg, num_steps, tracker, guard,
                  save=lambda step: save_checkpoint(run_dir, step, model, reference_model, optimizer, scheduler, guard,
                                                    cfg),
                  evaluate=lambda: evaluate(model, reference_model, tokenizer, data, cfg, loss_fn, loss_kwargs))
    per_rank = micro * accum
    metrics: dict = {}
    for step in range(start_step, num_steps):
        t0 = time.perf_counter()
        indices = batch_indices(step, global_batch, len(data.train), cfg.seed)
        mine = indices[world.rank * per_rank:(world.rank + 1) * per_rank]
        micro_batches = [mine[j:j + micro] for j in range(0, per_rank, micro)]
        sums = accumulate(model, reference_model, micro_batches, data, data.reference_train, tokenizer, cfg,
                          loss_fn, loss_kwargs, global_batch)
        grad_norm = optimizer_step(model, optimizer, cfg, guard, sums["loss"])
        scheduler.step()
        done = step + 1
        if reference_model is not None and done % cfg.preference.ref_sync_steps == 0:
            update_reference(reference_model, distributed.unwrap(model), cfg.preference.ref_mixup_alpha)
        metrics = {**sums, "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0],
                   f"{data.unit}_per_s": global_batch / (time.perf_counter() - t0),
                   "epoch": done * global_batch / len(data.train)}
        end.step(done, metrics)  # skipped_steps, eval, log, checkpoint when due (train/loop.py)

    # ---- outputs ----------------------------------------------------------------------------------------------------
    return end.finish(metrics, run_dir, model, tokenizer, world.is_main, shown=("loss", "rewards/accuracies"))


# ---------------------------------------------------------------------------------------------------------------------
# The algorithm: log-probs of responses, the loss, accumulation
# ---------------------------------------------------------------------------------------------------------------------

def resolve_loss(cfg: DPOConfig):
    """(loss function, the keyword arguments it takes from cfg.preference). Unknown names → ConfigError."""
    try:
        entry = losses.LOSSES.entry(cfg.preference.loss)
    except ValueError as e:
        raise ConfigError(f"preference.loss: {e}") from None
    if entry.moving_reference and cfg.preference.ref_sync_steps < 1:
        raise ConfigError(f"preference.loss={entry.name} updates its reference every preference.ref_sync_steps "
                          "steps — fix: set preference.ref_sync_steps to a positive number (e.g. 32)")
    # each declared hyperparameter is a preference.* field; unset (None) leaves the loss's own default
    kwargs = {name: getattr(cfg.preference, name) for name in entry.hparams
              if getattr(cfg.preference, name) is not None}
    return entry.fn, {"beta": cfg.preference.beta, **kwargs}


def response_logps(model, examples: list[dict], pad_id: int, packing: bool, precision: str = "fp32",
                   chunk: int = LOGITS_CHUNK):
    """Σ_t log π(response token t) and the response's token count, for each example → ([E], [E]).

    One forward over the (packed) batch; log-probs only at labelled positions, the output layer applied `chunk`
    positions at a time (train.logits_chunk), summed per example (models.logits.sequence_logps).
    """
    device = device_of(model)
    batch = {k: v.to(device) for k, v in collate(examples, pad_id=pad_id, packing=packing).items()}
    return sequence_logps(model, batch, len(examples), precision, chunk)


def pair_loss(model, reference_model, all_pairs: list[dict], indices: list[int], reference: dict | None, tokenizer,
              cfg, loss_fn, loss_kwargs):
    """The registered loss on all_pairs[indices] → (PreferenceLoss, the policy's PreferenceLogps).

    reference: the cached {"chosen", "rejected"} log-probs of all_pairs, or None (live reference model, or a
    reference-free loss)."""
    pairs = [all_pairs[i] for i in indices]
    examples = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    sums, counts = response_logps(model, examples, tokenizer.pad_token_id, cfg.data.packing, cfg.train.precision,
                                  cfg.train.logits_chunk)
    n = len(pairs)
    ref_chosen = ref_rejected = None
    if reference_model is not None:
        with torch.no_grad():
            ref_sums, _ = response_logps(reference_model, examples, tokenizer.pad_token_id, cfg.data.packing,
                                         cfg.train.precision, cfg.train.logits_chunk)
        ref_chosen, ref_rejected = ref_sums[:n], ref_sums[n:]
    elif reference is not None:
        index = torch.tensor(indices)
        ref_chosen, ref_rejected = (reference[k][index].to(sums.device) for k in ("chosen", "rejected"))
    logps = losses.PreferenceLogps(chosen=sums[:n], rejected=sums[n:], chosen_tokens=counts[:n],
                                   rejected_tokens=counts[n:], ref_chosen=ref_chosen, ref_rejected=ref_rejected)
    return loss_fn(logps, **loss_kwargs), logps


def accumulate_gradients(model, reference_model, micro_batches: list[list[int]], data, reference, tokenizer, cfg,
                         loss_fn, loss_kwargs, global_batch: int) -> dict:
    """Backward over this rank's micro-batches; gradients are those of the mean loss over the step's G pairs on
    all ranks. Returns the step's metrics (means over the G pairs)."""
    world_size = distributed.world_size()
    totals = torch.zeros(len(METRICS), dtype=torch.float64)
    for i, indices in enumerate(micro_batches):
        with distributed.gradient_sync(model, enabled=i == len(micro_batches) - 1):
            out, logps = pair_loss(model, reference_model, data.train, indices, reference, tokenizer, cfg,
                                   loss_fn, loss_kwargs)
            (out.losses.sum() / global_batch * world_size).backward()
        totals += pair_sums(out, logps)
    totals = distributed.all_reduce_tensor(totals)
    return {name: (total / global_batch).item() for name, total in zip(METRICS, totals)}


def pair_sums(out, logps) -> torch.Tensor:
    """Per-metric sums over a micro-batch's pairs, in METRICS order (divided by the pair count later)."""
    chosen, rejected = out.chosen_rewards.detach(), out.rejected_rewards.detach()
    values = [out.losses.detach().sum(), chosen.sum(), rejected.sum(), (chosen - rejected).sum(),
              (chosen > rejected).float().sum(), logps.chosen.detach().sum(), logps.rejected.detach().sum()]
    return torch.stack([v.double().cpu() for v in values])


def kto_reference_point(model, items: list[dict], micro_batches: list[list[int]], reference: dict, tokenizer,
                        cfg) -> torch.Tensor:
    """KTO's z0 for one step: max(0, mean of log π − log π_ref over the step's mismatched examples, all ranks),
    without gradient — `algos.preference.kto_reference_point` over the whole step's batch.

    A no-grad pass over every micro-batch before any backward, so each micro-batch's loss uses the same z0 and
    gradient accumulation stays exact (a per-micro-batch z0 would make the step depend on how it is split).
    """
    totals = torch.zeros(2, dtype=torch.float64)  # Σ (log π − log π_ref), count
    with torch.no_grad():
        for indices in micro_batches:
            sums, _ = response_logps(model, [items[i]["mismatched"] for i in indices], tokenizer.pad_token_id,
                                     cfg.data.packing, cfg.train.precision, cfg.train.logits_chunk)
            log_ratio = sums.double().cpu() - reference["mismatched"][torch.tensor(indices)].double()
            totals += torch.tensor([log_ratio.sum().item(), len(indices)], dtype=torch.float64)
    totals = distributed.all_reduce_tensor(totals)
    return losses.kto_reference_point_of_sums(totals[0], totals[1]).float()


def unpaired_loss(model, items: list[dict], indices: list[int], reference: dict, z0: torch.Tensor, tokenizer, cfg,
                  loss_fn, loss_kwargs):
    """The KTO loss on items[indices] against the step's z0 → (PreferenceLoss, log π [B], desirable [B])."""
    sums, _ = response_logps(model, [items[i]["completion"] for i in indices], tokenizer.pad_token_id,
                             cfg.data.packing, cfg.train.precision, cfg.train.logits_chunk)
    ref = reference["completion"][torch.tensor(indices)].to(sums.device)
    desirable = torch.tensor([items[i]["desirable"] for i in indices], device=sums.device)
    return loss_fn(sums, ref, desirable, z0.to(sums.device), **loss_kwargs), sums, desirable


def accumulate_unpaired(model, reference_model, micro_batches: list[list[int]], data, reference, tokenizer, cfg,
                        loss_fn, loss_kwargs, global_batch: int) -> dict:
    """KTO's step: z0 first (no grad), then backward over this rank's micro-batches; the gradient is that of
    the mean loss over the step's G examples on all ranks. (reference_model: unused, KTO's reference is cached.)"""
    world_size = distributed.world_size()
    z0 = kto_reference_point(model, data.train, micro_batches, reference, tokenizer, cfg)
    totals = torch.zeros(7, dtype=torch.float64)
    for i, indices in enumerate(micro_batches):
        with distributed.gradient_sync(model, enabled=i == len(micro_batches) - 1):
            out, logps, desirable = unpaired_loss(model, data.train, indices, reference, z0, tokenizer, cfg,
                                                  loss_fn, loss_kwargs)
            (out.losses.sum() / global_batch * world_size).backward()
        totals += unpaired_sums(out, logps, desirable)
    return unpaired_metrics(distributed.all_reduce_tensor(totals), z0)


def unpaired_sums(out, logps, desirable) -> torch.Tensor:
    """Σ loss, Σ reward and Σ log π of desirable / undesirable examples, and their counts (a [7] float64 tensor)."""
    logps, wanted = logps.detach(), desirable.bool()
    values = [out.losses.detach().sum(), out.chosen_rewards.detach().sum(), out.rejected_rewards.detach().sum(),
              logps[wanted].sum(), logps[~wanted].sum(), wanted.sum(), (~wanted).sum()]
    return torch.stack([v.double().cpu() for v in values])


def unpaired_metrics(totals: torch.Tensor, z0: torch.Tensor) -> dict:
    """UNPAIRED_METRICS from summed totals: rewards and log-probs are means over the matching examples only."""
    loss, chosen, rejected, logps_chosen, logps_rejected, n_desirable, n_undesirable = totals.tolist()
    count = n_desirable + n_undesirable
    n_desirable, n_undesirable = max(n_desirable, 1.0), max(n_undesirable, 1.0)  # 0 / 1 = 0 when none of a kind
    chosen, rejected = chosen / n_desirable, rejected / n_undesirable
    return {"loss": loss / count, "rewards/chosen": chosen, "rewards/rejected": rejected,
            "rewards/margins": chosen - rejected,
            "logps/chosen": logps_chosen / n_desirable, "logps/rejected": logps_rejected / n_undesirable,
            "kl": z0.item()}


@torch.no_grad()
def update_reference(reference_model, model, alpha: float) -> None:
    """TR-DPO's trust-region step: θ_ref ← α·θ + (1 − α)·θ_ref (α = 1 replaces the reference)."""
    for ref, cur in zip(reference_model.parameters(), model.parameters()):
        ref.mul_(1 - alpha).add_(cur.detach().to(ref.dtype), alpha=alpha)


# ---------------------------------------------------------------------------------------------------------------------
# Data and the reference cache
# ---------------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def reference_logps(model, data: PreferenceData, tokenizer, cfg: DPOConfig, run_dir: Path,
                    resume_from: Path | None) -> dict:
    """log π_ref of both responses of every item (data.responses) of train and eval, from the model as loaded.

    Written once to RUN_DIR/reference_logps.safetensors before training starts; a resumed run reads it back
    instead of recomputing from weights it no longer has. Each rank computes a slice; the slices are summed.
    """
    path = run_dir / REFERENCE_FILE
    if resume_from is not None:
        flat = load_file(str(path))
        return {split: {k: flat[f"{split}/{k}"] for k in data.responses} for split in ("train", "eval")}
    was_training = model.training
    model.eval()
    out, flat = {}, {}
    rank, world_size = distributed.rank(), distributed.world_size()
    first, second = data.responses
    for split, items in (("train", data.train), ("eval", data.eval)):
        values = torch.zeros(2, len(items), dtype=torch.float64)
        mine = list(range(rank * cfg.eval.batch_size, len(items), world_size * cfg.eval.batch_size))
        for start in mine:
            chunk = items[start:start + cfg.eval.batch_size]
            examples = [item[first] for item in chunk] + [item[second] for item in chunk]
            sums, _ = response_logps(model, examples, tokenizer.pad_token_id, cfg.data.packing, cfg.train.precision,
                                     cfg.train.logits_chunk)
            values[0, start:start + len(chunk)] = sums[:len(chunk)].double().cpu()
            values[1, start:start + len(chunk)] = sums[len(chunk):].double().cpu()
        values = distributed.all_reduce_tensor(values).float()
        out[split] = {first: values[0], second: values[1]}
        flat.update({f"{split}/{first}": values[0].contiguous(), f"{split}/{second}": values[1].contiguous()})
    model.train(was_training)
    if distributed.rank() == 0:
        tmp = path.with_suffix(".tmp")
        save_file(flat, str(tmp))
        tmp.replace(path)
    distributed.barrier()
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation and checkpoints
# ---------------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, reference_model, tokenizer, data: PreferenceData, cfg: DPOConfig, loss_fn, loss_kwargs) -> dict:
    """eval/<metric> over held-out pairs (every rank computes all; they are few) and eval/accuracy on the task."""
    out = {}
    with torch.random.fork_rng(devices=[]):
        model.eval()
        if data.eval and data.unpaired:
            chunks = [list(range(start, min(start + cfg.eval.batch_size, len(data.eval))))
                      for start in range(0, len(data.eval), cfg.eval.batch_size)]
            z0 = kto_reference_point(model, data.eval, chunks, data.reference_eval, tokenizer, cfg)
            totals = sum(unpaired_sums(*unpaired_loss(model, data.eval, chunk, data.reference_eval, z0, tokenizer,
                                                      cfg, loss_fn, loss_kwargs)) for chunk in chunks)
            out.update({f"eval/{name}": value for name, value in unpaired_metrics(totals, z0).items()})
        elif data.eval:
            totals = torch.zeros(len(METRICS), dtype=torch.float64)
            for start in range(0, len(data.eval), cfg.eval.batch_size):
                indices = list(range(start, min(start + cfg.eval.batch_size, len(data.eval))))
                result, logps = pair_loss(model, reference_model, data.eval, indices, data.reference_eval,
                                          tokenizer, cfg, loss_fn, loss_kwargs)
                totals += pair_sums(result, logps)
            out.update({f"eval/{name}": (total / len(data.eval)).item() for name, total in zip(METRICS, totals)})
        if data.problems:
            out.update(greedy_accuracy_metrics(distributed.unwrap(model), tokenizer, data.problems, data.score,
                                               use_chat_template=data.use_chat_template,
                                               max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size))
        model.train()
    return out


def save_checkpoint(run_dir: Path, step: int, model, reference_model, optimizer, scheduler, guard, cfg) -> Path:
    def write(directory: Path) -> None:
        checkpoint.write_training_state(directory, model=model, optimizer=optimizer, scheduler=scheduler,
                                        state={"step": step, "guard": guard.state_dict()})
        if reference_model is not None and distributed.rank() == 0:
            save_file({k: v.detach().clone().contiguous() for k, v in reference_model.state_dict().items()},
                      str(directory / "reference_model.safetensors"))
    return checkpoint.save(run_dir, step, write, keep_last=cfg.checkpoint.keep_last)
