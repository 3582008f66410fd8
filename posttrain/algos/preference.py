"""Offline preference losses (the DPO family): a registry of per-example losses.

Every paired loss is `fn(logps: PreferenceLogps, *, beta=0.1, <its own keywords>) -> PreferenceLoss`, where
`logps` holds, per pair, the *summed* log-probability of each response's completion tokens and the token
counts (shapes [B]). The loss is per pair, shape [B]; the loop reduces it (sum / global number of pairs, see
`aggregate.py` for why the normalizer is global). KTO is unpaired and has its own signature (see `kto`).

What each entry of `LOSSES` declares (posttrain.algos.registry), read by the loop to call a loss without knowing it:

- `needs_reference`:  it reads `ref_chosen` / `ref_rejected` (and raises ValueError on None);
- `unpaired`:         it is fed single responses with a desirable/undesirable label instead of pairs;
- `moving_reference`: its reference is not frozen: the loop keeps a live copy and updates it (tr_dpo);
- `hparams`:          its keywords besides `beta`, with their defaults (each is a `preference.*` field).

Notation in the docstrings: π_c, π_r are the summed policy log-probs of the chosen / rejected completion,
ref_c, ref_r the same under the frozen reference, |y_c|, |y_r| the token counts, a = π/|y| the token-averaged
log-prob, h = (π_c − ref_c) − (π_r − ref_r) the DPO log-ratio margin, NLL_c = −π_c/|y_c|.

The running example of the docstrings (B = 1): β = 0.1, π_c = −10, π_r = −12, ref_c = −11, ref_r = −10,
|y_c| = 5, |y_r| = 4 — so h = 1 − (−2) = 3, βh = 0.3, a_c = −2, a_r = −3, NLL_c = 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from posttrain.algos.registry import Registry


@dataclass
class PreferenceLogps:
    """Summed log-probs of each response's completion tokens, and their token counts. Shapes [B]."""

    chosen: torch.Tensor            # Σ_t log π_θ(y_w,t | x, y_w,<t)
    rejected: torch.Tensor          # Σ_t log π_θ(y_l,t | x, y_l,<t)
    chosen_tokens: torch.Tensor     # number of completion tokens of y_w (float or long)
    rejected_tokens: torch.Tensor
    ref_chosen: torch.Tensor | None = None     # the same under the frozen reference; None when reference-free
    ref_rejected: torch.Tensor | None = None


@dataclass
class PreferenceLoss:
    losses: torch.Tensor            # [B] per-pair loss (the loop reduces: sum / global number of pairs)
    chosen_rewards: torch.Tensor    # [B] detached implicit reward of the chosen response (for metrics)
    rejected_rewards: torch.Tensor  # [B] detached


LOSSES = Registry("preference loss", flags={"needs_reference": True, "unpaired": False, "moving_reference": False})
register = LOSSES.register


def get(name: str) -> Callable[..., PreferenceLoss]:
    """The loss registered under `name`; an unknown name raises ValueError listing the valid ones."""
    return LOSSES.get(name)


def names() -> list[str]:
    return sorted(LOSSES)


# ---------------------------------------------------------------------------------------------------------
# Shared pieces (each used by several losses below)
# ---------------------------------------------------------------------------------------------------------

