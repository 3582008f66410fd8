"""Advantage estimators: each docstring's worked example, group handling, unscored responses, padding."""

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


def test_registry():
    assert {"grpo", "dr_grpo", "rloo", "gae"} <= set(adv.ADVANTAGES)
    assert adv.get("grpo") is adv.grpo
    with pytest.raises(ValueError, match="valid: "):
        adv.get("nope")
