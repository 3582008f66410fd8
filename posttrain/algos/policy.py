"""Policy losses for online RL (a registry) and the critic's value loss.

One signature for the registry (DESIGN §3):

    policy.get(name)(logps, old_logps, advantages, mask, **hyperparameters) -> PolicyLoss

All inputs are [B, T] float: `logps` = log π_θ(y_t) of the sampled tokens under the policy being trained (with
gradient), `old_logps` = the same under the policy that generated them (no gradient), `advantages` from
advantages.py, `mask` 1 on response tokens. Losses are per token, to be MINIMIZED, and are not reduced here:
the loop reduces `PolicyLoss.losses` with aggregate.py (the mode decides how tokens and sequences weigh).

With r = π_θ(y_t) / π_old(y_t) the importance ratio and A the advantage:

    ppo_clip   −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A), optionally dual-clipped for A < 0   (PPO, DAPO)
    gspo       the same with one sequence-level ratio s_i = exp(mean_t log r_t) per response   (GSPO)
    vanilla    −r·A: plain policy gradient (REINFORCE); on-policy r = 1 and ∇ = −A·∇log π
    cispo      −sg(clip(r, 1−ε_low, 1+ε_high))·A·log π: every token keeps its gradient, the weight is capped (CISPO)
    sapo       −(4/τ)·σ(τ·(r − 1))·A: a smooth gate instead of a hard clip, τ by the sign of A   (SAPO)
    gmpo       −A·exp(mean_t clip(log r_t)): the geometric mean of clipped token ratios, clipped in log space  (GMPO)

and `value_loss` (not in the registry: there is one) for the critic of PPO.

Worked example (one token, A = +1, ε = 0.2): r = 1.5 → ppo_clip objective min(1.5, 1.2) = 1.2, loss −1.2, and
its gradient w.r.t. log π is 0 (the clip is active); r = 1.1 → loss −1.1, gradient −1.1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from posttrain.algos.kl import MAX_LOG_RATIO
from posttrain.algos.registry import Registry


@dataclass
class PolicyLoss:
    losses: torch.Tensor        # [B, T] per-token loss (0 on padding); reduce with aggregate.py
    ratio: torch.Tensor         # [B, T] detached importance ratio (the sequence ratio, per token, for gspo)
    clipped_low: torch.Tensor   # [B, T] bool: A < 0 and r < 1 − ε_low, so the clip zeroed the gradient (cispo:
    #                             r < 1 − ε_low, so its weight was raised to 1 − ε_low; the gradient stays)
    clipped_high: torch.Tensor  # [B, T] bool: A > 0 and r > 1 + ε_high, so the clip zeroed the gradient (cispo:
    #                             r > 1 + ε_high, so its weight was capped at 1 + ε_high)
    dual_clipped: torch.Tensor  # [B, T] bool: A < 0 and the dual clip capped the loss at −c·A (else all False)


# What each loss declares (posttrain.algos.registry): `level` "token" (one importance ratio per token) or
# "sequence" (one ratio per response), and its hyperparameters with their defaults. The RL loop passes each
# declared hyperparameter from the algo field of the same name when there is one (algo.eps_low, …), else from
# algo.loss_args, else the default below — so a new loss needs no config field.
POLICY_LOSSES = Registry("policy loss", flags={"level": "token"})
register = POLICY_LOSSES.register


def get(name: str) -> Callable[..., PolicyLoss]:
    """The loss registered under `name`; an unknown name raises ValueError listing the valid ones."""
    return POLICY_LOSSES.get(name)


def _clipped_objective(ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, eps_low: float,
                       eps_high: float | None) -> PolicyLoss:
    """−min(r·A, clip(r, 1−ε_low, 1+ε_high)·A) per token, with its clip masks (shared by ppo_clip and gspo)."""
    eps_high = eps_low if eps_high is None else eps_high
    clipped_ratio = ratio.clamp(1 - eps_low, 1 + eps_high)
    losses = -torch.minimum(ratio * advantages, clipped_ratio * advantages)
    valid = mask.bool()
    detached = ratio.detach()
    return PolicyLoss(losses=torch.where(valid, losses, torch.zeros_like(losses)), ratio=detached,
                      clipped_low=valid & (advantages < 0) & (detached < 1 - eps_low),
                      clipped_high=valid & (advantages > 0) & (detached > 1 + eps_high),
                      dual_clipped=torch.zeros_like(valid))


@register("ppo_clip", hparams={"eps_low": 0.2, "eps_high": None, "dual_clip": None})
def ppo_clip(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
             eps_low: float = 0.2, eps_high: float | None = None, dual_clip: float | None = None) -> PolicyLoss:
    """PPO's clipped surrogate per token: loss = −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A), r = π_θ / π_old.

    Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv:1707.06347, eq. 7. Where the ratio
    has left the trust region in the direction A pushes it, the clipped term wins the min and the gradient is 0.
    ε_high > ε_low is DAPO's "clip-higher" (Yu et al. 2025, arXiv:2503.14476, e.g. 0.2 / 0.28): it leaves room
    to raise unlikely tokens, against entropy collapse. `dual_clip` = c > 1 (e.g. 3) is the dual clip of Ye et
    al. 2020, "Mastering Complex Control in MOBA Games with Deep RL", arXiv:1912.09729: for A < 0 the objective
    is max(min(r·A, clip(r)·A), c·A), i.e. loss = min(loss, −c·A), so a huge ratio cannot give a huge step
    (None or 0: off). The log-ratio is clamped to ±MAX_LOG_RATIO before e^.

    Examples (one token): ε = 0.2, r = 1.5, A = +1 → objective 1.2 (loss −1.2), gradient 0, clipped_high;
    ε_low = 0.2, ε_high = 0.28, r = 1.25, A = +1 → objective 1.25 (not clipped), d objective / d log π = 1.25;
    r = 0.5, A = −1 → objective clip(0.5)·A = −0.8, gradient 0, clipped_low;
    dual clip c = 3, r = 5, A = −1 → objective max(min(−5, −1.2), −3) = −3 (loss 3), gradient 0.
    """
    ratio = (logps - old_logps).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    out = _clipped_objective(ratio, advantages, mask, eps_low, eps_high)
    if dual_clip:  # None or 0: off
        if dual_clip <= 1:
            raise ValueError(f"dual_clip must be a constant c > 1 (e.g. 3), got {dual_clip}")
        cap = -dual_clip * advantages  # the largest loss a token with A < 0 may contribute
        out.dual_clipped = mask.bool() & (advantages < 0) & (out.losses > cap)
        out.losses = torch.where(out.dual_clipped, cap, out.losses)
    return out


@register("gspo", level="sequence", hparams={"eps_low": 3e-4, "eps_high": 4e-4})
def gspo(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
         eps_low: float = 3e-4, eps_high: float = 4e-4) -> PolicyLoss:
    """Group Sequence Policy Optimization: PPO's clip on one ratio per response, its length-normalized likelihood
    ratio s_i = exp((1/|y_i|) Σ_t (log π_θ − log π_old)), instead of one per token.

    Zheng et al. 2025, "Group Sequence Policy Optimization", arXiv:2507.18071. Written in the paper's GSPO-token
    form s_{i,t} = sg[s_i] · π_θ(y_t) / sg[π_θ(y_t)] (sg = stop-gradient): its value is s_i at every token, its
    gradient flows per token, and with sequence-level advantages and aggregate mode `seq_mean_token_mean` the
    gradient is exactly GSPO's: s_i·A_i·(1/|y_i|)·Σ_t ∇log π_θ(y_t). Default ε's are the paper's (3e-4, 4e-4):
    sequence ratios stay much closer to 1 than token ratios.

    Example: one response, log-ratios [0.1, −0.1, 0.3] → mean 0.1, s = e^0.1 = 1.10517; A = +1, ε = 0.2 → not
    clipped, objective 1.10517 at every token; after seq_mean_token_mean the gradient w.r.t. each log π_t is
    s/|y| = 0.36839 (for the objective; −0.36839 for the loss).
    """
    m = mask.to(logps.dtype)
    seq_log_ratio = ((logps - old_logps) * m).sum(-1) / m.sum(-1).clamp(min=1)
    seq_log_ratio = seq_log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    token_log_ratio = seq_log_ratio.detach()[:, None] + logps - logps.detach()  # value s_i, gradient per token
    return _clipped_objective(token_log_ratio.exp(), advantages, mask, eps_low, eps_high)


@register("vanilla")
def vanilla_pg(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
               mask: torch.Tensor) -> PolicyLoss:
    """Plain policy gradient (REINFORCE; Williams 1992, "Simple Statistical Gradient-Following Algorithms for
    Connectionist Reinforcement Learning"): loss = −A·r per token, r = e^(log π − log π_old), no clipping.

    On-policy (one update per batch) r = 1 and the gradient is −A·∇log π, the textbook estimator; the ratio
    keeps it correct (importance-weighted) when a batch is reused. Example: r = 1, A = 2 → loss −2, gradient −2.
    """
    ratio = (logps - old_logps).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    valid = mask.bool()
    losses = torch.where(valid, -advantages * ratio, torch.zeros_like(ratio))
    never = torch.zeros_like(valid)
    return PolicyLoss(losses=losses, ratio=ratio.detach(), clipped_low=never, clipped_high=never.clone(),
                      dual_clipped=never.clone())


@register("cispo", hparams={"eps_low": 1.0, "eps_high": 0.28})
def cispo(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
          eps_low: float = 1.0, eps_high: float = 0.28) -> PolicyLoss:
    """Clipped IS-weight Policy Optimization: REINFORCE whose importance weight is clipped and stop-gradiented,
    loss = −sg(ŵ)·A·log π per token, ŵ = clip(r, 1−ε_low, 1+ε_high).

    MiniMax 2025, "MiniMax-M1: Scaling Test-Time Compute Efficiently with Lightning Attention", arXiv:2506.13585,
    §3.1 (eq. 4). PPO's clip zeroes the gradient of a token whose ratio has left the trust region — often a rare
    reflective token ("However", "Wait") that long reasoning needs; CISPO keeps every token's gradient and only
    caps its weight: ∇loss = −ŵ·A·∇log π with ŵ a constant. The paper sets no lower bound (ε_low large; the
    default 1 clips at 0, which a ratio never reaches) and tunes ε_high; 0.28 is DAPO's clip-higher value.
    Written as −ŵ·A·e^(log π − sg(log π)): the paper's gradient, and the value −ŵ·A, which reads like ppo_clip's
    (the paper's −ŵ·A·log π differs by a constant per token). The log-ratio is clamped to ±MAX_LOG_RATIO.

    Examples (one token): A = +1, ε_high = 0.2, r = 1.5 → ŵ = 1.2, loss −1.2, d loss / d log π = −1.2 (ppo_clip:
    0), clipped_high; r = 1.1 → ŵ = 1.1, loss −1.1, gradient −1.1 (as ppo_clip); A = −1, r = 0.5, ε_low = 0.2 →
    ŵ = 0.8, loss 0.8, gradient +0.8 (ppo_clip: 0), clipped_low; with the default ε_low = 1: ŵ = 0.5, loss 0.5,
    gradient 0.5.
    """
    ratio = (logps - old_logps).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp().detach()
    weight = ratio.clamp(1 - eps_low, 1 + eps_high)
    losses = -advantages * weight * (logps - logps.detach()).exp()  # value −ŵ·A, gradient −ŵ·A·∇log π
    valid = mask.bool()
    return PolicyLoss(losses=torch.where(valid, losses, torch.zeros_like(losses)), ratio=ratio,
                      clipped_low=valid & (ratio < 1 - eps_low), clipped_high=valid & (ratio > 1 + eps_high),
                      dual_clipped=torch.zeros_like(valid))


@register("sapo", hparams={"tau_pos": 1.0, "tau_neg": 1.05})
def sapo(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
         tau_pos: float = 1.0, tau_neg: float = 1.05) -> PolicyLoss:
    """Soft Adaptive Policy Optimization: a smooth, temperature-controlled gate on the ratio instead of a hard clip,
    loss = −f(r)·A per token, f(r) = (4/τ)·σ(τ·(r − 1)), τ = τ_pos where A > 0 and τ_neg elsewhere.

    Gao et al. 2025 (Qwen), "Soft Adaptive Policy Optimization", arXiv:2511.20347. The gradient is
    d loss / d log π = −w·r·A with w = 4·p·(1 − p), p = σ(τ·(r − 1)): w = 1 at r = 1 (the plain policy gradient
    on-policy), falling smoothly as r leaves 1 — there is no band edge where the gradient jumps to 0, and a few
    far off-policy tokens are damped instead of silencing their response. τ_neg > τ_pos damps negative updates
    faster, which the paper finds steadier (its τ_pos = 1.0, τ_neg = 1.05; set them with algo.loss_args). The
    value at r = 1 is −(2/τ)·A, not −A: only the gradient matches the policy gradient there. No hard clip, so
    clipped_low / clipped_high are never set. The log-ratio is clamped to ±MAX_LOG_RATIO before e^.

    Examples (one token): A = +1, τ_pos = 1: r = 1 → f = 2, loss −2, gradient −1; r = 1.5 → p = σ(0.5) = 0.62246,
    loss −4·0.62246 = −2.48984, gradient −4·0.62246·0.37754·1.5 = −1.41002 (ppo_clip, ε 0.2: 0). A = −1,
    τ_neg = 1.05, r = 0.5 → p = σ(−0.525) = 0.37168, loss (4/1.05)·0.37168 = 1.41594, gradient
    4·0.37168·0.62832·0.5 = 0.46707.
    """
    if tau_pos <= 0 or tau_neg <= 0:
        raise ValueError(f"sapo needs temperatures > 0, got tau_pos {tau_pos} and tau_neg {tau_neg}")
    ratio = (logps - old_logps).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    tau = torch.where(advantages > 0, ratio.new_tensor(tau_pos), ratio.new_tensor(tau_neg))
    losses = -(4 / tau) * torch.sigmoid(tau * (ratio - 1)) * advantages
    valid = mask.bool()
    never = torch.zeros_like(valid)
    return PolicyLoss(losses=torch.where(valid, losses, torch.zeros_like(losses)), ratio=ratio.detach(),
                      clipped_low=never, clipped_high=never.clone(), dual_clipped=never.clone())


@register("gmpo", level="sequence", hparams={"eps_low": 0.4, "eps_high": 0.4})
def gmpo(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
         eps_low: float = 0.4, eps_high: float = 0.4) -> PolicyLoss:
    """Geometric-Mean Policy Optimization: maximize the geometric mean of the response's clipped token ratios,
    loss_i = −A·R_i, R_i = exp((1/|y_i|) Σ_t ℓ_t), ℓ_t = the pessimistic of log r_t and clip(log r_t, −ε_low, ε_high).

    Zhao et al. 2025, "Geometric-Mean Policy Optimization", arXiv:2507.20673. GRPO averages token ratios
    arithmetically, so one outlier token (r = e³ = 20.1) can dominate a response's objective; its geometric mean
    is far less sensitive (ratios [1, 1, e³]: arithmetic mean 7.36, geometric e¹ = 2.72). The clip acts per token
    in log space — the pessimistic side as in PPO: for A > 0 ℓ = min(log r, clip), for A < 0 ℓ = max(log r, clip)
    — and can be wider than PPO's: the paper's (e^−0.4, e^0.4) = (0.670, 1.492). Written per token as
    −A·sg(R_i)·e^(ℓ_t − sg(ℓ_t)) (as gspo): value −A·R_i on every token and, reduced with `seq_mean_token_mean`,
    exactly the gradient of −A·R_i, −A·R_i·(1/|y_i|)·Σ_t ∇ℓ_t; a clipped token's ∇ℓ_t is 0 (clipped_low/high).
    `ratio` reports R_i per token. The log-ratio is clamped to ±MAX_LOG_RATIO first.

    Example: one response, log-ratios [0.1, −0.1, 0.6], ε = 0.4. A = +1 → ℓ = [0.1, −0.1, 0.4] (the third token
    clipped), R = e^(0.4/3) = 1.14263, loss −1.14263 per token, gradient w.r.t. log π after seq_mean_token_mean
    [−R/3, −R/3, 0] = [−0.38088, −0.38088, 0]. A = −1 → nothing clipped (for A < 0 only log r < −0.4 is),
    ℓ = [0.1, −0.1, 0.6], R = e^0.2 = 1.22140, loss +1.22140, gradient [0.40713] × 3.
    """
    m = mask.to(logps.dtype)
    log_ratio = (logps - old_logps).clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO)
    sign = torch.sign(advantages)
    clipped = log_ratio.clamp(-eps_low, eps_high)
    pessimistic = sign * torch.minimum(sign * log_ratio, sign * clipped)  # 0 where A = 0 (no loss there anyway)
    seq_log_ratio = (pessimistic * m).sum(-1) / m.sum(-1).clamp(min=1)
    token_log_ratio = seq_log_ratio.detach()[:, None] + pessimistic - pessimistic.detach()  # value R_i, gradient ∇ℓ_t
    losses = -advantages * token_log_ratio.exp()
    valid = mask.bool()
    detached = log_ratio.detach()
    return PolicyLoss(losses=torch.where(valid, losses, torch.zeros_like(losses)),
                      ratio=seq_log_ratio.detach().exp()[:, None].expand_as(losses).clone(),
                      clipped_low=valid & (advantages < 0) & (detached < -eps_low),
                      clipped_high=valid & (advantages > 0) & (detached > eps_high),
                      dual_clipped=torch.zeros_like(valid))


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *,
               clip: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The critic's regression loss per token: ½(V − R)², or with `clip` = ε PPO2's clipped value loss

        ½ · max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²)

    (OpenAI baselines ppo2, OpenRLHF): the critic may not move more than ε from the value it had at rollout
    unless that moves it away from the target. values, old_values, returns, mask [B, T] →
    (losses [B, T] (0 on padding; reduce with aggregate.py), clipped [B, T] bool: the clipped term was larger,
    so the token's gradient is 0).

    Example: V_old = 0.5, V = 1.0, R = 1.0, ε = 0.2 → unclipped (1 − 1)² = 0; clipped V = 0.7 →
    (0.7 − 1)² = 0.09; the max picks the clipped term: loss 0.5·0.09 = 0.045, gradient 0. Without clip: loss 0.
    """
    valid = mask.bool()
    unclipped = (values - returns) ** 2
    if clip is None:
        squares, clipped = unclipped, torch.zeros_like(valid)
    else:
        clipped_values = old_values + (values - old_values).clamp(-clip, clip)
        clipped_squares = (clipped_values - returns) ** 2
        squares = torch.maximum(unclipped, clipped_squares)
        clipped = valid & (clipped_squares > unclipped)
    return torch.where(valid, 0.5 * squares, torch.zeros_like(squares)), clipped
