"""Token log-probabilities and entropy, from logits or from the hidden states before the output layer.

    token_logprobs(logits, targets)       log π(target) per position, from logits [B, T, V]
    token_entropy(logits)                 entropy of the next-token distribution per position
    logprobs_and_entropy(logits, …)       both at once for rows [n, V] (the reduction `chunked_reduce` applies)
    chunked_reduce(hidden, head, reduce)  head(hidden) → reduce, a bounded chunk of positions at a time, backward
                                          included: the [N, V] logits never exist whole

The first two take logits that already exist: they build the float32 log-softmax one chunk of rows at a time, which
bounds memory without gradients (scoring); with gradients autograd keeps every chunk's log-softmax for the backward,
so the whole [B, T, V] float32 tensor is alive at the peak next to the logits. `chunked_reduce` starts one step
earlier, from the final hidden states [N, H]: each chunk's logits are made, reduced to a few numbers per position
and dropped, and the backward recomputes them (torch.utils.checkpoint per chunk) — extra memory O(chunk × V) in
both passes, for one more output-layer matmul in the backward.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100

# Positions whose logits exist at once in `chunked_reduce` (train.logits_chunk's default): 1024 × 49,152 float32
# logits of SmolLM2 are 200 MB; the backward holds a few such tensors per chunk, never one per position of the batch.
LOGITS_CHUNK = 1024


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, chunk_rows: int = 4096) -> torch.Tensor:
    """log π(target | context) per position.

    logits [B, T, V], targets [B, T] (next-token ids already aligned with logits; IGNORE_INDEX where no target)
    → [B, T] in float32, 0 where the target is ignored.

    Example: logits [[0, ln 3]] over a 2-token vocabulary, target 1 → log(3/4) = −0.2877.
    """
    flat_logits, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    parts = [logprobs_and_entropy(flat_logits[start:start + chunk_rows], flat_targets[start:start + chunk_rows])[0]
             for start in range(0, flat_logits.shape[0], chunk_rows)]
    if not parts:
        return flat_logits.new_zeros(targets.shape, dtype=torch.float32)
    return torch.cat(parts).view(targets.shape)


def token_entropy(logits: torch.Tensor, chunk_rows: int = 4096) -> torch.Tensor:
    """Entropy of the full next-token distribution: logits [..., V] → [...] (nats), chunk_rows positions at a
    time (as token_logprobs), so the float32 softmax never spans the whole batch × vocabulary.

    Example: uniform logits over V = 4 tokens → ln 4 = 1.3863.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    parts = [_entropy(F.log_softmax(flat[start:start + chunk_rows].float(), dim=-1))
             for start in range(0, flat.shape[0], chunk_rows)]
    return torch.cat(parts).view(logits.shape[:-1]) if parts else flat.new_zeros(logits.shape[:-1])


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    """−Σ p log p over the last dimension, from log-probabilities."""
    return -(logp.exp() * logp).sum(-1)


def logprobs_and_entropy(logits: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
                         entropy: bool = False, entropy_grad: bool = True) -> tuple[torch.Tensor, ...]:
    """(log π(target) [n],) or (log π(target) [n], entropy [n]) of the distribution softmax(logits / temperature),
    logits [n, V] (any dtype; the log-softmax runs in float32), targets [n] (IGNORE_INDEX → log-prob 0). The same
    numbers as token_logprobs and token_entropy, for one chunk of rows. entropy_grad=False: the entropy is a
    constant (computed without gradient: logged, not trained on).

    Example: logits [[0, ln 3]], target 1 → (log(3/4) = −0.2877, entropy −(¼ ln ¼ + ¾ ln ¾) = 0.5623).
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    logp = F.log_softmax(logits, dim=-1)
    picked = logp.gather(-1, targets.clamp(min=0)[:, None]).squeeze(-1).masked_fill(targets == IGNORE_INDEX, 0.0)
    if not entropy:
        return (picked,)
    with torch.set_grad_enabled(torch.is_grad_enabled() and entropy_grad):
        ent = _entropy(logp)
    return picked, ent


def chunked_reduce(hidden: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor],
                   reduce: Callable[..., tuple[torch.Tensor, ...]], columns: Sequence[torch.Tensor] = (),
                   chunk: int = LOGITS_CHUNK) -> tuple[torch.Tensor, ...]:
    """reduce(head(hidden rows), *their columns' rows), `chunk` rows at a time, concatenated.

    hidden [N, H]: the final hidden states at the N positions that need a value; head: [n, H] → [n, V], the output
    layer (a module: its parameters get their gradients); reduce: (logits [n, V], *column rows) → tuple of [n]
    tensors, e.g. `logprobs_and_entropy`; columns: tensors [N, …] cut into the same chunks (the targets) → the tuple
    of [N] tensors.

    With gradients on, each chunk runs under torch.utils.checkpoint (non-reentrant): autograd keeps only its inputs
    (a view of `hidden` and the column rows), and the backward recomputes the chunk's logits and reduction (with
    the same random state, so a dropout in the head is replayed). Peak extra memory is O(chunk × V) in the forward
    and in the backward, instead of the whole [N, V] logits plus their float32 log-softmax.

    Example: hidden [[0, ln 3]], head the identity, reduce logprobs_and_entropy, columns ([1],) → ([−0.2877],), the
    same as token_logprobs on those logits; any chunk gives the same numbers and the same gradients.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be ≥ 1 row, got {chunk}")

    def one(rows: torch.Tensor, *cols: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(reduce(head(rows), *cols))

    pieces = zip(hidden.split(chunk), *(c.split(chunk) for c in columns)) if hidden.shape[0] else \
        [(hidden, *columns)]
    outputs = [checkpoint(one, *piece, use_reentrant=False) if torch.is_grad_enabled() else one(*piece)
               for piece in pieces]
    return tuple(torch.cat(parts) for parts in zip(*outputs))