def _log_ratios(logps: PreferenceLogps, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(π_c − ref_c, π_r − ref_r), each [B]; fails early when the loop gave no reference."""
    if logps.ref_chosen is None or logps.ref_rejected is None:
        raise ValueError(f"preference loss '{name}' needs reference log-probs (ref_chosen, ref_rejected); "
                         f"compute them with the frozen reference model, or pick a reference-free loss "
                         f"such as simpo, orpo or rrhf")
    return logps.chosen - logps.ref_chosen, logps.rejected - logps.ref_rejected


def _averages(logps: PreferenceLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-averaged log-probs (a_c, a_r), each [B]. A count of 0 is treated as 1 so an empty completion
    gives 0 instead of NaN."""
    n_c = logps.chosen_tokens.to(logps.chosen.dtype).clamp(min=1)
    n_r = logps.rejected_tokens.to(logps.rejected.dtype).clamp(min=1)
    return logps.chosen / n_c, logps.rejected / n_r


def _result(losses, chosen_rewards, rejected_rewards) -> PreferenceLoss:
    return PreferenceLoss(losses, chosen_rewards.detach(), rejected_rewards.detach())


def _dpo_parts(logps: PreferenceLogps, beta: float, name: str):
    """(βh [B], β(π_c − ref_c) [B], β(π_r − ref_r) [B]): the logit and implicit rewards of the DPO family."""
    chosen_ratio, rejected_ratio = _log_ratios(logps, name)
    return beta * (chosen_ratio - rejected_ratio), beta * chosen_ratio, beta * rejected_ratio


# ---------------------------------------------------------------------------------------------------------
# Reference-based paired losses. Implicit reward of a response: β·(log π − log π_ref).
# ---------------------------------------------------------------------------------------------------------

@register("dpo")
def dpo(logps: PreferenceLogps, *, beta: float = 0.1) -> PreferenceLoss:
    """Direct Preference Optimization: loss = −log σ(β·h), h = (π_c − ref_c) − (π_r − ref_r).

    Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
    arXiv:2305.18290, eq. 7. Shapes: every field of `logps` [B] → losses [B].

    Example: β = 0.1, π_c = −10, π_r = −12, ref_c = −11, ref_r = −10 → h = 3,
    loss = −log σ(0.3) = log(1 + e^−0.3) = 0.55436; rewards 0.1 (chosen), −0.2 (rejected).
    Policy equal to the reference → h = 0 → loss = ln 2 = 0.69315.
    """
    logits, chosen_rewards, rejected_rewards = _dpo_parts(logps, beta, "dpo")
    return _result(-F.logsigmoid(logits), chosen_rewards, rejected_rewards)


@register("cdpo", hparams={"label_smoothing": 0.1})
def cdpo(logps: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.1) -> PreferenceLoss:
    """Conservative DPO: each label is assumed flipped with probability ε (`label_smoothing`).

    loss = (1 − ε)·(−log σ(βh)) + ε·(−log σ(−βh)) — the binary cross-entropy against the soft target 1 − ε.
    Mitchell 2023, "A note on DPO with noisy preferences & relationship to IPO" (no arXiv id; the cDPO note);
    TRL's `label_smoothing` with loss_type "sigmoid". ε = 0 gives `dpo`. Shapes [B] → [B].

    Example (running example, h = 3): ε = 0.1 → 0.9·log(1 + e^−0.3) + 0.1·log(1 + e^0.3)
    = 0.9·0.55436 + 0.1·0.85436 = 0.58436.
    """
    logits, chosen_rewards, rejected_rewards = _dpo_parts(logps, beta, "cdpo")
    eps = label_smoothing
    losses = (1 - eps) * -F.logsigmoid(logits) + eps * -F.logsigmoid(-logits)
    return _result(losses, chosen_rewards, rejected_rewards)


@register("robust", hparams={"label_smoothing": 0.1})
def robust(logps: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 0.1) -> PreferenceLoss:
    """Robust DPO (rDPO): an unbiased estimate of the clean-label DPO loss when labels flip with rate ε < ½.

    loss = ((1 − ε)·(−log σ(βh)) − ε·(−log σ(−βh))) / (1 − 2ε).
    Chowdhury et al. 2024, "Provably Robust DPO: Aligning Language Models with Noisy Feedback",
    arXiv:2403.00409. ε = 0 gives `dpo`. Unlike cdpo the loss can be negative. Shapes [B] → [B].

    Example (running example, h = 3): ε = 0.1 → (0.9·0.55436 − 0.1·0.85436) / 0.8 = 0.51686.
    """
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    logits, chosen_rewards, rejected_rewards = _dpo_parts(logps, beta, "robust")
    eps = label_smoothing
    losses = ((1 - eps) * -F.logsigmoid(logits) - eps * -F.logsigmoid(-logits)) / (1 - 2 * eps)
    return _result(losses, chosen_rewards, rejected_rewards)


@register("ipo")
def ipo(logps: PreferenceLogps, *, beta: float = 0.1) -> PreferenceLoss:
    """Identity Preference Optimization: loss = (h − 1/(2β))², β playing the paper's τ.

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences",
    arXiv:2310.12036 (the sampled IPO loss). We keep the paper's form: h uses *summed* log-probs. (TRL's "ipo"
    averages the log-probs per token instead, which changes the scale of h and so the meaning of β.)
    Shapes [B] → [B].

    Example (running example, h = 3): β = 0.1 → target margin 1/(2·0.1) = 5, loss = (3 − 5)² = 4.
    """
    chosen_ratio, rejected_ratio = _log_ratios(logps, "ipo")
    losses = (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2
    return _result(losses, beta * chosen_ratio, beta * rejected_ratio)


@register("hinge")
def hinge(logps: PreferenceLogps, *, beta: float = 0.1) -> PreferenceLoss:
    """Hinge loss on the DPO logit (SLiC-style calibration): loss = max(0, 1 − βh).

    Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback", arXiv:2305.10425:
    the rank-calibration hinge with margin δ = 1/β on the reference-normalized log-ratio (the form TRL calls
    "hinge"); SLiC's separate SFT regularizer is not included. Shapes [B] → [B].

    Example (running example, h = 3): 1 − 0.3 = 0.7; once βh ≥ 1 the loss and its gradient are 0.
    """
    logits, chosen_rewards, rejected_rewards = _dpo_parts(logps, beta, "hinge")
    return _result(torch.relu(1 - logits), chosen_rewards, rejected_rewards)


@register("rpo", hparams={"alpha": 1.0})
def rpo(logps: PreferenceLogps, *, beta: float = 0.1, alpha: float = 1.0) -> PreferenceLoss:
    """DPO plus an NLL term on the chosen response: loss = −log σ(βh) + α·NLL_c, NLL_c = −π_c/|y_c|.

    Pang et al. 2024, "Iterative Reasoning Preference Optimization", arXiv:2404.19733 (the NLL is
    normalized by the chosen length, as in the paper; TRL's `rpo_alpha`). α = 0 gives `dpo`. Shapes [B] → [B].

    Example (running example): α = 1 → 0.55436 + 1·(10/5) = 2.55436.
    """
    logits, chosen_rewards, rejected_rewards = _dpo_parts(logps, beta, "rpo")
    avg_chosen, _ = _averages(logps)
    return _result(-F.logsigmoid(logits) - alpha * avg_chosen, chosen_rewards, rejected_rewards)


@register("tr_dpo", moving_reference=True)
def tr_dpo(logps: PreferenceLogps, *, beta: float = 0.1) -> PreferenceLoss:
    """Trust-Region DPO: the per-pair loss is exactly `dpo`'s.

    Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good Alignment", arXiv:2404.09656. The trust
    region lives in the *reference*, which the training loop updates, not in this loss: either softly every
    step, ref ← α·π_θ + (1 − α)·ref (paper: α ≈ 0.5–0.6), or by hard replacement ref ← π_θ every τ steps.
    Shapes [B] → [B]. Example: identical to `dpo` (0.55436 on the running example).
    """
    return dpo(logps, beta=beta)


@register("dpop", hparams={"lam": 50.0})
def dpop(logps: PreferenceLogps, *, beta: float = 0.1, lam: float = 50.0) -> PreferenceLoss:
    """DPO-Positive: loss = −log σ(β·(h − λ·max(0, ref_c − π_c))).

    Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive",
    arXiv:2402.13228. The penalty is active only once the chosen log-prob falls below the reference's,
    which plain DPO allows (it only needs the margin to grow). Default λ = 50 follows the paper.
    Shapes [B] → [B].

    Example: β = 0.1, λ = 1, π_c = −12, π_r = −14, ref_c = −11, ref_r = −10 → h = −1 − (−4) = 3, penalty
    max(0, −11 + 12) = 1, loss = −log σ(0.1·(3 − 1)) = log(1 + e^−0.2) = 0.59814. On the running example
    π_c > ref_c, so the penalty is 0 and the loss equals dpo's 0.55436.
    """
    chosen_ratio, rejected_ratio = _log_ratios(logps, "dpop")
    penalty = torch.relu(-chosen_ratio)
    losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio - lam * penalty))
    return _result(losses, beta * chosen_ratio, beta * rejected_ratio)


