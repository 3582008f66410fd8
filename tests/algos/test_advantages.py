"""Advantage estimators: each docstring's worked example, group handling, unscored responses, padding, and the
vectorized estimators against plain per-group, per-token loops."""

import math

import pytest
import torch

from posttrain.algos import advantages as adv
from posttrain.algos.advantages import AdvantageInputs


def seq(values):
    return torch.tensor(values, dtype=torch.float64)


def batch(rewards, groups=None, scored=None, length=3):
    rewards = seq(rewards)
    return AdvantageInputs(rewards=rewards, mask=torch.ones(len(rewards), length),
                           group_index=torch.tensor(groups or [0] * len(rewards)),
                           scored=None if scored is None else torch.tensor(scored))


def test_grpo_worked_example_sample_std_and_equal_groups():
    a = adv.grpo(batch([1, 0, 0, 1]), eps=0.0)
    assert a[:, 0].tolist() == pytest.approx([0.86603, -0.86603, -0.86603, 0.86603], abs=1e-5)
    assert (a == a[:, :1]).all()  # one number per response, on every token
    assert adv.grpo(batch([1, 1, 1])).abs().max().item() == 0.0  # zero variance → 0, not NaN
    single = adv.grpo(batch([1.0]))
    assert not torch.isnan(single).any() and single.abs().max().item() == 0.0


def test_groups_are_independent_whatever_their_order():
    mixed = adv.grpo(batch([1, 5, 0, 7, 0, 9, 1, 6], groups=[0, 1, 0, 1, 0, 1, 0, 1]))
    alone = torch.cat([adv.grpo(batch([1, 0, 0, 1])), adv.grpo(batch([5, 7, 9, 6]))])
    order = [0, 2, 4, 6, 1, 3, 5, 7]
    assert torch.allclose(mixed[order], alone)


