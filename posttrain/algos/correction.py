"""Rollout correction: the sampler is not the trainer, so weigh or drop the tokens where they disagree.

The engine that samples (vLLM, a KV-cache decode, other kernels, maybe another precision) gives each sampled token
a log-prob log μ(y_t) that differs from the trainer's log π_old(y_t) for the same weights — the training–inference
mismatch. The policy-gradient estimate then uses samples from μ as if they came from π_old: off-policy without
saying so, and the runs that collapse for no visible reason are often this. With the per-token ratio

    ρ_t = π_old(y_t) / μ(y_t) = exp(log π_old(y_t) − log μ(y_t))     (both known: the trainer recomputes π_old)

a correction returns per-token weights w_t ≥ 0 (detached) that multiply each token's policy loss, and a keep mask
(0 = the token is dropped from the loss and from its token counts):

    none      w = 1
    tis       truncated IS per token: w_t = min(ρ_t, C)                     (Yao et al. 2025, "Your Efficient RL
              Framework Secretly Brings You Off-Policy RL Training"; TRL's and verl's default for vLLM)
    seq_tis   truncated IS per sequence: w_t = min(Π_s ρ_s, C) for every token of the sequence — unbiased for the
              sequence's likelihood ratio up to the cap, but the product's variance grows with length
    mis       masked IS per token: w_t = ρ_t where 1/C ≤ ρ_t ≤ C, else the token is dropped
              (IcePop, Ling Team 2025; "When Speed Kills Stability", Liu et al. 2025)
    seq_mis   masked IS per sequence: w_t = Π_s ρ_s for the whole sequence where that product is in [1/C, C],
              else the sequence is dropped
    geo_mask  geometric-mean sequence mask: g = exp(mean_t log ρ_t), the per-token average ratio, which does not
              grow with length; a sequence with g outside [1/C, C] is dropped, the rest keep w = 1 (a pure
              rejection, no reweighting; verl's "geometric" rejection sampling)

C is the method's `cap` (declared default below; set with algo.correction_cap). Log-ratios are clamped to ±20
before exponentiating, so no weight overflows.

Worked example (two sequences; log π_old − log μ per token):
    sequence 0: [0.0, log 3 = 1.0986, −0.6931 = log ½]   sequence 1: [0.1, 0.1]
    tis C=2      w = [[1, 2, 0.5], [1.1052, 1.1052]]                 truncated: 1 of 5 tokens
    seq_tis C=2  ratios 3·½ = 1.5 and e^0.2 = 1.2214 → w = [[1.5]·3, [1.2214]·2]
    mis C=2      token 1 of sequence 0 (ρ = 3) dropped; w = [[1, —, 0.5], [1.1052, 1.1052]]
    seq_mis C=1.4  sequence 0 (1.5) dropped; sequence 1 keeps w = 1.2214
    geo_mask C=1.12  g = (1.5)^(1/3) = 1.1447 → dropped; e^0.1 = 1.1052 → kept with w = 1
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.algos.registry import Registry

MAX_LOG_RATIO = 20.0

CORRECTIONS = Registry("rollout correction", flags={"level": "token"})


@dataclass
class Correction:
    weights: torch.Tensor   # [B, T] w_t ≥ 0, detached; 0 wherever keep is 0
    keep: torch.Tensor      # [B, T] float 0/1: 0 drops the token from the loss and its counts
    truncated: torch.Tensor  # [B, T] bool: tokens whose weight the cap lowered


def _log_ratio(train_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return ((train_logps - sampler_logps) * mask).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)


@CORRECTIONS.register("none", hparams={"cap": 1.0})
def none(train_logps, sampler_logps, mask, *, cap: float = 1.0) -> Correction:
    """No correction: w = 1 on every token."""
    return Correction(mask.clone(), mask.clone(), torch.zeros_like(mask, dtype=torch.bool))


@CORRECTIONS.register("tis", hparams={"cap": 2.0})
def tis(train_logps, sampler_logps, mask, *, cap: float = 2.0) -> Correction:
    """Token-level truncated IS: w_t = min(ρ_t, C). [B, T] each → Correction."""
    rho = _log_ratio(train_logps, sampler_logps, mask).exp()
    return Correction(rho.clamp(max=cap) * mask, mask.clone(), (rho > cap) & (mask > 0))


@CORRECTIONS.register("seq_tis", hparams={"cap": 2.0}, level="sequence")
def seq_tis(train_logps, sampler_logps, mask, *, cap: float = 2.0) -> Correction:
    """Sequence-level truncated IS: every token of a sequence gets min(Π_t ρ_t, C)."""
    rho = _log_ratio(train_logps, sampler_logps, mask).sum(-1).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    w = rho.clamp(max=cap)[:, None] * mask
    return Correction(w, mask.clone(), (rho > cap)[:, None] & (mask > 0))


@CORRECTIONS.register("mis", hparams={"cap": 2.0})
def mis(train_logps, sampler_logps, mask, *, cap: float = 2.0) -> Correction:
    """Token-level masked IS: w_t = ρ_t where ρ_t ∈ [1/C, C], else the token is dropped."""
    rho = _log_ratio(train_logps, sampler_logps, mask).exp()
    keep = ((rho >= 1 / cap) & (rho <= cap)).float() * mask
    return Correction(rho * keep, keep, torch.zeros_like(mask, dtype=torch.bool))


@CORRECTIONS.register("seq_mis", hparams={"cap": 2.0}, level="sequence")
def seq_mis(train_logps, sampler_logps, mask, *, cap: float = 2.0) -> Correction:
    """Sequence-level masked IS: w = Π_t ρ_t for a sequence whose product is in [1/C, C], else it is dropped."""
    rho = _log_ratio(train_logps, sampler_logps, mask).sum(-1).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    keep = ((rho >= 1 / cap) & (rho <= cap)).float()[:, None] * mask
    return Correction(rho[:, None] * keep, keep, torch.zeros_like(mask, dtype=torch.bool))


@CORRECTIONS.register("geo_mask", hparams={"cap": 1.1}, level="sequence")
def geo_mask(train_logps, sampler_logps, mask, *, cap: float = 1.1) -> Correction:
    """Geometric-mean sequence mask: drop a sequence whose exp(mean_t log ρ_t) is outside [1/C, C]; w = 1."""
    log_rho = _log_ratio(train_logps, sampler_logps, mask)
    geo = (log_rho.sum(-1) / mask.sum(-1).clamp(min=1)).exp()
    keep = ((geo >= 1 / cap) & (geo <= cap)).float()[:, None] * mask
    return Correction(keep.clone(), keep, torch.zeros_like(mask, dtype=torch.bool))


def get(name: str):
    """The correction registered under `name`; an unknown name raises listing the valid ones."""
    return CORRECTIONS.get(name)


def metrics(correction: Correction, mask: torch.Tensor) -> dict[str, float]:
    """rollout/correction_truncated_frac and _masked_frac: shares of the completion tokens whose weight the cap
    lowered, and that were dropped; rollout/correction_weight_mean over the kept tokens."""
    n = mask.sum().clamp(min=1)
    kept = correction.keep.sum().clamp(min=1)
    return {"rollout/correction_truncated_frac": (correction.truncated.float() * mask).sum().div(n).item(),
            "rollout/correction_masked_frac": ((1 - correction.keep) * mask).sum().div(n).item(),
            "rollout/correction_weight_mean": (correction.weights * correction.keep).sum().div(kept).item()}