@register("exo_pair", hparams={"label_smoothing": 1e-3})
def exo_pair(logps: PreferenceLogps, *, beta: float = 0.1, label_smoothing: float = 1e-3) -> PreferenceLoss:
    """EXO, pairwise form: the reverse KL from the model's preference probability to the soft label.

    With p = σ(βh) (the policy's implied probability that y_c beats y_r) and the target (1 − ε, ε):
    loss = p·(log p − log(1 − ε)) + (1 − p)·(log(1 − p) − log ε), so 0 < ε < 1 is required.
    Ji et al. 2024, "Towards Efficient Exact Optimization of Language Model Alignment", arXiv:2402.00856,
    the K = 2 case of eq. 16 with binary preference labels. DPO minimizes the forward KL instead (mean-seeking);
    EXO's reverse KL is mode-seeking. Shapes [B] → [B].

    Example (running example, βh = 0.3), ε = 0.1: p = σ(0.3) = 0.57444,
    loss = 0.57444·log(0.57444/0.9) + 0.42556·log(0.42556/0.1) = 0.35838.
    """
    if not 0 < label_smoothing < 1:
        raise ValueError(f"exo_pair needs 0 < label_smoothing < 1 (log ε must be finite), got {label_smoothing}")
    logits, chosen_rewards, rejected_rewards = _dpo_parts(logps, beta, "exo_pair")
    log_p, log_q = F.logsigmoid(logits), F.logsigmoid(-logits)
    losses = (log_p.exp() * (log_p - math.log(1 - label_smoothing))
              + log_q.exp() * (log_q - math.log(label_smoothing)))
    return _result(losses, chosen_rewards, rejected_rewards)