def test_dr_grpo_and_rloo_worked_examples():
    assert adv.dr_grpo(batch([1, 0, 0, 1]))[:, 0].tolist() == [0.5, -0.5, -0.5, 0.5]
    assert adv.rloo(batch([1, 0, 0, 1]))[:, 0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    # rloo's baseline for response i is the mean of the others, computed directly
    r = seq([0.3, 1.2, -0.4, 2.0, 0.9])
    direct = torch.stack([r[i] - torch.cat([r[:i], r[i + 1:]]).mean() for i in range(5)])
    assert torch.allclose(adv.rloo(batch(r.tolist()))[:, 0], direct)


def test_unscored_responses_are_excluded_from_baselines_and_get_zero():
    a = adv.grpo(batch([1, 0, 0, 1, 123], scored=[True, True, True, True, False]), eps=0.0)
    assert a[:4, 0].tolist() == pytest.approx([0.86603, -0.86603, -0.86603, 0.86603], abs=1e-5)
    assert a[4].abs().max().item() == 0.0
    r = adv.rloo(batch([1, 0, 5], scored=[True, False, False]))
    assert r.abs().max().item() == 0.0  # one scored response: no baseline, no signal


def test_padding_gets_zero():
    b = batch([1, 0])
    b.mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    a = adv.dr_grpo(b)
    assert a.tolist() == [[0.5, 0.5, 0.0], [-0.5, 0.0, 0.0]]


def test_discounted_returns():
    rewards, mask = seq([[4, 3, 5, 2]]), torch.ones(1, 4)
    assert adv.discounted_returns(rewards, mask, gamma=1.0).tolist() == [[14, 10, 7, 2]]
    assert adv.discounted_returns(rewards, mask, gamma=0.5).tolist() == [[7, 6, 6, 2]]
    padded = adv.discounted_returns(seq([[4, 3, 0]]), torch.tensor([[1, 1, 0]]), bootstrap=seq([10]))
    assert padded.tolist() == [[17, 13, 0]]


def test_gae_worked_example_and_limits():
    b = AdvantageInputs(rewards=seq([1]), mask=torch.ones(1, 3), group_index=torch.zeros(1, dtype=torch.long),
                        token_rewards=seq([[0, 0, 1]]), values=seq([[0.5, 0.6, 0.7]]))
    a = adv.gae(b, gamma=1.0, lam=0.95)
    assert a.tolist()[0] == pytest.approx([0.46575, 0.385, 0.3])
    assert adv.gae_returns(a, b.values, b.mask).tolist()[0] == pytest.approx([0.96575, 0.985, 1.0])
    # λ = 1: A_t = G_t − V_t (Monte-Carlo); λ = 0: A_t = δ_t (one-step TD)
    g = adv.discounted_returns(b.token_rewards, b.mask, gamma=0.9)
    assert torch.allclose(adv.gae(b, gamma=0.9, lam=1.0), g - b.values)
    assert adv.gae(b, gamma=1.0, lam=0.0).tolist()[0] == pytest.approx([0.1, 0.1, 0.3])
    # truncated: bootstrap from the value after the last token
    b.bootstrap = seq([0.8])
    assert adv.gae(b, gamma=1.0, lam=0.0).tolist()[0][-1] == pytest.approx(1 + 0.8 - 0.7)
    with pytest.raises(ValueError, match="critic"):
        adv.gae(batch([1.0]))


def test_grpo_population_std_worked_example():
    a = adv.grpo(batch([1, 0, 0, 1]), eps=0.0, std="population")
    assert a[:, 0].tolist() == [1.0, -1.0, -1.0, 1.0]
    assert adv.grpo(batch([1.0]), std="population").abs().max().item() == 0.0
    with pytest.raises(ValueError, match="sample, population"):
        adv.grpo(batch([1, 0]), std="bessel")


def test_gae_acceptance_numbers():
    b = AdvantageInputs(rewards=seq([1]), mask=torch.ones(1, 3), group_index=torch.zeros(1, dtype=torch.long),
                        token_rewards=seq([[0, 0, 1]]), values=seq([[0.5, 0.5, 0.5]]))
    assert adv.gae(b, gamma=1.0, lam=1.0).tolist()[0] == pytest.approx([0.5, 0.5, 0.5])
    assert adv.gae(b, gamma=1.0, lam=0.95).tolist()[0] == pytest.approx([0.45125, 0.475, 0.5])
    assert adv.gae(b, gamma=1.0, lam=0.0).tolist()[0] == pytest.approx([0.0, 0.0, 0.5])


def test_token_level_rewards_worked_example():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    out = adv.token_level_rewards(seq([1, 0.5]), mask, seq([[0.1, 0.2, 0.1], [0.05, 0.05, 0.3]]))
    torch.testing.assert_close(out, seq([[-0.1, -0.2, 0.9], [-0.05, 0.45, 0.0]]))
    assert adv.token_level_rewards(seq([1, 0.5]), mask).tolist() == [[0, 0, 1], [0, 0.5, 0]]
    assert adv.token_level_rewards(seq([2.0]), torch.zeros(1, 3)).tolist() == [[0, 0, 0]]  # empty response


def test_reinforce_pp_worked_example():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    b = AdvantageInputs(rewards=seq([1, 0]), mask=mask, group_index=torch.tensor([0, 0]),
                        token_rewards=adv.token_level_rewards(seq([1, 0]), mask))
    a = adv.reinforce_pp(b, eps=0.0)
    assert a.tolist()[0] == pytest.approx([0.81650] * 3, abs=1e-5)
    assert a.tolist()[1] == pytest.approx([-1.22474, -1.22474, 0.0], abs=1e-5)
    assert a[mask.bool()].mean().item() == pytest.approx(0.0, abs=1e-12)  # whitened over the batch's tokens
    # an unscored response takes no part in the statistics and gets 0
    b3 = AdvantageInputs(rewards=seq([1, 0, 0]), mask=torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]]),
                         group_index=torch.tensor([0, 0, 0]), scored=torch.tensor([True, True, False]),
                         token_rewards=seq([[0, 0, 1], [0, 0, 0], [9, 9, 9]]))
    a3 = adv.reinforce_pp(b3, eps=0.0)
    assert torch.allclose(a3[:2], a) and a3[2].abs().max().item() == 0.0
    with pytest.raises(ValueError, match="token_rewards"):
        adv.reinforce_pp(batch([1.0]))


