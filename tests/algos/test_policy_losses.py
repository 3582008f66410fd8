"""Policy and value losses: each docstring's worked example (values and autograd gradients), the clip masks, the
on-policy limit, GSPO-token against plain sequence-level GSPO, and micro-batch × accumulation invariance."""

import math

import pytest
import torch
import torch.nn.functional as F

from posttrain.algos import policy
from posttrain.algos.aggregate import MODES, aggregate


def one_token(ratio, advantage, loss="ppo_clip", **hyperparameters):
    """(loss value, d loss / d log π, PolicyLoss) for one token with the given ratio and advantage."""
    logps = torch.tensor([[math.log(ratio)]], dtype=torch.float64, requires_grad=True)
    out = policy.get(loss)(logps, torch.zeros(1, 1, dtype=torch.float64), torch.tensor([[float(advantage)]]),
                           torch.ones(1, 1), **hyperparameters)
    out.losses.sum().backward()
    return out.losses.item(), logps.grad.item(), out


def flags(out):
    return out.clipped_low.item(), out.clipped_high.item(), out.dual_clipped.item()


def test_ppo_clip_worked_examples():
    loss, grad, out = one_token(1.5, +1, eps_low=0.2)
    assert loss == pytest.approx(-1.2) and grad == 0.0 and flags(out) == (False, True, False)
    assert out.ratio.item() == pytest.approx(1.5)
    # clip-higher: ε_high = 0.28 leaves r = 1.25 inside the region, so it still learns
    loss, grad, out = one_token(1.25, +1, eps_low=0.2, eps_high=0.28)
    assert loss == pytest.approx(-1.25) and grad == pytest.approx(-1.25) and flags(out) == (False, False, False)
    loss, grad, out = one_token(1.25, +1, eps_low=0.2)  # symmetric ε: the same token is clipped at 1.2
    assert loss == pytest.approx(-1.2) and grad == 0.0
    loss, grad, out = one_token(0.5, -1, eps_low=0.2)
    assert loss == pytest.approx(0.8) and grad == 0.0 and flags(out) == (True, False, False)
    # dual clip: r = 5, A = −1 → objective max(min(−5, −1.2), −3) = −3, and no gradient
    loss, grad, out = one_token(5.0, -1, eps_low=0.2, dual_clip=3.0)
    assert loss == pytest.approx(3.0) and grad == 0.0 and flags(out) == (False, False, True)
    loss, grad, out = one_token(5.0, -1, eps_low=0.2)  # without it the loss is r·|A| with gradient 5
    assert loss == pytest.approx(5.0) and grad == pytest.approx(5.0) and flags(out) == (False, False, False)
    loss, grad, out = one_token(2.0, -1, eps_low=0.2, dual_clip=3.0)  # below the cap: unchanged
    assert loss == pytest.approx(2.0) and grad == pytest.approx(2.0) and flags(out) == (False, False, False)
    with pytest.raises(ValueError, match="c > 1"):
        one_token(1.0, 1, dual_clip=0.5)


def test_module_docstring_example():
    loss, grad, _ = one_token(1.1, +1, eps_low=0.2)
    assert loss == pytest.approx(-1.1) and grad == pytest.approx(-1.1)


def test_clip_masks_and_zero_gradient_where_clipped():
    ratios = torch.tensor([0.5, 0.9, 1.0, 1.1, 1.3, 2.0], dtype=torch.float64)
    r = torch.cat([ratios, ratios])[None, :]
    a = torch.cat([torch.ones(6), -torch.ones(6)]).double()[None, :]
    logps = r.log().clone().requires_grad_(True)
    out = policy.ppo_clip(logps, torch.zeros_like(r), a, torch.ones_like(r), eps_low=0.2, eps_high=0.28)
    out.losses.sum().backward()
    assert out.clipped_high.tolist() == [[False] * 4 + [True, True] + [False] * 6]
    assert out.clipped_low.tolist() == [[False] * 6 + [True] + [False] * 5]
    clipped = out.clipped_low | out.clipped_high
    assert (logps.grad[clipped] == 0).all() and (logps.grad[~clipped] != 0).all()
    assert not out.dual_clipped.any()
    # padding: no loss, never counted as clipped
    padded = policy.ppo_clip(logps.detach(), torch.zeros_like(r), a, torch.zeros_like(r))
    assert padded.losses.abs().max().item() == 0.0 and not (padded.clipped_low | padded.clipped_high).any()


