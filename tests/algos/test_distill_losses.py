"""Distillation losses (posttrain/algos/distill.py): the docstring's worked numbers, zero at equality, τ²
scaling, gradients against closed forms and finite differences, JSD's symmetry and limits, masking."""

import math

import pytest
import torch

from posttrain.algos import distill
from posttrain.algos.aggregate import aggregate

LN3 = math.log(3.0)
TEACHER = torch.tensor([[[0.0, LN3]]])  # p_T = [1/4, 3/4]
STUDENT = torch.tensor([[[0.0, 0.0]]])  # p_S = [1/2, 1/2]
ONE = torch.ones(1, 1)


def loss(name, student=STUDENT, teacher=TEACHER, mask=ONE, **kw):
    return distill.get(name)(student, teacher, mask, **kw)


@pytest.mark.parametrize("name, kw, expected", [
    ("forward_kl", {}, 0.130812),
    ("reverse_kl", {}, 0.143841),
    ("jsd", {"beta": 0.5}, 0.033822),
    ("jsd", {"beta": 0.1}, 0.011831),
    ("jsd", {"beta": 0.9}, 0.012752),
    ("forward_kl", {"temperature": 2.0}, 0.145363),
    ("reverse_kl", {"temperature": 2.0}, 0.149009),
    ("jsd", {"beta": 0.5, "temperature": 2.0}, 0.036675),
])
def test_worked_example(name, kw, expected):
    out = loss(name, **kw)
    assert out.shape == (1, 1)
    assert out.item() == pytest.approx(expected, abs=1e-6)


def test_hand_derivation_of_the_worked_example():
    """The docstring's numbers from the formulas themselves, independent of the implementation."""
    p_t, p_s = [0.25, 0.75], [0.5, 0.5]

    def kl(p, q):
        return sum(a * math.log(a / b) for a, b in zip(p, q))

    m = [0.5 * a + 0.5 * b for a, b in zip(p_t, p_s)]
    assert kl(p_t, p_s) == pytest.approx(0.130812, abs=1e-6)
    assert kl(p_s, p_t) == pytest.approx(0.143841, abs=1e-6)
    assert 0.5 * kl(p_t, m) + 0.5 * kl(p_s, m) == pytest.approx(0.033822, abs=1e-6)


@pytest.mark.parametrize("name, kw", [("forward_kl", {}), ("reverse_kl", {}), ("jsd", {"beta": 0.5}),
                                      ("jsd", {"beta": 0.2}), ("forward_kl", {"temperature": 3.0}),
                                      ("jsd", {"beta": 0.7, "temperature": 0.5})])
def test_student_equal_to_teacher_gives_zero_loss_and_zero_gradient(name, kw):
    logits = torch.randn(3, 5, 50, generator=torch.Generator().manual_seed(0)) * 3
    student = logits.clone().requires_grad_(True)
    out = loss(name, student, logits, torch.ones(3, 5), **kw)
    assert out.abs().max().item() < 1e-6
    out.sum().backward()
    assert student.grad.abs().max().item() < 1e-6


@pytest.mark.parametrize("name, kw", [("forward_kl", {}), ("reverse_kl", {}), ("jsd", {"beta": 0.3})])
def test_temperature_divides_the_logits_and_multiplies_the_loss_by_tau_squared(name, kw):
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 3, 7, generator=g), torch.randn(2, 3, 7, generator=g)
    tau = 2.5
    at_tau = loss(name, student, teacher, torch.ones(2, 3), temperature=tau, **kw)
    rescaled = loss(name, student / tau, teacher / tau, torch.ones(2, 3), **kw)  # τ = 1 on pre-divided logits
    assert torch.allclose(at_tau, tau ** 2 * rescaled, atol=1e-6)


def test_forward_kl_gradient_is_tau_times_student_minus_teacher_probabilities():
    for tau in (1.0, 2.0):
        student = STUDENT.clone().requires_grad_(True)
        loss("forward_kl", student, TEACHER, temperature=tau).sum().backward()
        expected = tau * (torch.softmax(STUDENT / tau, -1) - torch.softmax(TEACHER / tau, -1))
        assert torch.allclose(student.grad, expected, atol=1e-6)
    assert student.grad[0, 0].tolist() == pytest.approx([0.267949, -0.267949], abs=1e-6)  # the docstring's τ = 2


