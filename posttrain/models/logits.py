"""A model's outputs where the loops need them: logits at the trained positions, summed response log-probs, a
head's output on right-padded examples — the forward passes every loop and scorer shares, written once.

    forward_logits(model, batch)              (logits [R, K, V], targets [R, K]) at the K positions with a target
    logits_at_targets(model, batch)           (logits [R, K, V], the K positions), for callers that need both
    sequence_logps(model, batch, E)           Σ_t log π(token t) per example, and its token count → ([E], [E])
    padded_forward(model, examples, pad_id)   the output ([E, T, …]) of right-padded examples (reward heads)

`batch` is what `data.collate` makes (input_ids, position_ids, targets, seq_index, attention_mask when padded),
on the model's device; targets are IGNORE_INDEX where no token is predicted.
"""

from __future__ import annotations

import contextlib

import torch

from posttrain.algos.logprobs import IGNORE_INDEX, token_logprobs
from posttrain.data import collate


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def autocast(precision: str, device: torch.device):
    """bf16: autocast the forward pass, master weights stay fp32. fp32: no-op."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def target_positions(targets: torch.Tensor) -> torch.Tensor:
    """The column indices [K] at which some row of targets [R, T] has a target.

    Example: targets [[-100, 5, -100], [-100, -100, -100]] → [1].
    """
    return (targets != IGNORE_INDEX).any(0).nonzero().squeeze(-1)


def forward_logits(model, batch: dict, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits only where they are needed: (logits [R, K, V], targets [R, K]) for the K positions at which
    some row has a target.

    The output head and the softmax are the costliest part of the forward pass for real vocabularies
    (150k × hidden for Qwen); prompt positions need neither. transformers' `logits_to_keep` takes the
    position indices, so this works for any model that supports it (and through PEFT wrappers).
    """
    logits, keep = logits_at_targets(model, batch, precision)
    return logits, batch["targets"][:, keep]


def sequence_logps(model, batch: dict, num_sequences: int, precision: str = "fp32"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_t log π(target t) of each of the batch's num_sequences examples, and its count of targets → ([E], [E]).

    One forward with logits only at target positions (as forward_logits); the per-token log-probs are added up
    per example through seq_index, so packed and padded batches give the same sums. What DPO and its family
    compare.

    Example: an example whose two targets have probabilities 0.5 and 0.25 → (ln 0.5 + ln 0.25 = −2.0794, 2).
    """
    logits, keep = logits_at_targets(model, batch, precision)
    targets, seq = batch["targets"][:, keep], batch["seq_index"][:, keep]
    mask = targets != IGNORE_INDEX
    logps = token_logprobs(logits, targets)
    device = batch["input_ids"].device
    sums = torch.zeros(num_sequences, device=device, dtype=torch.float32).index_add(0, seq[mask], logps[mask])
    counts = torch.zeros(num_sequences, device=device).index_add(0, seq[mask], torch.ones_like(logps[mask]))
    return sums, counts


def logits_at_targets(model, batch: dict, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [R, K, V] at the K positions where some row has a target, those positions [K]): one forward with
    logits_to_keep. For callers that gather more than the targets at those positions (seq_index, position_ids)."""
    keep = target_positions(batch["targets"])
    with autocast(precision, batch["input_ids"].device):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                       position_ids=batch["position_ids"], use_cache=False, logits_to_keep=keep).logits
    return logits, keep


def padded_forward(model, examples: list[dict], pad_id: int, precision: str = "fp32") -> torch.Tensor:
    """The model's output logits for tokenized examples, one per row, right-padded: [E, T, …] (a score head's
    output for reward models). With causal attention, padding on the right changes no real token's output."""
    device = device_of(model)
    batch = collate(examples, pad_id=pad_id, packing=False)
    with autocast(precision, device):
        return model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                     use_cache=False).logits