@register("nca_pair")
def nca_pair(logps: PreferenceLogps, *, beta: float = 0.1) -> PreferenceLoss:
    """Noise Contrastive Alignment, pairwise form, on the implicit rewards r = β(log π − log π_ref):

    loss = −log σ(r_c) − ½·log σ(−r_c) − ½·log σ(−r_r).
    Chen et al. 2024, "Noise Contrastive Alignment of Language Models with Explicit Rewards",
    arXiv:2402.05369 (NCA with K = 2 and a binary preference). Unlike DPO it scores each response against an
    absolute threshold, so the chosen likelihood is not free to fall as long as the margin grows.
    Shapes [B] → [B].

    Example (running example): r_c = 0.1, r_r = −0.2 →
    log(1 + e^−0.1) + ½·log(1 + e^0.1) + ½·log(1 + e^−0.2) = 1.31566.
    """
    _, chosen_rewards, rejected_rewards = _dpo_parts(logps, beta, "nca_pair")
    losses = (-F.logsigmoid(chosen_rewards) - 0.5 * F.logsigmoid(-chosen_rewards)
              - 0.5 * F.logsigmoid(-rejected_rewards))
    return _result(losses, chosen_rewards, rejected_rewards)


@register("apo_zero")
def apo_zero(logps: PreferenceLogps, *, beta: float = 0.1) -> PreferenceLoss:
    """Anchored Preference Optimization, "zero" variant: push chosen up and rejected down, each anchored at 0.

    loss = (1 − σ(r_c)) + σ(r_r), r = β(log π − log π_ref).
    D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions",
    arXiv:2408.06266, eq. 7. For data whose chosen answers are better than the model's own. Shapes [B] → [B].

    Example (running example): r_c = 0.1, r_r = −0.2 → 1 − σ(0.1) + σ(−0.2) = 1 − 0.52498 + 0.45017 = 0.92519.
    """
    _, chosen_rewards, rejected_rewards = _dpo_parts(logps, beta, "apo_zero")
    losses = 1 - torch.sigmoid(chosen_rewards) + torch.sigmoid(rejected_rewards)
    return _result(losses, chosen_rewards, rejected_rewards)


@register("apo_down")
def apo_down(logps: PreferenceLogps, *, beta: float = 0.1) -> PreferenceLoss:
    """Anchored Preference Optimization, "down" variant: push chosen down, and rejected down faster.

    loss = σ(r_c) + (1 − σ(r_c − r_r)) = σ(r_c) + 1 − σ(βh).
    D'Oosterlinck et al. 2024, arXiv:2408.06266, eq. 8. For data whose chosen answers are worse than the
    model's own: the gradient on π_c may be positive (it lowers the chosen likelihood). Shapes [B] → [B].

    Example (running example): σ(0.1) + 1 − σ(0.3) = 0.52498 + 1 − 0.57444 = 0.95054.
    """
    logits, chosen_rewards, rejected_rewards = _dpo_parts(logps, beta, "apo_down")
    losses = torch.sigmoid(chosen_rewards) + 1 - torch.sigmoid(logits)
    return _result(losses, chosen_rewards, rejected_rewards)


