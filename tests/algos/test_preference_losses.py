"""Hand-computed examples from the docstrings of algos/preference.py, plus gradient directions, limiting cases
and the registry contract. Expected numbers are derived with `math`, never by calling the code under test."""

import math

import pytest
import torch

from posttrain.algos import preference
from posttrain.algos.preference import PreferenceLogps


def softplus(x: float) -> float:      # −log σ(−x) = log(1 + eˣ)
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def logps(chosen=-10.0, rejected=-12.0, ref_chosen=-11.0, ref_rejected=-10.0, n_chosen=5, n_rejected=4,
          reference=True, grad=False) -> PreferenceLogps:
    """The docstrings' running example (B = 1): h = (−10 + 11) − (−12 + 10) = 3, a_c = −2, a_r = −3."""
    c = torch.tensor([chosen], requires_grad=grad)
    r = torch.tensor([rejected], requires_grad=grad)
    return PreferenceLogps(c, r, torch.tensor([n_chosen]), torch.tensor([n_rejected]),
                           torch.tensor([ref_chosen]) if reference else None,
                           torch.tensor([ref_rejected]) if reference else None)


def value(name, lp, **kw) -> float:
    return preference.get(name)(lp, **kw).losses.item()


PAIRED = preference.LOSSES.select(unpaired=False)


# ---- worked examples ------------------------------------------------------------------------------------

def test_dpo_worked_example():
    # h = 3, β = 0.1: −log σ(0.3) = log(1 + e^−0.3)
    out = preference.dpo(logps(), beta=0.1)
    assert out.losses.item() == pytest.approx(math.log(1 + math.exp(-0.3)), abs=1e-6)
    assert out.losses.item() == pytest.approx(0.55436, abs=1e-5)
    assert out.chosen_rewards.item() == pytest.approx(0.1 * (-10 + 11))
    assert out.rejected_rewards.item() == pytest.approx(0.1 * (-12 + 10))


def test_dpo_policy_equal_to_reference_is_ln2():
    lp = logps(chosen=-7.0, rejected=-3.0, ref_chosen=-7.0, ref_rejected=-3.0)
    assert preference.dpo(lp).losses.item() == pytest.approx(math.log(2), abs=1e-6)


def test_cdpo_worked_example():
    # (1 − ε)·softplus(−0.3) + ε·softplus(0.3), ε = 0.1
    expected = 0.9 * softplus(-0.3) + 0.1 * softplus(0.3)
    assert value("cdpo", logps(), label_smoothing=0.1) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.58436, abs=1e-5)


def test_robust_worked_example():
    expected = (0.9 * softplus(-0.3) - 0.1 * softplus(0.3)) / (1 - 2 * 0.1)
    assert value("robust", logps(), label_smoothing=0.1) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.51686, abs=1e-5)
    with pytest.raises(ValueError, match="label_smoothing"):
        preference.robust(logps(), label_smoothing=0.5)


def test_ipo_worked_example_uses_summed_logps():
    # (h − 1/(2β))² = (3 − 5)² = 4 with summed log-probs (token counts must not matter)
    assert value("ipo", logps(), beta=0.1) == pytest.approx(4.0, abs=1e-5)
    assert value("ipo", logps(n_chosen=50, n_rejected=1), beta=0.1) == pytest.approx(4.0, abs=1e-5)


def test_hinge_worked_example_and_zero_past_margin():
    assert value("hinge", logps(), beta=0.1) == pytest.approx(1 - 0.3, abs=1e-6)
    lp = logps(grad=True)
    out = preference.hinge(lp, beta=1.0)          # βh = 3 ≥ 1: flat
    out.losses.sum().backward()
    assert out.losses.item() == 0.0 and lp.chosen.grad.item() == 0.0


def test_rpo_worked_example():
    # dpo + α·NLL_c, NLL_c = 10/5 = 2
    assert value("rpo", logps(), alpha=1.0) == pytest.approx(softplus(-0.3) + 2.0, abs=1e-6)
    assert value("rpo", logps(), alpha=0.5) == pytest.approx(softplus(-0.3) + 1.0, abs=1e-6)


def test_tr_dpo_is_dpo():
    torch.manual_seed(0)
    lp = PreferenceLogps(*(-torch.rand(5) * 20 for _ in range(2)), torch.full((5,), 7), torch.full((5,), 9),
                         *(-torch.rand(5) * 20 for _ in range(2)))
    a, b = preference.tr_dpo(lp, beta=0.3), preference.dpo(lp, beta=0.3)
    assert torch.equal(a.losses, b.losses) and torch.equal(a.chosen_rewards, b.chosen_rewards)