def test_reinforce_pp_baseline_worked_example():
    lengths = [3, 1, 1, 3]
    mask = torch.tensor([[1] * n + [0] * (3 - n) for n in lengths])
    b = AdvantageInputs(rewards=seq([1, 0, 0, 1]), mask=mask, group_index=torch.zeros(4, dtype=torch.long))
    a = adv.reinforce_pp_baseline(b, eps=0.0)
    expected = [[s * 2 / math.sqrt(3)] * n + [0.0] * (3 - n) for s, n in zip([1, -1, -1, 1], lengths)]
    assert a.tolist() == [pytest.approx(row) for row in expected]
    assert a[0, 0].item() == pytest.approx(1.15470, abs=1e-5)
    # the loop's KL-folded token rewards: the group mean comes off each response's last token
    kl = torch.full((4, 3), 0.01, dtype=torch.float64) * mask
    b.token_rewards = adv.token_level_rewards(b.rewards, mask, kl)
    centred = adv.token_level_rewards(b.rewards - 0.5, mask, kl)
    returns = adv.discounted_returns(centred, mask)
    std = returns[mask.bool()].std(unbiased=False)
    assert torch.allclose(adv.reinforce_pp_baseline(b, eps=0.0), returns / std)


def test_remax_and_reinforce_worked_examples():
    b = batch([1, 0, 1], groups=[0, 1, 2])
    with pytest.raises(ValueError, match="baseline_rewards"):
        adv.remax(b)
    b.baseline_rewards = seq([0, 0, 1])
    assert adv.remax(b)[:, 0].tolist() == [1, 0, 0]
    assert adv.reinforce(batch([1, 0]))[:, 0].tolist() == [1, 0]
    assert adv.reinforce(batch([1, 0], scored=[False, True])).abs().max().item() == 0.0


# ---------------------------------------------------------------------------------------------------------------------
# Vectorized estimators == plain loops, on random batches: unequal interleaved groups, right padding, unscored
# ---------------------------------------------------------------------------------------------------------------------

def random_batch(seed, group_sizes=(4, 2, 5, 3, 1), T=6):
    torch.manual_seed(seed)
    group_index = torch.cat([torch.full((n,), g) for g, n in enumerate(group_sizes)])
    group_index = group_index[torch.randperm(len(group_index))]  # interleaved, not consecutive
    B = len(group_index)
    lengths = torch.randint(1, T + 1, (B,))
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    scored = torch.rand(B) > 0.25
    rewards = torch.where(scored, torch.randint(0, 3, (B,)).double() + torch.randn(B, dtype=torch.float64), 0.0)
    return AdvantageInputs(rewards=rewards, mask=mask, group_index=group_index, scored=scored,
                           token_rewards=torch.randn(B, T, dtype=torch.float64) * mask,
                           values=torch.randn(B, T, dtype=torch.float64) * mask,
                           bootstrap=torch.where(torch.rand(B) > 0.5, torch.randn(B, dtype=torch.float64), 0.0),
                           baseline_rewards=torch.randn(B, dtype=torch.float64))


def as_lists(b):
    lengths = [int(n) for n in b.mask.sum(-1)]
    return (b.rewards.tolist(), b.group_index.tolist(), b.scored.tolist(), lengths, b.mask.shape[1])


def peers(rewards, groups, scored, i, *, include_self=True):
    return [rewards[j] for j in range(len(rewards))
            if groups[j] == groups[i] and scored[j] and (include_self or j != i)]


def broadcast_loop(per_seq, scored, lengths, T):
    return torch.tensor([[per_seq[i] if scored[i] and t < lengths[i] else 0.0 for t in range(T)]
                         for i in range(len(per_seq))], dtype=torch.float64)


def grpo_loop(b, eps, correction):
    rewards, groups, scored, lengths, T = as_lists(b)
    per_seq = []
    for i in range(len(rewards)):
        p = peers(rewards, groups, scored, i)
        mean = sum(p) / max(len(p), 1)
        std = math.sqrt(sum((x - mean) ** 2 for x in p) / (len(p) - correction)) if len(p) > correction else 0.0
        per_seq.append((rewards[i] - mean) / (std + eps))
    return broadcast_loop(per_seq, scored, lengths, T)