def test_reverse_kl_gradient_closed_form():
    g = torch.Generator().manual_seed(2)
    student_logits, teacher_logits = torch.randn(1, 4, 9, generator=g), torch.randn(1, 4, 9, generator=g)
    student = student_logits.clone().requires_grad_(True)
    loss("reverse_kl", student, teacher_logits, torch.ones(1, 4)).sum().backward()
    log_p, log_q = torch.log_softmax(student_logits, -1), torch.log_softmax(teacher_logits, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1, keepdim=True)
    assert torch.allclose(student.grad, log_p.exp() * (log_p - log_q - kl), atol=1e-6)
    worked = STUDENT.clone().requires_grad_(True)
    loss("reverse_kl", worked).sum().backward()
    assert worked.grad[0, 0].tolist() == pytest.approx([0.274653, -0.274653], abs=1e-6)


@pytest.mark.parametrize("name, kw", [("forward_kl", {"temperature": 1.5}), ("reverse_kl", {}),
                                      ("jsd", {"beta": 0.5}), ("jsd", {"beta": 0.15, "temperature": 2.0})])
def test_gradients_match_finite_differences(name, kw):
    g = torch.Generator().manual_seed(3)
    student = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    teacher = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])

    def total(s):  # the losses compute in float32; differences in float32 need a coarse step
        return loss(name, s, teacher, mask, **kw).double().sum()

    student.requires_grad_(True)
    total(student).backward()
    eps = 1e-2
    numeric = torch.zeros_like(student)
    for index in torch.cartesian_prod(*[torch.arange(n) for n in student.shape]).tolist():
        bump = torch.zeros_like(student)
        bump[tuple(index)] = eps
        with torch.no_grad():
            numeric[tuple(index)] = (total(student + bump) - total(student - bump)) / (2 * eps)
    assert torch.allclose(student.grad, numeric, atol=2e-4)


def test_jsd_is_symmetric_at_half_and_not_elsewhere():
    g = torch.Generator().manual_seed(4)
    a, b = torch.randn(2, 4, 11, generator=g) * 2, torch.randn(2, 4, 11, generator=g) * 2
    mask = torch.ones(2, 4)
    assert torch.allclose(loss("jsd", a, b, mask, beta=0.5), loss("jsd", b, a, mask, beta=0.5), atol=1e-6)
    assert not torch.allclose(loss("jsd", a, b, mask, beta=0.2), loss("jsd", b, a, mask, beta=0.2), atol=1e-4)


def test_jsd_limits_are_scaled_forward_and_reverse_kl_and_it_stays_bounded():
    small, near_one = 1e-4, 1 - 1e-4
    assert loss("jsd", beta=small).item() / small == pytest.approx(loss("forward_kl").item(), rel=1e-2)
    assert loss("jsd", beta=near_one).item() / (1 - near_one) == pytest.approx(loss("reverse_kl").item(), rel=1e-2)
    far_student = torch.tensor([[[30.0, -30.0]]])  # nearly one-hot, opposite to a nearly one-hot teacher
    far_teacher = torch.tensor([[[-30.0, 30.0]]])
    assert loss("jsd", far_student, far_teacher, beta=0.5).item() <= math.log(2) + 1e-6
    assert loss("forward_kl", far_student, far_teacher).item() > 50  # the KLs are not bounded
    for beta in (0.0, 1.0):
        with pytest.raises(ValueError, match="forward_kl .* reverse_kl"):
            loss("jsd", beta=beta)


def test_masked_positions_are_zero_and_get_no_gradient():
    g = torch.Generator().manual_seed(5)
    student = torch.randn(2, 3, 5, generator=g).requires_grad_(True)
    teacher = torch.randn(2, 3, 5, generator=g)
    mask = torch.tensor([[1, 0, 1], [0, 0, 1]])
    for name in distill.DISTILL_LOSSES:
        student.grad = None
        out = distill.get(name)(student, teacher, mask)
        assert (out[mask == 0] == 0).all() and (out[mask == 1] > 0).all()
        out.sum().backward()
        assert (student.grad[mask == 0] == 0).all()


def test_teacher_gets_no_gradient_and_shapes_must_agree():
    teacher = TEACHER.clone().requires_grad_(True)
    student = STUDENT.clone().requires_grad_(True)
    loss("forward_kl", student, teacher).sum().backward()
    assert teacher.grad is None and student.grad is not None
    with pytest.raises(ValueError, match="shared vocabulary"):
        loss("forward_kl", torch.zeros(1, 1, 3), TEACHER)


def test_reduced_with_aggregate_token_mean():
    student = torch.cat([STUDENT, STUDENT], 1)
    teacher = torch.cat([TEACHER, STUDENT], 1)  # second token: equal distributions, loss 0
    per_token = loss("forward_kl", student, teacher, torch.ones(1, 2))
    assert aggregate(per_token, torch.ones(1, 2), "token_mean").item() == pytest.approx(0.130812 / 2, abs=1e-6)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="forward_kl, jsd, reverse_kl"):
        distill.get("kl")
