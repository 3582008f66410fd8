"""Token-level distillation losses between a student and a teacher (a registry).

One signature for the registry (DESIGN §3):

    distill.get(name)(student_logits, teacher_logits, mask, *, temperature=1.0, **hyperparameters) -> losses

`student_logits`, `teacher_logits` [B, T, V] are the two models' next-token logits at the same positions over
the same vocabulary (the loop slices both to the shared tokenizer's length first); `mask` [B, T] is 1 where a
token counts. The result is the per-token loss [B, T] (0 where mask is 0), to be MINIMIZED and reduced by the
loop with aggregate.py. The teacher is a constant: its logits are detached, only the student gets gradients.

With p_S, p_T the two next-token distributions at temperature τ (softmax(z / τ)):

    forward_kl   KL(p_T ‖ p_S) = Σ_v p_T log(p_T / p_S)    mean-seeking: cover every token the teacher likes
                                                          (Hinton et al. 2015; = cross-entropy to the soft
                                                          targets minus the teacher's entropy)
    reverse_kl   KL(p_S ‖ p_T) = Σ_v p_S log(p_S / p_T)    mode-seeking: put mass only where the teacher does
                                                          (MiniLLM, Gu et al. 2024, arXiv:2306.08543)
    jsd          β·KL(p_T ‖ M) + (1−β)·KL(p_S ‖ M),        generalized Jensen–Shannon, M = β·p_T + (1−β)·p_S,
                                                          between the two (GKD, Agarwal et al. 2024,
                                                          arXiv:2306.13649); bounded, symmetric at β = 0.5

Every loss is multiplied by τ². Hinton et al. 2015 ("Distilling the Knowledge in a Neural Network",
arXiv:1503.02531, §2): the gradient of a divergence between softened distributions scales like 1/τ², so the
τ² keeps its size comparable across temperatures (and next to a cross-entropy term) when τ is changed.

Worked example (one token, V = 2): teacher logits [0, ln 3] → p_T = [1/4, 3/4]; student logits [0, 0] →
p_S = [1/2, 1/2]. At τ = 1:
    forward_kl = 1/4·ln(1/2) + 3/4·ln(3/2)                   = 0.130812
    reverse_kl = 1/2·ln 2    + 1/2·ln(2/3)                   = 0.143841
    jsd, β = 0.5: M = [3/8, 5/8], ½·KL(p_T‖M) + ½·KL(p_S‖M)  = 0.033822
and the gradient of forward_kl w.r.t. the student's logits is p_S − p_T = [0.25, −0.25].
At τ = 2 the teacher softens to p_T = [1/(1+√3), √3/(1+√3)] = [0.3660, 0.6340] (the student stays uniform):
    forward_kl = 4·0.036341 = 0.145363, reverse_kl = 0.149009, jsd(0.5) = 0.036675,
and the forward_kl gradient is τ·(p_S − p_T) = [0.26795, −0.26795].
Identical student and teacher give 0 for every loss, at every τ and β.

Memory: the losses are computed only at the masked positions (an [N, V] slice, N = tokens that count), in
float32 log-space (log_softmax, never softmax-then-log, so tiny probabilities cannot underflow to log 0). Beyond
the inputs, forward/reverse KL hold two [N, V] log-prob tensors, the JSD one more (log M).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from posttrain.algos.registry import Registry

# Each loss declares its hyperparameters besides `temperature`, with their defaults (each is a `distill.*` field).
DISTILL_LOSSES = Registry("distillation loss")
register = DISTILL_LOSSES.register


def get(name: str) -> Callable[..., torch.Tensor]:
    """The loss registered under `name`; an unknown name raises ValueError listing the valid ones."""
    return DISTILL_LOSSES.get(name)


def _log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
               temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p_S, log p_T) at temperature τ, each [N, V] float32 over the N positions where mask is set, and
    the boolean mask [B, T]. The teacher side is detached."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ; slice both to the shared vocabulary first")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    keep = mask.bool()
    log_p_student = F.log_softmax(student_logits[keep].float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.detach()[keep].float() / temperature, dim=-1)
    return log_p_student, log_p_teacher, keep


def _per_token(values: torch.Tensor, keep: torch.Tensor, temperature: float) -> torch.Tensor:
    """Scatter the [N] per-position values back to [B, T] (0 where not kept), times Hinton's τ²."""
    out = torch.zeros(keep.shape, dtype=values.dtype, device=values.device)
    return out.masked_scatter(keep, values * temperature ** 2)


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row from log-probs [N, V] → [N]: Σ_v p·(log p − log q)."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


