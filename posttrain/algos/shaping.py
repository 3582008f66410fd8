"""Reward shaping by completion length: DAPO's soft overlong punishment and a plain length penalty.

Both take completion lengths [B] (tokens) and return a [B] term to ADD to the rewards.
"""

from __future__ import annotations

import torch


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer_len: float) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, eq. 13): no penalty up to
    L_max − L_cache tokens, then linearly down to −1 at L_max, and −1 beyond:

        R(y) = 0                              if |y| ≤ L_max − L_cache
             = ((L_max − L_cache) − |y|) / L_cache   if L_max − L_cache < |y| ≤ L_max
             = −1                             if |y| > L_max

    lengths [B] → [B]. buffer_len = L_cache (0 disables: all zeros).
    Example: L_max = 20, L_cache = 4: lengths [10, 16, 18, 20] → [0, 0, −0.5, −1].
    """
    if buffer_len <= 0:
        return torch.zeros(lengths.shape, dtype=torch.float32)
    start = max_len - buffer_len
    penalty = (start - lengths.float()) / buffer_len
    return penalty.clamp(min=-1.0, max=0.0)


def length_penalty(lengths: torch.Tensor, max_len: int, coef: float) -> torch.Tensor:
    """−coef · |y| / L_max: a constant pressure towards shorter answers (0 when coef is 0).

    Example: coef 0.1, L_max 20, lengths [10, 20] → [−0.05, −0.1].
    """
    return -coef * lengths.float() / max_len