def dr_grpo_loop(b):
    rewards, groups, scored, lengths, T = as_lists(b)
    per_seq = []
    for i in range(len(rewards)):
        p = peers(rewards, groups, scored, i)
        per_seq.append(rewards[i] - sum(p) / max(len(p), 1))
    return broadcast_loop(per_seq, scored, lengths, T)


def rloo_loop(b):
    rewards, groups, scored, lengths, T = as_lists(b)
    per_seq = []
    for i in range(len(rewards)):
        others = peers(rewards, groups, scored, i, include_self=False)
        per_seq.append(rewards[i] - sum(others) / len(others) if others else 0.0)
    return broadcast_loop(per_seq, scored, lengths, T)


def remax_loop(b):
    rewards, _, scored, lengths, T = as_lists(b)
    return broadcast_loop([r - g for r, g in zip(rewards, b.baseline_rewards.tolist())], scored, lengths, T)


def gae_loop(b, gamma, lam):
    _, _, _, lengths, T = as_lists(b)
    out = torch.zeros(len(lengths), T, dtype=torch.float64)
    for i, n in enumerate(lengths):
        next_value, next_advantage = b.bootstrap[i].item(), 0.0
        for t in reversed(range(n)):
            delta = b.token_rewards[i, t].item() + gamma * next_value - b.values[i, t].item()
            next_advantage = delta + gamma * lam * next_advantage
            next_value = b.values[i, t].item()
            out[i, t] = next_advantage
    return out


def returns_loop(token_rewards, lengths, gamma):
    out = [[0.0] * len(token_rewards[0]) for _ in lengths]
    for i, n in enumerate(lengths):
        running = 0.0
        for t in reversed(range(n)):
            running = token_rewards[i][t] + gamma * running
            out[i][t] = running
    return out


def whiten_loop(returns, scored, lengths, eps, center):
    flat = [returns[i][t] for i in range(len(lengths)) if scored[i] for t in range(lengths[i])]
    mean = sum(flat) / len(flat)
    std = math.sqrt(sum((x - mean) ** 2 for x in flat) / len(flat))
    shift = mean if center else 0.0
    return torch.tensor([[(returns[i][t] - shift) / (std + eps) if scored[i] and t < lengths[i] else 0.0
                          for t in range(len(returns[i]))] for i in range(len(lengths))], dtype=torch.float64)


def reinforce_pp_loop(b, gamma, eps):
    _, _, scored, lengths, _ = as_lists(b)
    return whiten_loop(returns_loop(b.token_rewards.tolist(), lengths, gamma), scored, lengths, eps, center=True)