@pytest.mark.parametrize("name", ["ppo_clip", "gspo", "vanilla", "cispo", "gmpo"])
def test_on_policy_ratio_one_gives_minus_advantage(name):
    torch.manual_seed(0)
    old = -torch.rand(3, 4, dtype=torch.float64) * 3
    logps = old.clone().requires_grad_(True)
    a = torch.randn(3, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    out = policy.get(name)(logps, old, a, mask)
    out.losses.sum().backward()
    torch.testing.assert_close(out.losses, -a * mask)
    torch.testing.assert_close(logps.grad, -a * mask)  # d loss / d log π_t = −A_t: the policy-gradient step
    assert (out.ratio == 1).all() and not (out.clipped_low | out.clipped_high | out.dual_clipped).any()


def test_vanilla_worked_example():
    loss, grad, out = one_token(1.0, 2, loss="vanilla")
    assert loss == -2.0 and grad == -2.0 and flags(out) == (False, False, False)
    loss, grad, _ = one_token(3.0, 2, loss="vanilla")  # never clipped: the importance weight passes through
    assert loss == pytest.approx(-6.0) and grad == pytest.approx(-6.0)


def test_gspo_worked_example():
    old = torch.tensor([[-1.0, -2.0, -1.5]], dtype=torch.float64)
    logps = (old + torch.tensor([[0.1, -0.1, 0.3]], dtype=torch.float64)).requires_grad_(True)
    a, mask = torch.ones(1, 3, dtype=torch.float64), torch.ones(1, 3)
    out = policy.gspo(logps, old, a, mask, eps_low=0.2, eps_high=0.2)
    s = math.exp(0.1)
    assert out.losses.tolist()[0] == pytest.approx([-s] * 3) and s == pytest.approx(1.10517, abs=1e-5)
    assert out.ratio.tolist()[0] == pytest.approx([s] * 3)
    aggregate(out.losses, mask, "seq_mean_token_mean").backward()
    assert logps.grad.tolist()[0] == pytest.approx([-s / 3] * 3)
    assert s / 3 == pytest.approx(0.36839, abs=1e-5)
    # the paper's ε (3e-4 / 4e-4): s = 1.105 is far outside, every token is clipped and gets no gradient
    logps.grad = None
    out = policy.gspo(logps, old, a, mask)
    aggregate(out.losses, mask, "seq_mean_token_mean").backward()
    assert out.clipped_high.all() and (logps.grad == 0).all()
    assert out.losses.tolist()[0] == pytest.approx([-(1 + 4e-4)] * 3)


def test_gspo_token_form_equals_sequence_level_gspo():
    # GSPO as the paper writes it: J = mean_i min(s_i·A_i, clip(s_i)·A_i) with s_i differentiated directly
    torch.manual_seed(1)
    B, T, eps = 6, 5, 0.05
    mask = (torch.arange(T)[None, :] < torch.tensor([5, 3, 1, 4, 2, 5])[:, None]).double()
    old = -torch.rand(B, T, dtype=torch.float64) * 3
    logps = (old + 0.1 * torch.randn(B, T, dtype=torch.float64)).requires_grad_(True)
    a_seq = torch.randn(B, dtype=torch.float64)
    out = policy.gspo(logps, old, a_seq[:, None] * mask, mask, eps_low=eps, eps_high=eps)
    aggregate(out.losses, mask, "seq_mean_token_mean").backward()
    token_form = logps.grad.clone()
    logps.grad = None
    s = (((logps - old) * mask).sum(-1) / mask.sum(-1)).exp()
    objective = torch.minimum(s * a_seq, s.clamp(1 - eps, 1 + eps) * a_seq).mean()
    (-objective).backward()
    torch.testing.assert_close(token_form, logps.grad)
    assert 0 < (out.clipped_low | out.clipped_high).any(-1).sum() < B  # the test covers both cases


def test_cispo_worked_example():
    loss, grad, out = one_token(1.5, +1, loss="cispo", eps_high=0.2)
    assert loss == pytest.approx(-1.2) and grad == pytest.approx(-1.2) and flags(out) == (False, True, False)
    assert one_token(1.5, +1, eps_low=0.2)[1] == 0.0  # where ppo_clip's gradient is 0
    loss, grad, out = one_token(1.1, +1, loss="cispo", eps_high=0.2)
    assert loss == pytest.approx(-1.1) and grad == pytest.approx(-1.1) and flags(out) == (False, False, False)
    loss, grad, out = one_token(0.5, -1, loss="cispo", eps_low=0.2, eps_high=0.2)
    assert loss == pytest.approx(0.8) and grad == pytest.approx(0.8) and flags(out) == (True, False, False)
    loss, grad, out = one_token(0.5, -1, loss="cispo")  # the defaults: no lower bound
    assert loss == pytest.approx(0.5) and grad == pytest.approx(0.5) and flags(out) == (False, False, False)


def test_cispo_keeps_the_gradient_of_clipped_tokens():
    # the ratios of the ppo_clip mask test: there the clipped tokens get no gradient; here every token keeps
    # d loss / d log π = −ŵ·A with the weight ŵ = clip(r) held constant — the paper's −sg(ŵ)·A·log π
    ratios = torch.tensor([0.5, 0.9, 1.0, 1.1, 1.3, 2.0], dtype=torch.float64)
    r = torch.cat([ratios, ratios])[None, :]
    a = torch.cat([torch.ones(6), -torch.ones(6)]).double()[None, :]
    logps = r.log().clone().requires_grad_(True)
    out = policy.cispo(logps, torch.zeros_like(r), a, torch.ones_like(r), eps_low=0.2, eps_high=0.28)
    out.losses.sum().backward()
    weight = r.clamp(0.8, 1.28)
    torch.testing.assert_close(logps.grad, -weight * a)
    assert (logps.grad != 0).all() and (out.clipped_low | out.clipped_high).sum() == 6  # 0.5, 1.3, 2.0 twice
    paper = logps.detach().clone().requires_grad_(True)
    (-(weight * a * paper).sum()).backward()
    torch.testing.assert_close(logps.grad, paper.grad)
    torch.testing.assert_close(out.losses, -weight * a)


def test_sapo_worked_example():
    loss, grad, out = one_token(1.0, +1, loss="sapo")
    assert loss == pytest.approx(-2.0) and grad == pytest.approx(-1.0) and flags(out) == (False, False, False)
    loss, grad, _ = one_token(1.5, +1, loss="sapo")
    p = 1 / (1 + math.exp(-0.5))
    assert p == pytest.approx(0.62246, abs=1e-5)
    assert loss == pytest.approx(-2.48984, abs=1e-5) and grad == pytest.approx(-1.41002, abs=1e-5)
    assert grad == pytest.approx(-4 * p * (1 - p) * 1.5)
    loss, grad, out = one_token(0.5, -1, loss="sapo")  # A < 0: τ_neg = 1.05
    p = 1 / (1 + math.exp(0.525))
    assert p == pytest.approx(0.37168, abs=1e-5)
    assert loss == pytest.approx(1.41594, abs=1e-5) and grad == pytest.approx(0.46707, abs=1e-5)
    assert flags(out) == (False, False, False)
    with pytest.raises(ValueError, match="temperatures > 0"):
        one_token(1.0, 1, loss="sapo", tau_neg=0.0)


def test_sapo_gate_is_smooth_where_the_hard_clip_jumps():
    # d loss / d log π over a fine grid of ratios: −w·r·A with w = 4p(1 − p), p = σ(τ(r − 1)); w is 1 at r = 1 and
    # falls on both sides, never reaching 0; ppo_clip's gradient instead drops from −1.2 to 0 at r = 1 + ε
    r = torch.linspace(0.5, 2.0, 151, dtype=torch.float64)[None, :]
    grads = {}
    for name, kw in (("sapo", {"tau_pos": 2.0}), ("ppo_clip", {"eps_low": 0.2})):
        logps = r.log().clone().requires_grad_(True)
        policy.get(name)(logps, torch.zeros_like(r), torch.ones_like(r), torch.ones_like(r), **kw).losses.sum() \
            .backward()
        grads[name] = logps.grad[0]
    p = torch.sigmoid(2.0 * (r[0] - 1))
    w = 4 * p * (1 - p)
    torch.testing.assert_close(grads["sapo"], -w * r[0])
    assert w[50].item() == pytest.approx(1.0) and (w[:50].diff() > 0).all() and (w[50:].diff() < 0).all()
    assert (grads["sapo"] < 0).all() and grads["sapo"].diff().abs().max() < 0.03
    assert grads["ppo_clip"].diff().abs().max() > 1.1


def test_gmpo_worked_example():
    old = torch.tensor([[-1.0, -2.0, -1.5]], dtype=torch.float64)
    mask = torch.ones(1, 3)
    for advantage, ratio, grad, flags_high in ((+1, math.exp(0.4 / 3), [-1, -1, 0], [False, False, True]),
                                               (-1, math.exp(0.2), [1, 1, 1], [False] * 3)):
        logps = (old + torch.tensor([[0.1, -0.1, 0.6]], dtype=torch.float64)).requires_grad_(True)
        a = torch.full((1, 3), float(advantage), dtype=torch.float64)
        out = policy.gmpo(logps, old, a, mask)  # the defaults: ε = 0.4 in log space
        assert out.losses.tolist()[0] == pytest.approx([-advantage * ratio] * 3)
        assert out.ratio.tolist()[0] == pytest.approx([ratio] * 3)
        aggregate(out.losses, mask, "seq_mean_token_mean").backward()
        assert logps.grad.tolist()[0] == pytest.approx([g * ratio / 3 for g in grad])
        assert out.clipped_high.tolist()[0] == flags_high and not out.clipped_low.any()
    assert math.exp(0.4 / 3) == pytest.approx(1.14263, abs=1e-5) and math.exp(0.4 / 3) / 3 == \
        pytest.approx(0.38088, abs=1e-5) and math.exp(0.2) / 3 == pytest.approx(0.40713, abs=1e-5)
    # the outlier: ratios [1, 1, e³] — arithmetic mean 7.36, geometric mean e (no clip: ε = 10)
    logps = torch.tensor([[0.0, 0.0, 3.0]], dtype=torch.float64)
    out = policy.gmpo(logps, torch.zeros_like(logps), torch.ones_like(logps), mask, eps_low=10, eps_high=10)
    assert out.ratio[0, 0].item() == pytest.approx(math.e) and logps.exp().mean().item() == pytest.approx(7.36185)


def test_gmpo_token_form_equals_the_geometric_mean_objective():
    # GMPO as the paper writes it: J = mean_i A_i · exp(mean_t ℓ_t) with ℓ the pessimistic clipped log-ratio,
    # differentiated directly; both signs of A and clipped tokens on both sides occur
    torch.manual_seed(2)
    B, T, eps_low, eps_high = 6, 5, 0.1, 0.15
    mask = (torch.arange(T)[None, :] < torch.tensor([5, 3, 1, 4, 2, 5])[:, None]).double()
    old = -torch.rand(B, T, dtype=torch.float64) * 3
    logps = (old + 0.2 * torch.randn(B, T, dtype=torch.float64)).requires_grad_(True)
    a_seq = torch.randn(B, dtype=torch.float64)
    out = policy.gmpo(logps, old, a_seq[:, None] * mask, mask, eps_low=eps_low, eps_high=eps_high)
    aggregate(out.losses, mask, "seq_mean_token_mean").backward()
    token_form = logps.grad.clone()
    logps.grad = None
    log_ratio = logps - old
    sign = torch.sign(a_seq)[:, None]
    pessimistic = sign * torch.minimum(sign * log_ratio, sign * log_ratio.clamp(-eps_low, eps_high))
    geometric = ((pessimistic * mask).sum(-1) / mask.sum(-1)).exp()
    (-(a_seq * geometric).mean()).backward()
    torch.testing.assert_close(token_form, logps.grad)
    clipped = out.clipped_low | out.clipped_high
    assert out.clipped_low.any() and out.clipped_high.any() and (token_form[clipped] == 0).all()


def test_value_loss_worked_example():
    v = torch.tensor([[1.0]], dtype=torch.float64, requires_grad=True)
    old, returns, mask = torch.tensor([[0.5]]), torch.tensor([[1.0]]), torch.ones(1, 1)
    losses, clipped = policy.value_loss(v, old, returns, mask, clip=0.2)
    losses.sum().backward()
    assert losses.item() == pytest.approx(0.045) and v.grad.item() == 0.0 and clipped.item()
    unclipped, clipped = policy.value_loss(v, old, returns, mask)
    assert unclipped.item() == 0.0 and not clipped.any()
    # inside the clip range both terms agree: ½(0.6 − 1)² = 0.08, gradient V − R = −0.4
    v2 = torch.tensor([[0.6]], dtype=torch.float64, requires_grad=True)
    losses, clipped = policy.value_loss(v2, old, returns, mask, clip=0.2)
    losses.sum().backward()
    assert losses.item() == pytest.approx(0.08) and v2.grad.item() == pytest.approx(-0.4) and not clipped.any()
    padded, clipped = policy.value_loss(v, old, returns, torch.zeros(1, 1), clip=0.2)
    assert padded.item() == 0.0 and not clipped.any()


def test_registry():
    assert set(policy.POLICY_LOSSES) == {"ppo_clip", "gspo", "vanilla", "cispo", "sapo", "gmpo"}
    assert policy.get("ppo_clip") is policy.ppo_clip and policy.get("vanilla") is policy.vanilla_pg
    with pytest.raises(ValueError, match="valid: cispo, gmpo, gspo, ppo_clip, sapo, vanilla"):
        policy.get("trpo")


# ---------------------------------------------------------------------------------------------------------------------
# Invariance: micro-batches × gradient accumulation with global normalizers == the whole batch
# ---------------------------------------------------------------------------------------------------------------------

LOSS_SETTINGS = [("ppo_clip", {"eps_low": 0.2, "eps_high": 0.28, "dual_clip": 3.0}),
                 ("gspo", {"eps_low": 0.05, "eps_high": 0.08}), ("vanilla", {}),
                 ("cispo", {"eps_low": 0.2, "eps_high": 0.28}), ("sapo", {"tau_pos": 1.0, "tau_neg": 2.0}),
                 ("gmpo", {"eps_low": 0.2, "eps_high": 0.3})]


def tiny_policy_batch(seed=0, B=8, T=6, D=4, V=7):
    """A linear "policy" logits = x·W over V tokens, sampled actions, right-padded masks, stale old log-probs."""
    torch.manual_seed(seed)
    features = torch.randn(B, T, D, dtype=torch.float64)
    actions = torch.randint(0, V, (B, T))
    lengths = torch.tensor([6, 2, 5, 1, 3, 6, 4, 2])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    weights = (0.5 * torch.randn(D, V, dtype=torch.float64)).requires_grad_(True)
    old_logps = (logps_of(weights, features, actions) + 0.3 * torch.randn(B, T, dtype=torch.float64)).detach()
    advantages = torch.randn(B, 1, dtype=torch.float64) * mask
    return features, actions, mask, weights, old_logps, advantages


def logps_of(weights, features, actions):
    return F.log_softmax(features @ weights, -1).gather(-1, actions[..., None]).squeeze(-1)


def gradient(name, hyperparameters, mode, splits, global_normalizers=True):
    features, actions, mask, weights, old_logps, advantages = tiny_policy_batch()
    B, T = mask.shape
    norms = dict(num_tokens=mask.sum().item(), num_seqs=B, max_len=T) if global_normalizers else {}
    for rows in splits:
        width = int(mask[rows].sum(-1).max())  # each micro-batch is padded only to its own longest response
        m = mask[rows, :width]
        out = policy.get(name)(logps_of(weights, features[rows, :width], actions[rows, :width]),
                               old_logps[rows, :width], advantages[rows, :width], m, **hyperparameters)
        loss = aggregate(out.losses, m, mode, **norms)
        (loss if global_normalizers else loss / len(splits)).backward()  # gradient accumulation
    return weights.grad


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name, hyperparameters", LOSS_SETTINGS)
def test_micro_batches_with_global_normalizers_give_the_whole_batch_gradient(name, hyperparameters, mode):
    whole = gradient(name, hyperparameters, mode, [slice(0, 8)])
    split = gradient(name, hyperparameters, mode, [slice(0, 3), slice(3, 4), slice(4, 8)])
    torch.testing.assert_close(split, whole, rtol=1e-12, atol=1e-12)
    assert whole.abs().max() > 1e-3
    # the test can fail: averaging per-micro-batch means (each with its own normalizer) is a different gradient
    naive = gradient(name, hyperparameters, mode, [slice(0, 3), slice(3, 4), slice(4, 8)], global_normalizers=False)
    assert not torch.allclose(naive, whole)


def test_invariance_batch_exercises_the_clip():
    features, actions, mask, weights, old_logps, advantages = tiny_policy_batch()
    out = policy.ppo_clip(logps_of(weights, features, actions), old_logps, advantages, mask, eps_low=0.2,
                          eps_high=0.28, dual_clip=3.0)
    clipped = out.clipped_low | out.clipped_high
    assert 0 < clipped.sum() < mask.sum()
