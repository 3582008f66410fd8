"""Hand-computed examples from the docstrings of algos/reward.py and gradient directions."""

import math

import pytest
import torch

from posttrain.algos.reward import bradley_terry, pair_metrics, prm_step_loss, reward_centering


def test_bradley_terry_worked_example():
    # −log σ(2 − 0.5) = log(1 + e^−1.5); with margin 1: log(1 + e^−0.5)
    loss = bradley_terry(torch.tensor([2.0]), torch.tensor([0.5]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1.5)), abs=1e-6)
    assert loss.item() == pytest.approx(0.20141, abs=1e-5)
    with_margin = bradley_terry(torch.tensor([2.0]), torch.tensor([0.5]), torch.tensor([1.0]))
    assert with_margin.item() == pytest.approx(math.log(1 + math.exp(-0.5)), abs=1e-6)
    assert with_margin.item() == pytest.approx(0.47408, abs=1e-5)


def test_bradley_terry_equal_scores_is_ln2_and_shape():
    loss = bradley_terry(torch.zeros(3), torch.zeros(3))
    assert loss.shape == (3,)
    assert loss.tolist() == pytest.approx([math.log(2)] * 3, abs=1e-6)


def test_bradley_terry_gradient_direction():
    chosen = torch.tensor([2.0, -1.0], requires_grad=True)
    rejected = torch.tensor([0.5, 3.0], requires_grad=True)
    bradley_terry(chosen, rejected, torch.tensor([1.0, 0.0])).sum().backward()
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()
    # d/dr_c of −log σ(d) is −σ(−d): for d = 0.5, −σ(−0.5)
    assert chosen.grad[0].item() == pytest.approx(-1 / (1 + math.exp(0.5)), abs=1e-6)


def test_reward_centering_worked_example():
    assert reward_centering(torch.tensor([2.0]), torch.tensor([0.5])).item() == pytest.approx(2.5 ** 2)
    assert reward_centering(torch.tensor([3.0, -1.0]), torch.tensor([-3.0, 0.0])).tolist() == [0.0, 1.0]


def test_reward_centering_gradient_pulls_sum_to_zero():
    chosen, rejected = torch.tensor([2.0], requires_grad=True), torch.tensor([0.5], requires_grad=True)
    reward_centering(chosen, rejected).sum().backward()
    assert chosen.grad.item() == pytest.approx(2 * 2.5) and rejected.grad.item() == pytest.approx(2 * 2.5)


def test_prm_step_loss_worked_example():
    # label 1 at logit 0 → −log σ(0) = ln 2; label 0 at logit 2 → −log σ(−2) = log(1 + e²)
    loss = prm_step_loss(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0]))
    assert loss.tolist() == pytest.approx([math.log(2), math.log(1 + math.exp(2))], abs=1e-6)
    assert loss.tolist() == pytest.approx([0.69315, 2.12693], abs=1e-5)


def test_prm_step_loss_soft_labels_and_gradient():
    # soft label 0.25 at logit 0: −(0.25·log ½ + 0.75·log ½) = ln 2; gradient σ(z) − y
    logits = torch.tensor([0.0, 1.0], requires_grad=True)
    loss = prm_step_loss(logits, torch.tensor([0.25, 1.0]))
    assert loss[0].item() == pytest.approx(math.log(2), abs=1e-6)
    loss.sum().backward()
    assert logits.grad.tolist() == pytest.approx([0.5 - 0.25, 1 / (1 + math.exp(-1)) - 1], abs=1e-6)
    # bool / long labels are accepted
    assert prm_step_loss(torch.tensor([0.0]), torch.tensor([True])).item() == pytest.approx(math.log(2))


def test_pair_metrics_worked_example():
    # wins: 2 > 0.5 (1), 1 == 1 (½), 0 < 1 (0) → 0.5; margins 1.5, 0, −1 → 1/6
    m = pair_metrics(torch.tensor([2.0, 1.0, 0.0]), torch.tensor([0.5, 1.0, 1.0]))
    assert m == pytest.approx({"accuracy": 0.5, "margin": 0.5 / 3, "chosen": 1.0, "rejected": 2.5 / 3})
    assert all(type(v) is float for v in m.values())


def test_pair_metrics_accepts_tensors_that_require_grad():
    chosen = torch.tensor([1.0, 2.0], requires_grad=True)
    assert pair_metrics(chosen, torch.zeros(2))["accuracy"] == 1.0