# ---------------------------------------------------------------------------------------------------------
# Reference-free paired losses. Each reports its own natural score as the "reward" (see each docstring).
# ---------------------------------------------------------------------------------------------------------

@register("simpo", needs_reference=False, hparams={"gamma": 0.5})
def simpo(logps: PreferenceLogps, *, beta: float = 0.1, gamma: float = 0.5) -> PreferenceLoss:
    """Simple Preference Optimization: loss = −log σ(β·(a_c − a_r) − γ), a = π/|y|; reward = β·a.

    Meng et al. 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward", arXiv:2405.14734,
    eq. 6. `gamma` is the *absolute* margin γ of eq. 6 (as TRL's `simpo_gamma`); the authors' code takes the
    ratio γ/β instead — multiply it by β to convert. The paper tunes β around 2–2.5 (up to 10) with
    γ/β ≈ 0.3–0.5; the registry default β = 0.1 is the DPO default and is usually too small for SimPO.
    Shapes [B] → [B].

    Example: β = 2, γ = 0.5, π_c = −10 over 5 tokens (a_c = −2), π_r = −12 over 4 tokens (a_r = −3) →
    loss = −log σ(2·1 − 0.5) = log(1 + e^−1.5) = 0.20141; rewards −4 (chosen), −6 (rejected).
    """
    avg_chosen, avg_rejected = _averages(logps)
    chosen_rewards, rejected_rewards = beta * avg_chosen, beta * avg_rejected
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return _result(losses, chosen_rewards, rejected_rewards)


def _log_odds(avg_logp: torch.Tensor) -> torch.Tensor:
    """log(p / (1 − p)) for p = exp(a), a ≤ 0, computed as a − log(−expm1(a)) to stay exact near p = 1."""
    return avg_logp - torch.log(-torch.expm1(avg_logp))


@register("orpo", needs_reference=False, hparams={"lam": 0.1})
def orpo(logps: PreferenceLogps, *, beta: float = 0.1, lam: float = 0.1) -> PreferenceLoss:
    """Odds Ratio Preference Optimization: loss = NLL_c − λ·log σ(log odds(a_c) − log odds(a_r)).

    Hong et al. 2024, "ORPO: Monolithic Preference Optimization without Reference Model", arXiv:2403.07691,
    eqs. 6–7, with odds(y) = P/(1 − P) and P = exp(a), a = π/|y| the token-averaged log-prob;
    NLL_c = −a_c (token-mean over the chosen response). λ is `lam` (paper default 0.1). TRL calls λ `beta`;
    here `beta` does NOT enter the loss — it only scales the reported rewards β·a, as in TRL.
    If a = 0 exactly (P = 1) the log-odds is +∞. Shapes [B] → [B].

    Example: λ = 0.1, a_c = −2 (π_c = −10 over 5 tokens), a_r = −3 (π_r = −12 over 4) →
    log odds = −2 − log(1 − e^−2) = −1.85459 and −3 − log(1 − e^−3) = −2.94893, difference 1.09434,
    −log σ(1.09434) = 0.28875, loss = 2 + 0.1·0.28875 = 2.02888.
    """
    avg_chosen, avg_rejected = _averages(logps)
    odds_ratio_loss = -F.logsigmoid(_log_odds(avg_chosen) - _log_odds(avg_rejected))
    return _result(-avg_chosen + lam * odds_ratio_loss, beta * avg_chosen, beta * avg_rejected)


@register("rrhf", needs_reference=False)
def rrhf(logps: PreferenceLogps, *, beta: float = 0.1) -> PreferenceLoss:
    """Rank Responses to align with Human Feedback, pair form: loss = max(0, a_r − a_c) + NLL_c.

    Yuan et al. 2023, "RRHF: Rank Responses to Align Language Models with Human Feedback", arXiv:2304.05302,
    with K = 2 (a = length-averaged log-prob; the NLL is on the better response, token-mean as in the
    authors' code). `beta` is accepted for the uniform signature and unused; reward = a (no scaling).
    For K ≥ 2 ranked responses use `rrhf_ranking`. Shapes [B] → [B].

    Example: a_c = −2, a_r = −3 → 0 + 2 = 2; swapped (π_c = −12 over 4, π_r = −10 over 5) → 1 + 3 = 4.
    """
    avg_chosen, avg_rejected = _averages(logps)
    return _result(torch.relu(avg_rejected - avg_chosen) - avg_chosen, avg_chosen, avg_rejected)


