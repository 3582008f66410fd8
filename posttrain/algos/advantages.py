"""Advantage estimators: how much better than expected each sampled response (or token) was.

One signature for the registry (DESIGN §3):

    advantages.get(name)(batch: AdvantageInputs, **hyperparameters) -> advantages [B, T]

B responses (G per prompt, consecutive or not: `group_index` says which prompt each belongs to), T response
tokens (right-padded; `mask` is 1 on real tokens). Sequence-level estimators broadcast one number over a
response's tokens. Responses whose reward could not be computed (`scored` False: the reward function raised,
returned None/NaN or timed out) are left out of every baseline and get advantage 0.

Group baselines here (grpo, dr_grpo, rloo) and the returns helper (`discounted_returns`) are also what the
classic-RL side uses; `gae` is shared with classic PPO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {}


def register(name: str):
    def wrap(fn):
        ADVANTAGES[name] = fn
        return fn
    return wrap


def get(name: str) -> Callable[..., torch.Tensor]:
    """The estimator registered under `name`; an unknown name raises ValueError listing the valid ones."""
    if name not in ADVANTAGES:
        raise ValueError(f"unknown advantage estimator '{name}' — valid: {', '.join(sorted(ADVANTAGES))}")
    return ADVANTAGES[name]


@dataclass
class AdvantageInputs:
    rewards: torch.Tensor            # [B] sequence-level reward of each response (0 where not scored)
    mask: torch.Tensor               # [B, T] 1 on response tokens
    group_index: torch.Tensor        # [B] int: the prompt each response answers
    scored: torch.Tensor | None = None         # [B] bool: the reward could be computed (default: all)
    token_rewards: torch.Tensor | None = None  # [B, T] per-token rewards (gae; KL already folded in if any)
    values: torch.Tensor | None = None         # [B, T] critic values V(s_t) (gae)
    bootstrap: torch.Tensor | None = None      # [B] value after the last token: 0 = terminal (default), V for
    #                                            a truncated response

    def scored_mask(self) -> torch.Tensor:
        return torch.ones_like(self.rewards, dtype=torch.bool) if self.scored is None else self.scored.bool()


# ---------------------------------------------------------------------------------------------------------------------
# Group statistics (shared by the group baselines)
# ---------------------------------------------------------------------------------------------------------------------

def _group_stats(rewards: torch.Tensor, group_index: torch.Tensor, scored: torch.Tensor):
    """Per response: (number of scored responses in its group, their mean reward, their sample std), each [B].

    Sample std uses Bessel's correction (÷ (n − 1)), as torch.std, TRL and verl do; a group with fewer than two
    scored responses has std 0."""
    groups, inverse = torch.unique(group_index, return_inverse=True)
    weight = scored.to(rewards.dtype)
    count = torch.zeros(len(groups), dtype=rewards.dtype).index_add(0, inverse, weight)
    total = torch.zeros(len(groups), dtype=rewards.dtype).index_add(0, inverse, rewards * weight)
    mean = total / count.clamp(min=1)
    squares = torch.zeros(len(groups), dtype=rewards.dtype).index_add(0, inverse,
                                                                      (rewards - mean[inverse]) ** 2 * weight)
    std = torch.where(count > 1, (squares / (count - 1).clamp(min=1)).sqrt(), torch.zeros_like(count))
    return count[inverse], mean[inverse], std[inverse]


def _broadcast(per_sequence: torch.Tensor, batch: AdvantageInputs) -> torch.Tensor:
    """[B] → [B, T]: one value over each response's tokens; 0 for unscored responses and on padding."""
    per_sequence = torch.where(batch.scored_mask(), per_sequence, torch.zeros_like(per_sequence))
    return per_sequence[:, None] * batch.mask.to(per_sequence.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Critic-free, group baselines
# ---------------------------------------------------------------------------------------------------------------------

@register("grpo")
def grpo(batch: AdvantageInputs, *, eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantage: A_i = (r_i − mean_g) / (std_g + ε), the same for every token of response i.

    Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300, §4.1.2 (outcome supervision). std is the *sample*
    std of the group's scored rewards (÷ (n − 1)). A group whose rewards are all equal has numerator 0 and gets
    advantage 0 (never NaN); so does a group with a single scored response.

    Example: one group, rewards [1, 0, 0, 1] → mean 0.5, sample std √(1/3) = 0.57735 →
    A = [0.86603, −0.86603, −0.86603, 0.86603] (ε = 0); rewards [1, 1, 1] → [0, 0, 0].
    """
    count, mean, std = _group_stats(batch.rewards, batch.group_index, batch.scored_mask())
    return _broadcast((batch.rewards - mean) / (std + eps), batch)


@register("dr_grpo")
def dr_grpo(batch: AdvantageInputs) -> torch.Tensor:
    """GRPO without the std division: A_i = r_i − mean_g.

    Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective" (Dr. GRPO),
    arXiv:2503.20783: dividing by the group std up-weights prompts that are nearly always solved or failed
    (question-level difficulty bias). Pair it with aggregate mode `seq_mean_token_sum_norm` to remove the
    length bias too. Example: rewards [1, 0, 0, 1] → A = [0.5, −0.5, −0.5, 0.5].
    """
    _, mean, _ = _group_stats(batch.rewards, batch.group_index, batch.scored_mask())
    return _broadcast(batch.rewards - mean, batch)


@register("rloo")
def rloo(batch: AdvantageInputs) -> torch.Tensor:
    """REINFORCE Leave-One-Out: A_i = r_i − mean of the OTHER scored responses of the group
    = n/(n − 1) · (r_i − mean_g) for n scored responses; 0 when n < 2.

    Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!"; Ahmadian et al. 2024, "Back to
    Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback", arXiv:2402.14740.
    The baseline does not depend on r_i, so the estimate stays unbiased.
    Example: rewards [1, 0, 0, 1] → baselines [1/3, 2/3, 2/3, 1/3] → A = [0.66667, −0.66667, −0.66667, 0.66667].
    """
    count, mean, _ = _group_stats(batch.rewards, batch.group_index, batch.scored_mask())
    scale = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.zeros_like(count))
    return _broadcast(scale * (batch.rewards - mean), batch)


# ---------------------------------------------------------------------------------------------------------------------
# Returns and GAE (token level)
# ---------------------------------------------------------------------------------------------------------------------

def discounted_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
                       bootstrap: torch.Tensor | None = None) -> torch.Tensor:
    """Return-to-go G_t = r_t + γ·G_{t+1} over each row's masked (right-padded) steps; after the last step
    G = bootstrap (default 0: the episode ended). token_rewards, mask [B, T], bootstrap [B] → [B, T]
    (0 on padding).

    Example: rewards [4, 3, 5, 2], γ = 1 → [14, 10, 7, 2]; γ = 0.5 → G_3 = 2, G_2 = 5 + 1 = 6,
    G_1 = 3 + 3 = 6, G_0 = 4 + 3 = 7 → [7, 6, 6, 2].
    """
    mask = mask.to(token_rewards.dtype)
    running = torch.zeros(token_rewards.shape[0], dtype=token_rewards.dtype) if bootstrap is None else \
        bootstrap.to(token_rewards.dtype)
    out = torch.zeros_like(token_rewards)
    for t in reversed(range(token_rewards.shape[1])):
        m = mask[:, t]
        g = token_rewards[:, t] + gamma * running
        out[:, t] = g * m
        running = torch.where(m > 0, g, running)  # padding passes the running return through unchanged
    return out


@register("gae")
def gae(batch: AdvantageInputs, *, gamma: float = 1.0, lam: float = 0.95) -> torch.Tensor:
    """Generalized Advantage Estimation: δ_t = r_t + γ·V_{t+1} − V_t, A_t = δ_t + γλ·A_{t+1}, per token.

    Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage Estimation",
    arXiv:1506.02438, eq. 16. Needs batch.token_rewards and batch.values [B, T]. After a response's last token
    V = batch.bootstrap (0: terminal, the response ended with eos; V(s_T) for a truncated one).
    Returns for the critic are A + V (`gae_returns`). LLM PPO usually takes γ = 1, λ = 0.95.

    Example: rewards [0, 0, 1], values [0.5, 0.6, 0.7], γ = 1, λ = 0.95, terminal →
    δ = [0.1, 0.1, 0.3], A = [0.46575, 0.385, 0.3], returns [0.96575, 0.985, 1.0].
    """
    if batch.token_rewards is None or batch.values is None:
        raise ValueError("advantage 'gae' needs token_rewards and values (a critic) — pick a critic-free "
                         "estimator (grpo, rloo, …) when the run has no value model")
    rewards, values = batch.token_rewards, batch.values.to(batch.token_rewards.dtype)
    mask = batch.mask.to(rewards.dtype)
    next_value = torch.zeros(rewards.shape[0], dtype=rewards.dtype) if batch.bootstrap is None else \
        batch.bootstrap.to(rewards.dtype)
    next_advantage = torch.zeros_like(next_value)
    out = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t] > 0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        out[:, t] = torch.where(m, advantage, torch.zeros_like(advantage))
        next_value = torch.where(m, values[:, t], next_value)
        next_advantage = torch.where(m, advantage, next_advantage)
    return out


def gae_returns(advantages: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The critic's regression targets A_t + V_t (0 on padding). [B, T] → [B, T]."""
    return (advantages + values.to(advantages.dtype)) * mask.to(advantages.dtype)
