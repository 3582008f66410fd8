"""KL between the policy and the reference, per token: the k1/k2/k3 estimators and the KL coefficient controllers.

All three estimate KL(π‖π_ref) from tokens sampled from π, using only the two log-probs of each sampled token
(Schulman 2020, "Approximating KL Divergence", http://joschu.net/blog/kl-approx.html). With
log r = log π_ref(y_t) − log π(y_t):

    k1 = −log r                 unbiased, high variance, can be negative per token
    k2 = ½ (log r)²             biased (low for small KL), low variance, ≥ 0; its gradient is that of the true KL
    k3 = (r − 1) − log r        unbiased, low variance, ≥ 0 ("low_var_kl" in verl, GRPO's KL term)

Where the KL goes is the loop's choice: `where: reward` subtracts β·k per token from the reward (PPO,
REINFORCE++; usually k1), `where: loss` adds β·k to the policy loss (GRPO; usually k3), reduced by aggregate.py.

Worked example (one token): log π = −1.0, log π_ref = −1.5 → log r = −0.5:
k1 = 0.5, k2 = 0.125, k3 = e^−0.5 − 1 + 0.5 = 0.10653.
"""

from __future__ import annotations

from typing import Callable

import torch

from posttrain.algos.registry import Registry

MAX_LOG_RATIO = 20.0  # k3 exponentiates log r: beyond ±20 the token is already hopeless and e^r would overflow

ESTIMATORS = Registry("KL estimator")


@ESTIMATORS.register("k1")
def k1(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """log π − log π_ref per token. logps, ref_logps [B, T] → [B, T]. Example: −1.0, −1.5 → 0.5."""
    return logps - ref_logps


@ESTIMATORS.register("k2")
def k2(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """½ (log π − log π_ref)² per token. [B, T] → [B, T]. Example: −1.0, −1.5 → 0.125."""
    return 0.5 * (logps - ref_logps) ** 2


@ESTIMATORS.register("k3")
def k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """(r − 1) − log r per token, log r = log π_ref − log π clamped to ±MAX_LOG_RATIO. [B, T] → [B, T].

    Example: −1.0, −1.5 → e^−0.5 − 1 + 0.5 = 0.10653; equal log-probs → 0.
    """
    log_ratio = (ref_logps - logps).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    return torch.expm1(log_ratio) - log_ratio


def get(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The estimator registered under `name`; an unknown name raises ValueError listing the valid ones."""
    return ESTIMATORS.get(name)


class FixedKLController:
    """A constant KL coefficient β."""

    def __init__(self, value: float):
        self.value = value

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """β steered towards a target KL (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences",
    arXiv:1909.08593, §2.2): after each step with measured KL,

        e = clip(KL / target − 1, −0.2, 0.2);   β ← β · (1 + e · n_steps / horizon)

    where n_steps is the number of samples (or steps) the KL was measured over, so β changes by at most 20% per
    `horizon` of them. Example: β = 0.1, target 6, horizon 10000, measured KL 12 over 512 samples →
    e = 0.2, β = 0.1 · (1 + 0.2·512/10000) = 0.101024; measured 3 → e = −0.2 (clipped from −0.5),
    β = 0.098976.
    """

    def __init__(self, value: float, target: float, horizon: float):
        super().__init__(value)
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got {target} and {horizon}")
        self.target, self.horizon = target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
