"""Rollout corrections (posttrain/algos/correction.py): the module docstring's worked example, by hand, for every
registered method; the sequence-level ones against a per-sequence loop; and what the RL loop makes of them."""

import math

import pytest
import torch

from posttrain.algos import correction

# log π_old − log μ per token: sequence 0 [0, log 3, log ½], sequence 1 [0.1, 0.1] (its third position is padding)
DIFF = torch.tensor([[0.0, math.log(3.0), math.log(0.5)], [0.1, 0.1, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
SAMPLER = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -9.0]])
TRAIN = SAMPLER + DIFF


def run(name, **kw):
    return correction.get(name)(TRAIN, SAMPLER, MASK, **kw)


def test_tis_truncates_each_token():
    c = run("tis", cap=2.0)
    e = math.exp(0.1)
    torch.testing.assert_close(c.weights, torch.tensor([[1.0, 2.0, 0.5], [e, e, 0.0]]))
    assert c.keep.tolist() == MASK.tolist() and c.truncated.tolist() == [[False, True, False], [False, False, False]]
    m = correction.metrics(c, MASK)
    assert m["rollout/correction_truncated_frac"] == pytest.approx(1 / 5) and m["rollout/correction_masked_frac"] == 0


def test_seq_tis_weighs_every_token_by_the_capped_sequence_ratio():
    c = run("seq_tis", cap=2.0)
    torch.testing.assert_close(c.weights, torch.tensor([[1.5] * 3, [math.exp(0.2)] * 2 + [0.0]]))
    assert not c.truncated.any()
    capped = run("seq_tis", cap=1.2)  # 1.5 and 1.2214 both pass the cap
    torch.testing.assert_close(capped.weights, torch.tensor([[1.2] * 3, [1.2] * 2 + [0.0]]))
    assert capped.truncated.sum() == 5


def test_mis_drops_tokens_outside_the_bounds_and_keeps_the_ratio_elsewhere():
    c = run("mis", cap=2.0)
    e = math.exp(0.1)
    assert c.keep.tolist() == [[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]]  # ρ = 3 > 2 dropped; ρ = ½ sits on the bound
    torch.testing.assert_close(c.weights, torch.tensor([[1.0, 0.0, 0.5], [e, e, 0.0]]))
    assert correction.metrics(c, MASK)["rollout/correction_masked_frac"] == pytest.approx(1 / 5)


def test_seq_mis_and_geo_mask_drop_whole_sequences():
    c = run("seq_mis", cap=1.4)
    assert c.keep.tolist() == [[0.0] * 3, [1.0, 1.0, 0.0]]
    torch.testing.assert_close(c.weights[1, :2], torch.full((2,), math.exp(0.2)))
    g = run("geo_mask", cap=1.12)  # geometric means 1.5^(1/3) = 1.1447 (dropped) and e^0.1 = 1.1052 (kept)
    assert g.keep.tolist() == [[0.0] * 3, [1.0, 1.0, 0.0]] and g.weights.tolist() == g.keep.tolist()
    assert run("geo_mask", cap=1.2).keep.tolist() == MASK.tolist()


def test_sequence_methods_match_a_loop_over_sequences():
    g = torch.Generator().manual_seed(0)
    sampler = -torch.rand(6, 9, generator=g) * 3
    train = sampler + torch.randn(6, 9, generator=g) * 0.3
    mask = (torch.arange(9)[None] < torch.tensor([9, 3, 5, 1, 7, 9])[:, None]).float()
    c_tis, c_mis = (correction.get(n)(train, sampler, mask, cap=1.5) for n in ("seq_tis", "seq_mis"))
    c_geo = correction.get("geo_mask")(train, sampler, mask, cap=1.05)
    for b in range(6):
        n = int(mask[b].sum())
        log_rho = (train[b, :n] - sampler[b, :n]).double()
        rho, geo = math.exp(log_rho.sum()), math.exp(log_rho.mean())
        assert c_tis.weights[b, :n].tolist() == pytest.approx([min(rho, 1.5)] * n, rel=1e-5)
        kept = 1 / 1.5 <= rho <= 1.5
        assert c_mis.keep[b, :n].tolist() == [float(kept)] * n
        assert c_geo.keep[b, :n].tolist() == [float(1 / 1.05 <= geo <= 1.05)] * n
        assert (c_tis.weights[b, n:] == 0).all() and (c_mis.keep[b, n:] == 0).all()


def test_equal_logprobs_change_nothing():
    for name in correction.CORRECTIONS:
        c = correction.get(name)(SAMPLER, SAMPLER, MASK)
        assert c.weights.tolist() == MASK.tolist() and c.keep.tolist() == MASK.tolist(), name


def test_huge_log_ratios_do_not_overflow():
    train = torch.tensor([[0.0, 0.0]])
    sampler = torch.tensor([[-500.0, -500.0]])
    for name in correction.CORRECTIONS:
        c = correction.get(name)(train, sampler, torch.ones(1, 2))
        assert torch.isfinite(c.weights).all(), name