def test_dpop_worked_example():
    # π_c = −12 < ref_c = −11: penalty 1; h = (−12 + 11) − (−14 + 10) = 3; −log σ(0.1·(3 − 1·1))
    lp = logps(chosen=-12.0, rejected=-14.0)
    assert value("dpop", lp, beta=0.1, lam=1.0) == pytest.approx(softplus(-0.2), abs=1e-6)
    assert softplus(-0.2) == pytest.approx(0.59814, abs=1e-5)
    # chosen above its reference: no penalty, equals dpo whatever λ
    assert value("dpop", logps(), lam=50.0) == pytest.approx(softplus(-0.3), abs=1e-6)


def test_exo_pair_worked_example():
    p, eps = sigmoid(0.3), 0.1
    expected = p * math.log(p / (1 - eps)) + (1 - p) * math.log((1 - p) / eps)
    assert value("exo_pair", logps(), label_smoothing=eps) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.35838, abs=1e-5)
    with pytest.raises(ValueError, match="label_smoothing"):
        preference.exo_pair(logps(), label_smoothing=0.0)


def test_exo_pair_is_zero_at_the_target():
    # p = σ(βh) = 1 − ε exactly → KL(p‖target) = 0
    eps = 0.2
    h = math.log((1 - eps) / eps) / 0.1          # βh = logit(1 − ε)
    lp = logps(chosen=h, rejected=0.0, ref_chosen=0.0, ref_rejected=0.0)
    assert value("exo_pair", lp, label_smoothing=eps) == pytest.approx(0.0, abs=1e-6)


def test_nca_pair_worked_example():
    # r_c = 0.1, r_r = −0.2: softplus(−0.1) + ½ softplus(0.1) + ½ softplus(−0.2)
    expected = softplus(-0.1) + 0.5 * softplus(0.1) + 0.5 * softplus(-0.2)
    assert value("nca_pair", logps()) == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(1.31566, abs=1e-5)


def test_apo_worked_examples():
    assert value("apo_zero", logps()) == pytest.approx(1 - sigmoid(0.1) + sigmoid(-0.2), abs=1e-6)
    assert value("apo_zero", logps()) == pytest.approx(0.92519, abs=1e-5)
    assert value("apo_down", logps()) == pytest.approx(sigmoid(0.1) + 1 - sigmoid(0.3), abs=1e-6)
    assert value("apo_down", logps()) == pytest.approx(0.95054, abs=1e-5)


def test_simpo_worked_example():
    # a_c = −10/5 = −2, a_r = −12/4 = −3; −log σ(2·(−2 + 3) − 0.5) = softplus(−1.5)
    out = preference.simpo(logps(reference=False), beta=2.0, gamma=0.5)
    assert out.losses.item() == pytest.approx(softplus(-1.5), abs=1e-6)
    assert out.losses.item() == pytest.approx(0.20141, abs=1e-5)
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == pytest.approx((-4.0, -6.0))


def test_orpo_worked_example():
    log_odds = lambda a: a - math.log(1 - math.exp(a))  # noqa: E731
    ratio = log_odds(-2.0) - log_odds(-3.0)
    expected = 2.0 + 0.1 * softplus(-ratio)             # NLL_c = 2, λ = 0.1
    out = preference.orpo(logps(reference=False), beta=0.1, lam=0.1)
    assert out.losses.item() == pytest.approx(expected, abs=1e-5)
    assert expected == pytest.approx(2.02888, abs=1e-5)
    # beta only scales the reported rewards, never the loss
    assert preference.orpo(logps(reference=False), beta=7.0, lam=0.1).losses.item() == pytest.approx(expected,
                                                                                                      abs=1e-5)
    assert out.chosen_rewards.item() == pytest.approx(0.1 * -2.0)


def test_orpo_log_odds_stable_near_probability_one():
    # a = −1e-6 → p ≈ 1 − 1e-6: log odds ≈ log(1/1e-6) = 13.8155; naive log(1 − exp(a)) in float32 loses it
    a = torch.tensor([-1e-6])
    assert preference._log_odds(a).item() == pytest.approx(-1e-6 - math.log(-math.expm1(-1e-6)), rel=1e-4)


