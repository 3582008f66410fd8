"""Token log-probabilities and entropy from logits, without materialising more than needed.

`log_softmax` over the vocabulary followed by a gather of the taken token: the full [B, T, V] log-prob tensor
is built one chunk of rows at a time, so peak extra memory is chunk × V instead of B × T × V.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, chunk_rows: int = 4096) -> torch.Tensor:
    """log π(target | context) per position.

    logits [B, T, V], targets [B, T] (next-token ids already aligned with logits; IGNORE_INDEX where no target)
    → [B, T] in float32, 0 where the target is ignored.

    Example: logits [[0, ln 3]] over a 2-token vocabulary, target 1 → log(3/4) = −0.2877.
    """
    flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    safe = flat_targets.clamp(min=0)
    out = torch.empty(flat_targets.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, flat_logits.shape[0], chunk_rows):
        rows = slice(start, start + chunk_rows)
        logp = F.log_softmax(flat_logits[rows].float(), dim=-1)
        out[rows] = logp.gather(-1, safe[rows, None]).squeeze(-1)
    return out.masked_fill(flat_targets == IGNORE_INDEX, 0.0).view(targets.shape)


def token_entropy(logits: torch.Tensor, chunk_rows: int = 4096) -> torch.Tensor:
    """Entropy of the full next-token distribution: logits [..., V] → [...] (nats), chunk_rows positions at a
    time (as token_logprobs), so the float32 softmax never spans the whole batch × vocabulary.

    Example: uniform logits over V = 4 tokens → ln 4 = 1.3863.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    parts = []
    for start in range(0, flat.shape[0], chunk_rows):
        logp = F.log_softmax(flat[start:start + chunk_rows].float(), dim=-1)
        parts.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(parts).view(logits.shape[:-1]) if parts else flat.new_zeros(logits.shape[:-1])
