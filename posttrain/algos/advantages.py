"""Advantage estimators: how much better than expected each sampled response (or token) was.

One signature for the registry (DESIGN §3):

    advantages.get(name)(batch: AdvantageInputs, **hyperparameters) -> advantages [B, T]

B responses (G per prompt, consecutive or not: `group_index` says which prompt each belongs to), T response
tokens (right-padded; `mask` is 1 on real tokens). Sequence-level estimators broadcast one number over a
response's tokens. Responses whose reward could not be computed (`scored` False: the reward function raised,
returned None/NaN or timed out) are left out of every baseline and get advantage 0.

    grpo                   (r − group mean) / group std                    sequence level
    dr_grpo                r − group mean                                  sequence level
    rloo                   r − mean of the group's other responses         sequence level
    remax                  r − reward of the greedy response               sequence level
    reinforce              r (no baseline)                                 sequence level
    reinforce_pp           return-to-go, whitened over the batch's tokens  token level
    reinforce_pp_baseline  group-centred return-to-go ÷ batch token std    token level
    gae                    GAE(γ, λ) from a critic's values                token level
    turn_grpo              per-turn discounted return − the group's mean   turn level (multi-turn episodes)
                           at the same turn index, ÷ its std

Group baselines here (grpo, dr_grpo, rloo) and the returns helper (`discounted_returns`) are also what the
classic-RL side uses; `gae` is shared with classic PPO. `token_level_rewards` builds the per-token rewards
(sequence reward on the last token, minus the KL penalty) that the token-level estimators read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from posttrain.algos.registry import Registry

# What each estimator declares (posttrain.algos.registry), read by the RL loop, `posttrain explain` and validation:
#   level                  "sequence": one number per response, broadcast over its tokens; "token": per token,
#                          computed from per-token rewards (the loop folds the KL penalty in per token)
#   needs_groups           compares the responses to one prompt: rl.generations must be ≥ 2
#   needs_critic           reads a value model's V(s_t) (algo.critic=value)
#   needs_greedy_baseline  reads the reward of a greedy response to each prompt (the loop generates it)
#   needs_turns            reads the turns of multi-turn episodes (turn_index, turn_rewards: env.name)
ADVANTAGES = Registry("advantage estimator", flags={"level": "sequence", "needs_groups": False,
                                                    "needs_critic": False, "needs_greedy_baseline": False,
                                                    "needs_turns": False})
register = ADVANTAGES.register


def get(name: str) -> Callable[..., torch.Tensor]:
    """The estimator registered under `name`; an unknown name raises ValueError listing the valid ones."""
    return ADVANTAGES.get(name)


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
    baseline_rewards: torch.Tensor | None = None  # [B] reward of the greedy response to the same prompt (remax)
    turn_index: torch.Tensor | None = None     # [B, T] long: the model turn (0, 1, …) of each response token; −1 at
    #                                            environment tokens and padding (multi-turn episodes)
    turn_rewards: torch.Tensor | None = None   # [B, K] the reward after each model turn (0 past an episode's last);
    #                                            a row sums to the episode's reward

    def scored_mask(self) -> torch.Tensor:
        return torch.ones_like(self.rewards, dtype=torch.bool) if self.scored is None else self.scored.bool()


# ---------------------------------------------------------------------------------------------------------------------
# Group statistics (shared by the group baselines)
# ---------------------------------------------------------------------------------------------------------------------

def _group_stats(rewards: torch.Tensor, group_index: torch.Tensor, scored: torch.Tensor, correction: int = 1):
    """Per response: (number of scored responses in its group, their mean reward, their std), each [B].

    The std divides by n − correction: 1 = sample std with Bessel's correction, as torch.std, TRL and verl do;
    0 = population std. A group with n ≤ correction scored responses has std 0."""
    groups, inverse = torch.unique(group_index, return_inverse=True)
    weight = scored.to(rewards.dtype)
    count = torch.zeros(len(groups), dtype=rewards.dtype).index_add(0, inverse, weight)
    total = torch.zeros(len(groups), dtype=rewards.dtype).index_add(0, inverse, rewards * weight)
    mean = total / count.clamp(min=1)
    squares = torch.zeros(len(groups), dtype=rewards.dtype).index_add(0, inverse,
                                                                      (rewards - mean[inverse]) ** 2 * weight)
    std = torch.where(count > correction, (squares / (count - correction).clamp(min=1)).sqrt(),
                      torch.zeros_like(count))
    return count[inverse], mean[inverse], std[inverse]


def _broadcast(per_sequence: torch.Tensor, batch: AdvantageInputs) -> torch.Tensor:
    """[B] → [B, T]: one value over each response's tokens; 0 for unscored responses and on padding."""
    per_sequence = torch.where(batch.scored_mask(), per_sequence, torch.zeros_like(per_sequence))
    return per_sequence[:, None] * batch.mask.to(per_sequence.dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Critic-free, sequence level: group baselines, the greedy baseline, none
# ---------------------------------------------------------------------------------------------------------------------

STD_MODES = {"sample": 1, "population": 0}  # grpo's std choices → the correction subtracted from n


@register("grpo", needs_groups=True, hparams={"eps": 1e-6, "std": "sample"}, fields={"std": "grpo_std"})
def grpo(batch: AdvantageInputs, *, eps: float = 1e-6, std: str = "sample") -> torch.Tensor:
    """Group-relative advantage: A_i = (r_i − mean_g) / (std_g + ε), the same for every token of response i.

    Shao et al. 2024, "DeepSeekMath", arXiv:2402.03300, §4.1.2 (outcome supervision). std_g is the std of the
    group's scored rewards: `std="sample"` (÷ (n − 1), what TRL and verl use) or "population" (÷ n). A group
    whose rewards are all equal has numerator 0 and gets advantage 0 (never NaN); so does a group with a single
    scored response.

    Example: one group, rewards [1, 0, 0, 1] → mean 0.5; sample std √(1/3) = 0.57735 →
    A = [0.86603, −0.86603, −0.86603, 0.86603]; population std 0.5 → A = [1, −1, −1, 1] exactly (ε = 0);
    rewards [1, 1, 1] → [0, 0, 0].
    """
    if std not in STD_MODES:
        raise ValueError(f"grpo std must be one of {', '.join(STD_MODES)}, got {std!r}")
    _, mean, group_std = _group_stats(batch.rewards, batch.group_index, batch.scored_mask(),
                                      correction=STD_MODES[std])
    return _broadcast((batch.rewards - mean) / (group_std + eps), batch)


@register("dr_grpo", needs_groups=True)
def dr_grpo(batch: AdvantageInputs) -> torch.Tensor:
    """GRPO without the std division: A_i = r_i − mean_g.

    Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective" (Dr. GRPO),
    arXiv:2503.20783: dividing by the group std up-weights prompts that are nearly always solved or failed
    (question-level difficulty bias). Pair it with aggregate mode `seq_mean_token_sum_norm` to remove the
    length bias too. Example: rewards [1, 0, 0, 1] → A = [0.5, −0.5, −0.5, 0.5].
    """
    _, mean, _ = _group_stats(batch.rewards, batch.group_index, batch.scored_mask())
    return _broadcast(batch.rewards - mean, batch)


@register("rloo", needs_groups=True)
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


@register("remax", needs_greedy_baseline=True)
def remax(batch: AdvantageInputs) -> torch.Tensor:
    """ReMax: A_i = r_i − r(greedy response to the same prompt), the same for every token of response i.

    Li et al. 2023, "ReMax: A Simple, Effective, and Efficient Reinforcement Learning Method for Aligning Large
    Language Models", arXiv:2310.10505: the greedy response's reward is a baseline that does not depend on the
    sampled one, so the REINFORCE estimate stays unbiased with much less variance, and no critic is needed.
    Needs batch.baseline_rewards [B] (the loop decodes greedily once per prompt and scores it).
    Example: rewards [1, 0, 1], greedy rewards [0, 0, 1] → A = [1, 0, 0].
    """
    if batch.baseline_rewards is None:
        raise ValueError("advantage 'remax' needs baseline_rewards: the reward of a greedy response to each "
                         "prompt — let the loop generate it, or pick grpo / rloo")
    return _broadcast(batch.rewards - batch.baseline_rewards.to(batch.rewards.dtype), batch)


@register("reinforce")
def reinforce(batch: AdvantageInputs) -> torch.Tensor:
    """Plain REINFORCE (Williams 1992, "Simple Statistical Gradient-Following Algorithms for Connectionist
    Reinforcement Learning"): A_i = r_i, no baseline, the same for every token of response i. Unbiased but
    high-variance: the reference point for every baseline above. Example: rewards [1, 0] → A = [1, 0].
    """
    return _broadcast(batch.rewards, batch)


# ---------------------------------------------------------------------------------------------------------------------
# Returns, REINFORCE++ and GAE (token level)
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


def token_level_rewards(rewards: torch.Tensor, mask: torch.Tensor,
                        kl_penalty: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token rewards from sequence rewards: r_i on response i's last masked token, minus `kl_penalty`
    (β·k per token, already multiplied by β by the caller) on every masked token; 0 on padding.

    rewards [B], mask [B, T], kl_penalty [B, T] → [B, T]. This is how PPO and REINFORCE++ fold the KL into the
    reward (kl.py, `where: reward`). Example: rewards [1, 0.5], mask [[1, 1, 1], [1, 1, 0]],
    kl_penalty [[0.1, 0.2, 0.1], [0.05, 0.05, 0.3]] → [[−0.1, −0.2, 0.9], [−0.05, 0.45, 0]].
    """
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask.bool() * positions).argmax(-1)  # index of each row's last response token
    dtype = rewards.dtype if kl_penalty is None else torch.promote_types(rewards.dtype, kl_penalty.dtype)
    m = mask.to(dtype)
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    out[torch.arange(mask.shape[0]), last] = rewards.to(dtype)
    if kl_penalty is not None:
        out = out - kl_penalty.to(dtype)
    return out * m


def turn_token_rewards(turn_rewards: torch.Tensor, turn_index: torch.Tensor) -> torch.Tensor:
    """Per-token rewards of multi-turn episodes: r_ik on the last token of turn k of episode i, 0 elsewhere (the
    environment's tokens, padding) — so a token-level estimator (gae with a critic, reinforce_pp) sees each
    turn's reward when that turn ends, not the episode's reward at its very end. Subtract a KL penalty
    afterwards as token_level_rewards does.

    turn_rewards [B, K], turn_index [B, T] (−1: no turn) → [B, T]. Example: turn_rewards [[0.1, 1.0]],
    turn_index [[0, 0, −1, 1, 1]] → [[0, 0.1, 0, 0, 1.0]].
    """
    out = torch.zeros(turn_index.shape, dtype=turn_rewards.dtype)
    positions = torch.arange(turn_index.shape[1])
    for k in range(turn_rewards.shape[1]):
        in_turn = turn_index == k
        last = (in_turn * positions).argmax(-1)
        rows = in_turn.any(-1)
        out[rows, last[rows]] = turn_rewards[rows, k]
    return out


def whiten(values: torch.Tensor, valid: torch.Tensor, eps: float = 1e-8, center: bool = True) -> torch.Tensor:
    """(values − mean) / (std + ε) with the mean and population std over the `valid` tokens of the whole batch
    (without `center` the mean is still used for the std but not subtracted); 0 where not valid."""
    weight = valid.to(values.dtype)
    n = weight.sum().clamp(min=1)
    mean = (values * weight).sum() / n
    std = (((values - mean) ** 2 * weight).sum() / n).sqrt()
    return ((values - mean) if center else values) / (std + eps) * weight


@register("reinforce_pp", level="token", hparams={"gamma": 1.0, "eps": 1e-8})
def reinforce_pp(batch: AdvantageInputs, *, gamma: float = 1.0, eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++: the per-token return-to-go G_t, normalized over ALL response tokens of the batch:
    A_t = (G_t − mean) / (std + ε).

    Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models",
    arXiv:2501.03262. Needs batch.token_rewards [B, T] with the KL penalty already folded in (e.g.
    `token_level_rewards(rewards, mask, β·k1)`). The batch-wide (not per-group) normalization is the point: no
    critic, and no per-prompt std that would over-weight easy prompts. mean and std are over the masked tokens
    of scored responses (std ÷ N, as the paper's OpenRLHF code); unscored responses get 0.

    Example: token_rewards [[0, 0, 1], [0, 0, ·]], mask [[1, 1, 1], [1, 1, 0]], γ = 1 → returns
    [[1, 1, 1], [0, 0, ·]]; over the 5 tokens mean 0.6, std √0.24 = 0.48990 →
    A = [[0.81650, 0.81650, 0.81650], [−1.22474, −1.22474, 0]].
    """
    if batch.token_rewards is None:
        raise ValueError("advantage 'reinforce_pp' needs token_rewards (e.g. token_level_rewards(rewards, mask, "
                         "kl_penalty)) — or pick a sequence-level estimator (grpo, rloo, …)")
    returns = discounted_returns(batch.token_rewards, batch.mask, gamma)
    valid = batch.mask.bool() & batch.scored_mask()[:, None]
    return whiten(returns, valid, eps, center=True)


@register("reinforce_pp_baseline", level="token", needs_groups=True, hparams={"gamma": 1.0, "eps": 1e-8})
def reinforce_pp_baseline(batch: AdvantageInputs, *, gamma: float = 1.0, eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++-baseline (for reasoning tasks with several samples per prompt): subtract the group mean of the
    scored rewards from each response's reward, take the return-to-go, and divide by the std over all response
    tokens of the batch (no second mean subtraction): A_t = G'_t / (std + ε).

    Hu 2025, arXiv:2501.03262 (same paper as reinforce_pp). With batch.token_rewards (the loop's KL-folded
    rewards) the group mean is subtracted on each response's last token; without, the token rewards are
    token_level_rewards(r − mean_g). std ÷ N over the masked tokens of scored responses; unscored get 0.

    Example: one group, rewards [1, 0, 0, 1] (mean 0.5), response lengths [3, 1, 1, 3], γ = 1 → every token of
    response i carries r_i − 0.5 = ±0.5: six tokens of 0.5, two of −0.5 → token mean 0.25, std √0.1875 =
    0.43301 → A = ±0.5/0.43301 = ±1.15470 (= 2/√3) on each response's tokens.
    """
    _, mean, _ = _group_stats(batch.rewards, batch.group_index, batch.scored_mask())
    if batch.token_rewards is None:
        token_rewards = token_level_rewards(batch.rewards - mean, batch.mask)
    else:
        token_rewards = batch.token_rewards - token_level_rewards(mean.to(batch.token_rewards.dtype), batch.mask)
    returns = discounted_returns(token_rewards, batch.mask, gamma)
    valid = batch.mask.bool() & batch.scored_mask()[:, None]
    return whiten(returns, valid, eps, center=False)


@register("gae", level="token", needs_critic=True, hparams={"gamma": 1.0, "lam": 0.95})
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


# ---------------------------------------------------------------------------------------------------------------------
# Multi-turn episodes: credit per turn
# ---------------------------------------------------------------------------------------------------------------------

@register("turn_grpo", level="turn", needs_groups=True, needs_turns=True, hparams={"gamma": 1.0, "eps": 1e-6})
def turn_grpo(batch: AdvantageInputs, *, gamma: float = 1.0, eps: float = 1e-6) -> torch.Tensor:
    """Turn-level group baseline: every token of turn k of episode i gets
    A_ik = (R_ik − mean_g,k) / (std_g,k + ε), with R_ik = Σ_{j ≥ k} γ^(j−k) r_ij the discounted return from turn k,
    and mean/std (sample std) over the episodes of i's group that reached turn k.

    Zeng et al. 2025, "Reinforcing Multi-Turn Reasoning in LLM Agents via Turn-Level Credit Assignment"
    (MT-GRPO), arXiv:2505.11821; the group-per-step baseline of Feng et al. 2025, "Group-in-Group Policy
    Optimization for LLM Agent Training" (GiGPO), arXiv:2505.10978, with the turn index as the step's anchor. A
    turn is judged against what the group did at the same point of the conversation, so a tool call that pays
    off later earns through R (γ) and an early mistake is not paid for by a lucky last turn alone. A turn that
    only one episode of its group reached gets 0 (no baseline to compare with); unscored episodes get 0.

    Example: one group of two episodes, γ = 1. Episode 0 has two turns with rewards [0.1, 1.0] (a tool call the
    environment rewarded, then a right answer); episode 1 one turn with reward [0.0]. R = [[1.1, 1.0], [0.0]].
    Turn 0: mean 0.55, sample std 0.77782 → A = 0.70711 for episode 0's first turn, −0.70711 for episode 1's;
    turn 1: reached by episode 0 alone → A = 0. With γ = 0.5, R_00 = 0.6 and turn 0 gives the same ±0.70711.
    """
    if batch.turn_index is None or batch.turn_rewards is None:
        raise ValueError("advantage 'turn_grpo' needs multi-turn episodes (turn_index, turn_rewards) — set "
                         "env.name, or pick a sequence-level estimator (grpo, rloo, …)")
    rewards, turns = batch.turn_rewards.float(), batch.turn_index
    B, K = rewards.shape
    reached = torch.zeros(B, K, dtype=torch.bool)
    valid_tokens = turns >= 0
    reached[torch.nonzero(valid_tokens)[:, 0], turns[valid_tokens]] = True
    returns = torch.zeros_like(rewards)
    running = torch.zeros(B)
    for k in reversed(range(K)):
        running = torch.where(reached[:, k], rewards[:, k] + gamma * running, running)
        returns[:, k] = running
    scored = batch.scored_mask()
    per_turn = torch.zeros_like(rewards)
    for k in range(K):
        n, mean, std = _group_stats(returns[:, k], batch.group_index, scored & reached[:, k])
        per_turn[:, k] = torch.where(reached[:, k] & scored & (n > 1), (returns[:, k] - mean) / (std + eps), 0.0)
    return per_turn.gather(1, turns.clamp(min=0)) * valid_tokens * batch.mask.to(per_turn.dtype)


def gae_returns(advantages: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The critic's regression targets A_t + V_t (0 on padding). [B, T] → [B, T]."""
    return (advantages + values.to(advantages.dtype)) * mask.to(advantages.dtype)