def rrhf_ranking(avg_logps: torch.Tensor, scores: torch.Tensor, nll_best: torch.Tensor) -> torch.Tensor:
    """RRHF for K ≥ 2 responses per prompt: Σ_{i,j: s_i < s_j} max(0, a_i − a_j) + NLL of the best response.

    avg_logps [B, K] (token-averaged log-probs a), scores [B, K] (reward of each response; ties add no term),
    nll_best [B] (token-mean NLL of each row's best-scored response, computed by the caller) → losses [B].
    Yuan et al. 2023, arXiv:2304.05302. With K = 2 it equals `rrhf`.

    Example: a = [−1, −2, −3] with scores [0, 1, 2] (the model ranks them exactly backwards), NLL_best = 3 →
    pairs (0<1): 1, (0<2): 2, (1<2): 1 → 4 + 3 = 7.
    """
    worse_than = scores[:, :, None] < scores[:, None, :]            # [B, K, K]: s_i < s_j
    violation = torch.relu(avg_logps[:, :, None] - avg_logps[:, None, :])  # max(0, a_i − a_j)
    return (violation * worse_than).sum(dim=(1, 2)) + nll_best


# ---------------------------------------------------------------------------------------------------------
# Unpaired
# ---------------------------------------------------------------------------------------------------------

def kto_reference_point(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0 from *mismatched* pairs: mean(log π − log π_ref), clamped at 0, detached.

    logps, ref_logps [M]: summed log-probs of completions paired with a *different* example's prompt (e.g. the
    batch's completions shifted by one), so the estimate tracks KL(π‖π_ref) without rewarding the current
    completion. → scalar. Example: log-ratios [1, −3, 4] → 2/3 = 0.66667; [−1, −2] → 0.
    """
    log_ratios = logps - ref_logps
    return kto_reference_point_of_sums(log_ratios.sum(), log_ratios.numel())


def kto_reference_point_of_sums(log_ratio_sum: torch.Tensor, count) -> torch.Tensor:
    """`kto_reference_point` from Σ (log π − log π_ref) and the number of examples, as the loop gathers them over
    micro-batches and ranks: max(0, sum / count), detached. Example: sum 2 over 3 → 0.66667."""
    return (log_ratio_sum / count).clamp(min=0).detach()


@register("kto", unpaired=True, hparams={"desirable_weight": 1.0, "undesirable_weight": 1.0})
def kto(logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor | float, *,
        beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> PreferenceLoss:
    """Kahneman–Tversky Optimization, on single responses labelled desirable or undesirable.

    With r_i = log π(y_i|x_i) − log π_ref(y_i|x_i) (summed over completion tokens) and the reference point z0:
    desirable:   loss_i = w_d·(1 − σ(β(r_i − z0)))
    undesirable: loss_i = w_u·(1 − σ(β(z0 − r_i)))
    Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", arXiv:2402.01306
    (loss = λ_y − v(x, y), v the prospect-theoretic value function).
    z0 (`kl`, scalar) must already be detached and clamped ≥ 0 by the caller: it is estimated from mismatched
    prompt/completion pairs as mean(log π − log π_ref), clamped at 0 (`kto_reference_point`).
    Shapes: logps, ref_logps, desirable (bool) [B] → losses [B]. chosen_rewards = β·r_i where desirable and 0
    elsewhere, rejected_rewards = β·r_i where undesirable and 0 elsewhere (metrics should average over the
    matching examples only).

    Example: β = 0.1, z0 = 0.5, log π = [−10, −12], log π_ref = [−11, −10], desirable = [True, False] →
    r = [1, −2], losses = [1 − σ(0.05), 1 − σ(0.25)] = [0.48750, 0.43782].
    """
    if ref_logps is None:
        raise ValueError("preference loss 'kto' needs reference log-probs (ref_logps)")
    log_ratio = logps - ref_logps
    z0 = torch.as_tensor(kl, dtype=log_ratio.dtype, device=log_ratio.device)
    desirable = desirable.bool()
    losses = torch.where(desirable,
                         desirable_weight * (1 - torch.sigmoid(beta * (log_ratio - z0))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z0 - log_ratio))))
    rewards = beta * log_ratio
    zero = torch.zeros_like(rewards)
    return _result(losses, torch.where(desirable, rewards, zero), torch.where(desirable, zero, rewards))
