"""Supervised fine-tuning loss: masked next-token cross-entropy.

Targets are already shifted by the collator (targets[t] is the token at t+1 of the same example, or
IGNORE_INDEX), so no shift happens here and packed rows never predict across example boundaries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from posttrain.algos.logprobs import IGNORE_INDEX


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token negative log-likelihood and its mask.

    logits [B, T, V], targets [B, T] → (loss [B, T] float32, mask [B, T] bool); loss is 0 where mask is False.
    Reduce with `algos.aggregate.aggregate(loss, mask, "token_mean", num_tokens=...)`.

    Example: logits [[0, ln 3]] (vocabulary of 2), target 1 → −log(3/4) = 0.2877.
    """
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="none").view(targets.shape)
    return loss, targets != IGNORE_INDEX