def test_rrhf_worked_examples():
    assert value("rrhf", logps(reference=False)) == pytest.approx(0.0 + 2.0, abs=1e-6)
    # swapped: a_c = −12/4 = −3, a_r = −10/5 = −2 → max(0, −2 + 3) + 3
    swapped = logps(chosen=-12.0, rejected=-10.0, n_chosen=4, n_rejected=5, reference=False)
    assert value("rrhf", swapped) == pytest.approx(1.0 + 3.0, abs=1e-6)


def test_rrhf_ranking_worked_example():
    # pairs with s_i < s_j: (0,1) max(0, −1+2)=1, (0,2) 2, (1,2) 1 → 4, plus NLL_best 3
    a = torch.tensor([[-1.0, -2.0, -3.0]])
    scores = torch.tensor([[0.0, 1.0, 2.0]])
    assert preference.rrhf_ranking(a, scores, torch.tensor([3.0])).item() == pytest.approx(7.0)
    # tied scores add no pair
    assert preference.rrhf_ranking(a, torch.zeros(1, 3), torch.tensor([3.0])).item() == pytest.approx(3.0)


def test_rrhf_ranking_with_two_responses_equals_pair_form():
    torch.manual_seed(0)
    lp = PreferenceLogps(-torch.rand(6) * 30, -torch.rand(6) * 30, torch.randint(1, 20, (6,)),
                         torch.randint(1, 20, (6,)))
    pair = preference.rrhf(lp).losses
    a_c, a_r = lp.chosen / lp.chosen_tokens, lp.rejected / lp.rejected_tokens
    ranked = preference.rrhf_ranking(torch.stack([a_r, a_c], 1), torch.tensor([[0.0, 1.0]]).expand(6, 2), -a_c)
    assert torch.allclose(pair, ranked, atol=1e-6)


def test_kto_worked_example():
    # r = [1, −2], z0 = 0.5: [1 − σ(0.1·0.5), 1 − σ(0.1·2.5)]
    out = preference.kto(torch.tensor([-10.0, -12.0]), torch.tensor([-11.0, -10.0]),
                         torch.tensor([True, False]), torch.tensor(0.5), beta=0.1)
    assert out.losses.tolist() == pytest.approx([1 - sigmoid(0.05), 1 - sigmoid(0.25)], abs=1e-6)
    assert out.losses.tolist() == pytest.approx([0.48750, 0.43782], abs=1e-5)
    assert out.chosen_rewards.tolist() == pytest.approx([0.1, 0.0])
    assert out.rejected_rewards.tolist() == pytest.approx([0.0, -0.2])
    weighted = preference.kto(torch.tensor([-10.0, -12.0]), torch.tensor([-11.0, -10.0]),
                              torch.tensor([True, False]), 0.5, desirable_weight=2.0, undesirable_weight=3.0)
    assert weighted.losses.tolist() == pytest.approx([2 * (1 - sigmoid(0.05)), 3 * (1 - sigmoid(0.25))], abs=1e-6)


def test_kto_reference_point():
    assert preference.kto_reference_point(torch.tensor([1.0, -3.0, 4.0]), torch.zeros(3)).item() == \
        pytest.approx(2 / 3)
    assert preference.kto_reference_point(torch.tensor([-1.0, -2.0]), torch.zeros(2)).item() == 0.0
    lp = torch.tensor([1.0], requires_grad=True)
    assert not preference.kto_reference_point(lp, torch.zeros(1)).requires_grad


def test_kto_gradient_directions():
    lp = torch.tensor([-10.0, -12.0], requires_grad=True)
    out = preference.kto(lp, torch.tensor([-11.0, -10.0]), torch.tensor([True, False]), 0.5)
    out.losses.sum().backward()
    assert lp.grad[0] < 0 < lp.grad[1]          # raise the desirable, lower the undesirable


# ---- properties shared by every paired loss ---------------------------------------------------------------

# A point where every loss is active (policy prefers the rejected response, so no hinge is flat):
# π_c = −15 (5 tokens), π_r = −8 (4 tokens), ref −14 / −9 → h = −2, a_c = −3 < a_r = −2.
HARD = dict(chosen=-15.0, rejected=-8.0, ref_chosen=-14.0, ref_rejected=-9.0)


