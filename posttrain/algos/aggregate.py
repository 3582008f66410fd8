"""The one owner of loss reduction.

Every loss in `algos/` returns per-token values and a mask; the loops reduce them here and nowhere else, with a
registered mode (posttrain.algos.registry; `mask` arrives in the values' dtype).
Passing the *global* normalizer (tokens or sequences in the whole optimizer step, across micro-batches and,
later, ranks) is what makes a run invariant to micro-batch size and gradient accumulation: summing the
micro-batch losses gives exactly the loss of the whole batch, whatever the split.

Modes (shapes: `values`, `mask` are [B, T]; `mask` is 1 on tokens that count):

- `token_mean`:               Σ values·mask / N_tokens          (every token weighs the same)
- `seq_mean_token_mean`:      Σ_i (Σ_t values·mask / |y_i|) / N_seqs   (GRPO: each sequence weighs the same)
- `seq_mean_token_sum_norm`:  Σ values·mask / (N_seqs · L)      (Dr. GRPO: a constant L removes length bias)

Worked example: per-token losses [1, 1] and [0, 0, 0, 0] (B = 2):
token_mean = 2/6 = 1/3; seq_mean_token_mean = (1 + 0)/2 = 0.5; seq_mean_token_sum_norm with L = 4: 2/(2·4) = 0.25.
"""

from __future__ import annotations

import torch

from posttrain.algos.registry import Registry

# Each mode declares what it weighs equally: "token" (every token) or "sequence" (every response).
AGGREGATIONS = Registry("aggregation", flags={"weighs": "token"})


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean", *,
              num_tokens: float | None = None, num_seqs: float | None = None,
              max_len: float | None = None) -> torch.Tensor:
    """Reduce per-token `values` [B, T] under `mask` [B, T] to a scalar with the registered `mode`.

    `num_tokens` / `num_seqs` are the normalizers of the whole optimizer step (default: this batch's own);
    `max_len` is the constant L of `seq_mean_token_sum_norm` (default: T).
    """
    reduce = AGGREGATIONS.get(mode)
    return reduce(values, mask.to(values.dtype), num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)


@AGGREGATIONS.register("token_mean")
def token_mean(values, mask, *, num_tokens=None, num_seqs=None, max_len=None) -> torch.Tensor:
    """Σ values·mask / N_tokens: every token weighs the same (PPO, DAPO)."""
    n = mask.sum() if num_tokens is None else num_tokens
    return (values * mask).sum() / n


@AGGREGATIONS.register("seq_mean_token_mean", weighs="sequence")
def seq_mean_token_mean(values, mask, *, num_tokens=None, num_seqs=None, max_len=None) -> torch.Tensor:
    """Σ_i (Σ_t values·mask / |y_i|) / N_seqs: every sequence weighs the same (GRPO)."""
    per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / (values.shape[0] if num_seqs is None else num_seqs)


@AGGREGATIONS.register("seq_mean_token_sum_norm", weighs="sequence")
def seq_mean_token_sum_norm(values, mask, *, num_tokens=None, num_seqs=None, max_len=None) -> torch.Tensor:
    """Σ values·mask / (N_seqs · L), L a constant: every sequence weighs the same, and a longer one does not
    dilute its tokens (Dr. GRPO)."""
    n_seqs = values.shape[0] if num_seqs is None else num_seqs
    length = values.shape[-1] if max_len is None else max_len
    return (values * mask).sum() / (n_seqs * length)


MODES = tuple(AGGREGATIONS)  # in the order of the module docstring
