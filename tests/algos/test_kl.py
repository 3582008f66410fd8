"""KL estimators and controllers: the docstring's worked examples, and what each estimator promises."""

import math

import pytest
import torch

from posttrain.algos import kl


def test_worked_example():
    lp, ref = torch.tensor([[-1.0]]), torch.tensor([[-1.5]])
    assert kl.k1(lp, ref).item() == pytest.approx(0.5)
    assert kl.k2(lp, ref).item() == pytest.approx(0.125)
    assert kl.k3(lp, ref).item() == pytest.approx(math.exp(-0.5) - 1 + 0.5, abs=1e-7)
    assert kl.k3(lp, ref).item() == pytest.approx(0.10653, abs=1e-5)
    assert kl.get("k3") is kl.k3
    with pytest.raises(ValueError, match="k1, k2, k3"):
        kl.get("k4")


def test_k1_and_k3_are_unbiased_and_k3_is_never_negative():
    # two categorical distributions; sample from π and compare the estimators' means with the exact KL(π‖π_ref)
    torch.manual_seed(0)
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.2, 0.3, 0.5])
    exact = (p * (p / q).log()).sum().item()
    y = torch.multinomial(p, 400_000, replacement=True)
    lp, ref = p.log()[y], q.log()[y]
    assert kl.k1(lp, ref).mean().item() == pytest.approx(exact, abs=3e-3)
    assert kl.k3(lp, ref).mean().item() == pytest.approx(exact, abs=3e-3)
    assert (kl.k3(lp, ref) >= 0).all() and (kl.k1(lp, ref) < 0).any()
    assert kl.k3(lp, ref).var() < kl.k1(lp, ref).var()
    # k3 stays finite where e^(log r) would overflow
    assert torch.isfinite(kl.k3(torch.tensor([-200.0]), torch.tensor([0.0]))).all()


def test_adaptive_controller_worked_example_and_state():
    c = kl.AdaptiveKLController(0.1, target=6, horizon=10000)
    c.update(12, n_steps=512)
    assert c.value == pytest.approx(0.101024)
    c2 = kl.AdaptiveKLController(0.1, target=6, horizon=10000)
    c2.update(3, n_steps=512)
    assert c2.value == pytest.approx(0.098976)
    restored = kl.AdaptiveKLController(0.5, target=6, horizon=10000)
    restored.load_state_dict(c.state_dict())
    assert restored.value == c.value
    fixed = kl.FixedKLController(0.05)
    fixed.update(100.0, n_steps=512)
    assert fixed.value == 0.05