@register("forward_kl")
def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, *,
               temperature: float = 1.0) -> torch.Tensor:
    """τ²·KL(p_T ‖ p_S) per token: the classic distillation loss, the student matches the teacher's soft targets.

    Hinton, Vinyals, Dean 2015, "Distilling the Knowledge in a Neural Network", arXiv:1503.02531. Equal to the
    cross-entropy −Σ p_T log p_S minus the teacher's entropy (a constant), so its gradient w.r.t. the student's
    logits z_S is the familiar τ·(p_S − p_T). Mean-seeking: the student is pushed to cover every token the
    teacher gives mass to. [B, T, V], [B, T, V], [B, T] → [B, T].

    Example: p_T = [1/4, 3/4], p_S = [1/2, 1/2], τ = 1 → 1/4·ln(1/2) + 3/4·ln(3/2) = 0.130812, gradient
    [0.25, −0.25]; the same logits at τ = 2 → 0.145363.
    """
    log_p_student, log_p_teacher, keep = _log_probs(student_logits, teacher_logits, mask, temperature)
    return _per_token(_kl(log_p_teacher, log_p_student), keep, temperature)


@register("reverse_kl")
def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, *,
               temperature: float = 1.0) -> torch.Tensor:
    """τ²·KL(p_S ‖ p_T) per token: mode-seeking, the student puts its mass where the teacher's is and may
    ignore some of the teacher's modes (preferred when the student is much smaller; MiniLLM, Gu et al. 2024,
    arXiv:2306.08543; one end of GKD's family, Agarwal et al. 2024). Gradient w.r.t. z_S (τ = 1):
    p_S,v·(log p_S,v − log p_T,v − KL). [B, T, V], [B, T, V], [B, T] → [B, T].

    Example: p_T = [1/4, 3/4], p_S = [1/2, 1/2] → 1/2·ln 2 + 1/2·ln(2/3) = 0.143841, gradient
    [0.274653, −0.274653]; at τ = 2 → 0.149009.
    """
    log_p_student, log_p_teacher, keep = _log_probs(student_logits, teacher_logits, mask, temperature)
    return _per_token(_kl(log_p_student, log_p_teacher), keep, temperature)


@register("jsd", hparams={"beta": 0.5})
def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, *,
                    temperature: float = 1.0, beta: float = 0.5) -> torch.Tensor:
    """τ²·JSD(β) per token: β·KL(p_T ‖ M) + (1−β)·KL(p_S ‖ M) with the mixture M = β·p_T + (1−β)·p_S.

    Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes"
    (GKD), arXiv:2306.13649, §3. log M is computed as logsumexp(log β + log p_T, log(1−β) + log p_S), so it
    stays finite where one distribution underflows. Bounded (by −β·ln β − (1−β)·ln(1−β) ≤ ln 2 before τ²)
    where a KL can be infinite; symmetric at β = 0.5 (the classic JSD): swapping teacher and student gives
    the same value.

    Limits: JSD(β) → 0 as β → 0 or β → 1 (M collapses onto one of the two distributions), but
    JSD(β)/β → KL(p_T ‖ p_S) (forward KL) as β → 0 and JSD(β)/(1−β) → KL(p_S ‖ p_T) (reverse KL) as β → 1,
    so small β behaves like a scaled-down forward KL and β near 1 like a scaled-down reverse KL. At exactly
    0 or 1 the loss is identically 0 (no signal), so β must lie strictly between: use forward_kl or reverse_kl
    for the end points. [B, T, V], [B, T, V], [B, T] → [B, T].

    Example: p_T = [1/4, 3/4], p_S = [1/2, 1/2] → β = 0.5: M = [3/8, 5/8] and JSD = 0.033822; β = 0.1:
    0.011831 (≈ 0.1 × forward KL 0.1308); β = 0.9: 0.012752 (≈ 0.1 × reverse KL 0.1438); τ = 2, β = 0.5:
    0.036675.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd needs 0 < beta < 1, got {beta}: at 0 and 1 the JSD is identically 0 — its "
                         "normalized limits are forward_kl (beta → 0) and reverse_kl (beta → 1), use those")
    log_p_student, log_p_teacher, keep = _log_probs(student_logits, teacher_logits, mask, temperature)
    log_mixture = torch.logaddexp(log_p_teacher + math.log(beta), log_p_student + math.log(1 - beta))
    jsd = beta * _kl(log_p_teacher, log_mixture) + (1 - beta) * _kl(log_p_student, log_mixture)
    return _per_token(jsd, keep, temperature)