@pytest.mark.parametrize("name", PAIRED)
def test_gradient_pushes_chosen_up_and_rejected_down(name):
    lp = logps(**HARD, grad=True)
    preference.get(name)(lp).losses.sum().backward()
    assert lp.rejected.grad.item() > 0
    if name == "apo_down":      # by design it lowers the chosen likelihood too, only less than the rejected
        assert lp.chosen.grad.item() > 0
    else:
        assert lp.chosen.grad.item() < 0


@pytest.mark.parametrize("name", PAIRED)
def test_shapes_preserved_and_rewards_detached(name):
    torch.manual_seed(0)
    B = 4
    lp = PreferenceLogps(-torch.rand(B, requires_grad=True) * 20, -torch.rand(B, requires_grad=True) * 20,
                         torch.randint(1, 10, (B,)), torch.randint(1, 10, (B,)),
                         -torch.rand(B) * 20, -torch.rand(B) * 20)
    out = preference.get(name)(lp)
    assert out.losses.shape == out.chosen_rewards.shape == out.rejected_rewards.shape == (B,)
    assert out.losses.requires_grad
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad
    assert torch.isfinite(out.losses).all()


@pytest.mark.parametrize("name", ["cdpo", "robust"])
def test_zero_label_smoothing_is_dpo(name):
    assert value(name, logps(**HARD), label_smoothing=0.0) == pytest.approx(value("dpo", logps(**HARD)), abs=1e-6)


def test_rpo_with_zero_alpha_is_dpo():
    assert value("rpo", logps(**HARD), alpha=0.0) == pytest.approx(value("dpo", logps(**HARD)), abs=1e-7)


def test_dpo_symmetry_swapping_responses():
    # −log σ(x) − (−log σ(−x)) = −x: swapping chosen and rejected flips the sign of βh
    lp = logps()
    swapped = PreferenceLogps(lp.rejected, lp.chosen, lp.rejected_tokens, lp.chosen_tokens,
                              lp.ref_rejected, lp.ref_chosen)
    assert value("dpo", lp) - value("dpo", swapped) == pytest.approx(-0.3, abs=1e-6)


# ---- registry -------------------------------------------------------------------------------------------

def test_registry_contents():
    assert set(preference.names()) == {"dpo", "cdpo", "robust", "ipo", "hinge", "kto", "simpo", "orpo", "rrhf",
                                       "rpo", "tr_dpo", "dpop", "exo_pair", "nca_pair", "apo_zero", "apo_down"}
    assert preference.names() == sorted(preference.names())
    assert set(preference.LOSSES.select(unpaired=True)) == {"kto"}
    assert set(preference.LOSSES.select(needs_reference=True)) == set(preference.names()) - {"simpo", "orpo", "rrhf"}
    assert preference.LOSSES.select(moving_reference=True) == ["tr_dpo"]
    assert {name: tuple(preference.LOSSES.entry(name).hparams) for name in preference.names()} == {
        "dpo": (), "cdpo": ("label_smoothing",), "robust": ("label_smoothing",), "ipo": (), "hinge": (),
        "rpo": ("alpha",), "tr_dpo": (), "dpop": ("lam",), "exo_pair": ("label_smoothing",), "nca_pair": (),
        "apo_zero": (), "apo_down": (), "simpo": ("gamma",), "orpo": ("lam",), "rrhf": (),
        "kto": ("desirable_weight", "undesirable_weight")}


def test_unknown_name_lists_valid_names_sorted():
    with pytest.raises(ValueError, match="unknown preference loss 'dpoo'") as err:
        preference.get("dpoo")
    assert ", ".join(sorted(preference.LOSSES)) in str(err.value)


def test_unknown_hyperparameter_is_rejected():
    with pytest.raises(TypeError):
        preference.dpo(logps(), label_smoothing=0.1)


@pytest.mark.parametrize("name", preference.LOSSES.select(needs_reference=True, unpaired=False))
def test_reference_losses_raise_without_reference(name):
    with pytest.raises(ValueError, match="reference"):
        preference.get(name)(logps(reference=False))


def test_kto_raises_without_reference():
    with pytest.raises(ValueError, match="reference"):
        preference.kto(torch.tensor([-1.0]), None, torch.tensor([True]), 0.0)


@pytest.mark.parametrize("name", ["simpo", "orpo", "rrhf"])
def test_reference_free_losses_ignore_reference(name):
    assert value(name, logps(reference=False)) == pytest.approx(value(name, logps()), abs=1e-7)
