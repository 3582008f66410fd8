"""rollout/samplers.py: worked examples from the docstrings, parity with HF's logits processors, inverse-CDF
frequencies, per-row randomness and SamplingParams validation."""

import math

import pytest
import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from posttrain.errors import ConfigError
from posttrain.rollout.samplers import (
    SamplingParams,
    derive_seed,
    logprobs_of,
    min_p,
    process_logits,
    repetition_penalty,
    position_uniforms,
    sample,
    temperature,
    top_k,
    top_p,
)

INF = float("inf")
PROBS = torch.tensor([[0.5, 0.3, 0.15, 0.05]])  # the distribution of the docstring examples


def finite(logits):
    return torch.isfinite(logits[0]).tolist()


# ---- worked examples (the numbers in the docstrings) --------------------------------------------------------

def test_repetition_penalty_example():
    out = repetition_penalty(torch.tensor([[2.0, -1.0, 0.5, 3.0]]), torch.tensor([[0, 1, 1, -1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]


def test_temperature_example():
    assert temperature(torch.tensor([[2.0, -1.0, 0.5]]), 0.5).tolist() == [[4.0, -2.0, 1.0]]


def test_top_k_example_keeps_ties():
    row = torch.tensor([[1.0, 3.0, 3.0, 2.0, 0.0]])
    assert top_k(row, 3).tolist() == [[-INF, 3.0, 3.0, 2.0, -INF]]
    assert top_k(row, 1).tolist() == [[-INF, 3.0, 3.0, -INF, -INF]]
    assert torch.equal(top_k(row, 0), row)


def test_top_p_example():
    logits = PROBS.log()
    assert finite(top_p(logits, 0.75)) == [True, True, False, False]
    assert finite(top_p(logits, 0.4)) == [True, False, False, False]
    assert finite(top_p(logits, 1.0)) == [True] * 4
    assert finite(top_p(logits, 0.0)) == [True, False, False, False]  # never empty
    # At the boundary: a tail holding exactly 1 − p is dropped ({0.5, 0.25} already reaches p = 0.75).
    exact = torch.tensor([[0.5, 0.25, 0.25]]).log()
    assert sum(finite(top_p(exact, 0.75))) == 2


def test_min_p_example():
    logits = PROBS.log()
    assert finite(min_p(logits, 0.2)) == [True, True, True, False]
    assert finite(min_p(logits, 0.5)) == [True, True, False, False]
    assert finite(min_p(logits, 0.0)) == [True] * 4


def test_process_logits_example_and_order():
    out = process_logits(PROBS.log(), SamplingParams(top_k=3, top_p=0.75))
    assert finite(out) == [True, True, False, False]
    assert torch.allclose(out[0, :2], PROBS.log()[0, :2])  # kept entries are untouched at temperature 1


def test_sample_example_and_logprobs_example():
    assert sample(torch.tensor([[1.0, 0.0]] * 2), torch.tensor([0.5, 0.9])).tolist() == [0, 1]
    assert sample(torch.tensor([[1.0, 0.0]])).tolist() == [0]  # no uniforms → argmax
    lp = logprobs_of(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1]))
    assert lp.item() == pytest.approx(math.log(0.75), abs=1e-6)


def test_derive_seed_example_is_stable():
    assert derive_seed(0, 1, 2, 3) == 7081064314509305694
    assert derive_seed(0, 1, 2, 3) == derive_seed(0, 1, 2, 3)
    seeds = {derive_seed(0, step, ex, k) for step in range(3) for ex in range(3) for k in range(3)}
    assert len(seeds) == 27  # different (step, example, k) → different streams
    assert derive_seed(0, 12, 3) != derive_seed(0, 1, 23)  # parts are separated, not concatenated
    assert 0 <= derive_seed(2**70, -5, "x") < 2**63


# ---- parity with Hugging Face ------------------------------------------------------------------------------

def random_logits(seed, batch=6, vocab=50):
    """Half the rows continuous, half small integers (many exact ties, including at the top)."""
    g = torch.Generator().manual_seed(seed)
    smooth = torch.randn(batch // 2, vocab, generator=g) * 3
    tied = torch.randint(-3, 4, (batch - batch // 2, vocab), generator=g).float()
    return torch.cat([smooth, tied])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warpers_equal_hf(seed):
    logits = random_logits(seed)
    for k in (1, 3, 10, 50):
        assert torch.equal(top_k(logits, k), TopKLogitsWarper(k)(None, logits.clone()))
    for p in (0.0, 0.1, 0.5, 0.9, 0.99):
        assert torch.equal(top_p(logits, p), TopPLogitsWarper(p)(None, logits.clone()))
    for p in (0.05, 0.3, 0.9, 1.0):
        assert torch.equal(min_p(logits, p), MinPLogitsWarper(p)(None, logits.clone()))
    for t in (0.3, 1.7):
        assert torch.equal(temperature(logits, t), TemperatureLogitsWarper(t)(None, logits.clone()))


@pytest.mark.parametrize("penalty", [0.7, 1.3, 2.0])
def test_repetition_penalty_equals_hf(penalty):
    logits = random_logits(3)
    g = torch.Generator().manual_seed(4)
    history = torch.randint(0, logits.shape[1], (logits.shape[0], 12), generator=g)
    expected = RepetitionPenaltyLogitsProcessor(penalty)(history, logits.clone())
    padded = torch.cat([history, torch.full((logits.shape[0], 5), -1)], dim=1)  # our -1 padding is ignored
    assert torch.equal(repetition_penalty(logits, padded, penalty), expected)


def test_process_logits_equals_hf_chain():
    logits = random_logits(5)
    history = torch.randint(0, logits.shape[1], (logits.shape[0], 8), generator=torch.Generator().manual_seed(6))
    params = SamplingParams(temperature=0.8, top_k=20, top_p=0.9, min_p=0.05, repetition_penalty=1.2)
    hf = LogitsProcessorList([
        RepetitionPenaltyLogitsProcessor(1.2), TemperatureLogitsWarper(0.8), TopKLogitsWarper(20),
        TopPLogitsWarper(0.9), MinPLogitsWarper(0.05),
    ])
    assert torch.equal(process_logits(logits, params, history), hf(history, logits.clone()))


# ---- greedy limits -----------------------------------------------------------------------------------------

def test_top_k_1_and_low_temperature_are_greedy():
    logits = torch.randn(8, 30, generator=torch.Generator().manual_seed(7)) * 3
    greedy = logits.argmax(-1)
    uniforms = position_uniforms(torch.arange(8), 0)
    assert torch.equal(sample(top_k(logits, 1), uniforms), greedy)  # only the max is left to sample
    assert torch.equal(sample(temperature(logits, 1e-4), uniforms), greedy)  # noise is negligible at t → 0
    for params in (SamplingParams(top_k=1), SamplingParams(temperature=0.0)):
        assert params.greedy
        assert torch.equal(process_logits(logits, params), logits)  # greedy skips the warpers, as HF does
        assert torch.equal(sample(process_logits(logits, params)), greedy)
    assert not SamplingParams(temperature=0.5, top_k=2).greedy


def test_greedy_still_applies_repetition_penalty():
    # HF applies processors (the penalty) in greedy decoding and only skips the warpers.
    logits = torch.tensor([[3.0, 2.0, 1.0]])
    out = process_logits(logits, SamplingParams(temperature=0.0, repetition_penalty=2.0), torch.tensor([[0]]))
    assert out.tolist() == [[1.5, 2.0, 1.0]] and sample(out).item() == 1


# ---- sampling ---------------------------------------------------------------------------------------------

def test_inverse_cdf_worked_example():
    processed = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # probabilities [0.7311, 0.2689]
    assert sample(processed, torch.tensor([0.5, 0.9], dtype=torch.float64)).tolist() == [0, 1]
    # the boundary: the first running sum strictly above u · total, i.e. token 0 while u < p0 / (p0 + p1)
    p = torch.softmax(processed[0], -1).double()
    p0 = (p[0] / p.sum()).item()
    assert sample(processed[:1], torch.tensor([p0 - 1e-9], dtype=torch.float64)).item() == 0
    assert sample(processed[:1], torch.tensor([p0 + 1e-9], dtype=torch.float64)).item() == 1


def test_inverse_cdf_samples_the_softmax():
    probs = torch.tensor([0.6, 0.3, 0.1])
    n = 20_000
    uniforms = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ids = sample(probs.log().expand(n, 3), uniforms)
    freq = torch.bincount(ids, minlength=3).float() / n
    assert torch.allclose(freq, probs, atol=0.01), freq
    # sampling temperature-scaled logits samples softmax(logits / t): the same law after the warper.
    logits = torch.tensor([1.0, 0.0, -1.0])
    ids = sample(temperature(logits, 2.0).expand(n, 3), uniforms)
    freq = torch.bincount(ids, minlength=3).float() / n
    assert torch.allclose(freq, torch.softmax(logits / 2.0, -1), atol=0.01), freq


def test_forbidden_tokens_are_never_drawn_even_at_the_ends_of_the_uniform_range():
    n = 2000
    logits = torch.full((n, 5), -INF)
    logits[:, 3] = -50.0  # very unlikely under the raw model, but the only token left after filtering
    uniforms = torch.rand(n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    uniforms[:10], uniforms[10:20] = 0.0, 1 - 2.0 ** -52  # the smallest and largest uniform
    assert (sample(logits, uniforms) == 3).all()
    # a 49k vocabulary whose last entries are forbidden: the largest uniform still lands on an allowed token
    wide = torch.randn(4, 49152, generator=torch.Generator().manual_seed(2))
    wide[:, -100:] = -INF
    top = torch.full((4,), 1 - 2.0 ** -52, dtype=torch.float64)
    assert (sample(wide, top) < 49152 - 100).all() and (sample(wide, top * 0) >= 0).all()


def splitmix64_reference(seed: int, count: int) -> list[int]:
    """splitmix64 as published (Steele et al. 2014), in plain Python integers mod 2^64."""
    mask, out, state = (1 << 64) - 1, [], seed
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


def test_position_uniforms_are_splitmix64_streams():
    # Row b at position t: the top 52 bits of the (t+1)-th splitmix64 output of seeds[b], × 2^-52.
    seeds = [7, 2**62 + 12345, 0]
    for t in (0, 3, 100):
        got = position_uniforms(torch.tensor(seeds), t)
        expected = [(splitmix64_reference(seed, t + 1)[-1] >> 12) * 2.0 ** -52 for seed in seeds]
        assert got.tolist() == expected


def test_position_uniforms_do_not_depend_on_batch():
    both = position_uniforms(torch.tensor([7, 8]), 5)
    assert both.shape == (2,) and both.dtype == torch.float64
    assert torch.equal(both[1], position_uniforms(torch.tensor([8]), 5)[0])
    assert torch.equal(both[0], position_uniforms(torch.tensor([9, 7]), 5)[1])
    assert not torch.equal(both[0], both[1])
    assert not torch.equal(both[0], position_uniforms(torch.tensor([7]), 6)[0])  # positions differ
    assert ((both >= 0) & (both < 1)).all()


def test_position_uniforms_are_uniform():
    u = torch.cat([position_uniforms(torch.arange(2000), t) for t in range(100)])  # seeds × positions
    assert abs(u.mean().item() - 0.5) < 0.005 and abs(u.var().item() - 1 / 12) < 0.002
    hist = torch.histc(u.float(), bins=10, min=0, max=1) / u.numel()
    assert torch.allclose(hist, torch.full((10,), 0.1), atol=0.005)
    # consecutive positions of one seed are not correlated
    x = position_uniforms(torch.arange(50_000), 0) - 0.5
    y = position_uniforms(torch.arange(50_000), 1) - 0.5
    assert abs((x * y).mean().item()) / (1 / 12) < 0.02


def test_logprobs_of_processed_and_raw():
    raw = PROBS.log()
    processed = top_p(raw, 0.75)  # renormalises 0.5, 0.3 → 0.625, 0.375
    ids = torch.tensor([1])
    assert logprobs_of(raw, ids).item() == pytest.approx(math.log(0.3), abs=1e-6)
    assert logprobs_of(processed, ids).item() == pytest.approx(math.log(0.375), abs=1e-6)


# ---- validation ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("temperature", -0.1), ("temperature", float("nan")), ("top_k", -1), ("top_k", 2.5), ("top_p", 1.5),
    ("top_p", -0.1), ("min_p", 1.1), ("repetition_penalty", 0.0), ("max_new_tokens", 0), ("n", 0),
    ("stop_token_ids", [-1]), ("stop_strings", [""]),
])
def test_validate_names_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        SamplingParams(**{field: value}).validate()


def test_validate_accepts_defaults_and_edges():
    params = SamplingParams()
    assert params.validate() is params
    SamplingParams(temperature=0.0, top_k=1, top_p=0.0, min_p=1.0, stop_token_ids=[2], stop_strings=["\n"]).validate()
    assert SamplingParams().stop_token_ids is not SamplingParams().stop_token_ids  # no shared mutable default


def test_repetition_penalty_without_history_is_an_error():
    with pytest.raises(ValueError, match="previous_ids"):
        process_logits(torch.zeros(1, 3), SamplingParams(repetition_penalty=1.2))