def reinforce_pp_baseline_loop(b, gamma, eps, use_token_rewards):
    rewards, groups, scored, lengths, T = as_lists(b)
    token_rewards = b.token_rewards.tolist() if use_token_rewards else [[0.0] * T for _ in rewards]
    for i, n in enumerate(lengths):
        p = peers(rewards, groups, scored, i)
        mean = sum(p) / max(len(p), 1)
        token_rewards[i][n - 1] += -mean if use_token_rewards else rewards[i] - mean
    return whiten_loop(returns_loop(token_rewards, lengths, gamma), scored, lengths, eps, center=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorized_estimators_equal_plain_loops(seed):
    b = random_batch(seed)
    assert (~b.scored).any() and b.scored.any()
    for std, correction in (("sample", 1), ("population", 0)):
        torch.testing.assert_close(adv.grpo(b, eps=1e-6, std=std), grpo_loop(b, 1e-6, correction))
    torch.testing.assert_close(adv.dr_grpo(b), dr_grpo_loop(b))
    torch.testing.assert_close(adv.rloo(b), rloo_loop(b))
    torch.testing.assert_close(adv.remax(b), remax_loop(b))
    for gamma, lam in ((1.0, 0.95), (0.9, 1.0), (0.99, 0.0)):
        torch.testing.assert_close(adv.gae(b, gamma=gamma, lam=lam), gae_loop(b, gamma, lam))
    for gamma in (1.0, 0.9):
        torch.testing.assert_close(adv.reinforce_pp(b, gamma=gamma), reinforce_pp_loop(b, gamma, 1e-8))
        torch.testing.assert_close(adv.reinforce_pp_baseline(b, gamma=gamma),
                                   reinforce_pp_baseline_loop(b, gamma, 1e-8, use_token_rewards=True))
    b.token_rewards = None
    torch.testing.assert_close(adv.reinforce_pp_baseline(b), reinforce_pp_baseline_loop(b, 1.0, 1e-8, False))


def test_registry():
    assert {"grpo", "dr_grpo", "rloo", "gae", "remax", "reinforce", "reinforce_pp",
            "reinforce_pp_baseline"} <= set(adv.ADVANTAGES)
    assert adv.get("grpo") is adv.grpo
    with pytest.raises(ValueError, match="valid: "):
        adv.get("nope")


# ---- multi-turn: credit per turn -------------------------------------------------------------------------------------

def turns_batch(turn_rewards, turn_index, group_index, scored=None):
    turn_index = torch.tensor(turn_index)
    return AdvantageInputs(rewards=torch.tensor(turn_rewards).sum(-1), mask=(turn_index >= 0).float(),
                           group_index=torch.tensor(group_index), scored=scored, turn_index=turn_index,
                           turn_rewards=torch.tensor(turn_rewards))


def test_turn_grpo_worked_example():
    # episode 0: two tokens of turn 0, one environment token, two of turn 1; episode 1: one turn of two tokens
    batch = turns_batch([[0.1, 1.0], [0.0, 0.0]], [[0, 0, -1, 1, 1], [0, 0, -1, -1, -1]], [0, 0])
    for gamma in (1.0, 0.5):
        a = adv.get("turn_grpo")(batch, gamma=gamma)
        torch.testing.assert_close(a, torch.tensor([[0.70711, 0.70711, 0, 0, 0], [-0.70711, -0.70711, 0, 0, 0]]),
                                   atol=1e-5, rtol=0)


def test_turn_grpo_compares_each_turn_with_the_same_turn_of_its_group():
    """Two groups of three episodes with two turns each, γ = 1: turn 1's baseline is the group's turn-1 returns,
    turn 0's the group's whole returns; the other group and an unscored episode change nothing."""
    rewards = [[0.0, 1.0], [0.5, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.2, 0.3]]
    index = [[0, 1]] * 6
    a = adv.get("turn_grpo")(turns_batch(rewards, index, [0, 0, 0, 1, 1, 1]))
    r0 = torch.tensor([1.0, 0.5, 0.0])  # group 0's returns from turn 0
    r1 = torch.tensor([1.0, 0.0, 0.0])  # and from turn 1
    torch.testing.assert_close(a[:3, 0], (r0 - r0.mean()) / (r0.std() + 1e-6))
    torch.testing.assert_close(a[:3, 1], (r1 - r1.mean()) / (r1.std() + 1e-6))
    scored = torch.tensor([True, True, True, True, True, False])
    b = adv.get("turn_grpo")(turns_batch(rewards, index, [0, 0, 0, 1, 1, 1], scored))
    torch.testing.assert_close(b[:3], a[:3])
    assert b[5].abs().sum() == 0 and b[3, 0] == -b[4, 0]  # two scored episodes left in group 1: ±0.70711


def test_turn_token_rewards_worked_example():
    out = adv.turn_token_rewards(torch.tensor([[0.1, 1.0], [0.5, 0.0]]),
                                 torch.tensor([[0, 0, -1, 1, 1], [0, 0, 0, -1, -1]]))
    torch.testing.assert_close(out, torch.tensor([[0, 0.1, 0, 0, 1.0], [0, 0, 0.5, 0, 0]]))
    # the per-turn rewards sum to the episode's: GAE with γ = λ = 1 and zero values gives each token the return
    # still to come, the environment's tokens skipped
    mask = torch.tensor([[1.0, 1, 0, 1, 1]])
    a = adv.get("gae")(AdvantageInputs(rewards=torch.tensor([1.1]), mask=mask, group_index=torch.tensor([0]),
                                       token_rewards=out[:1] * mask, values=torch.zeros(1, 5)), gamma=1.0, lam=1.0)
    torch.testing.assert_close(a, torch.tensor([[1.1, 1.1, 0, 1.0, 1.0]]))
