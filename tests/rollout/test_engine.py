"""The generation engine against Hugging Face `generate` and a teacher-forced forward pass."""

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from posttrain.models.tiny import build_model, build_tokenizer
from posttrain.rollout import SamplingParams, generate
from posttrain.rollout.samplers import process_logits

EOS, PAD = 2, 0


@pytest.fixture(scope="module")
def llama():
    return build_model(build_tokenizer(), seed=1).eval()


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=384, n_positions=256,
                        bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    return GPT2LMHeadModel(config).eval()


def ragged_prompts(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(7, 100, (int(torch.randint(2, 12, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def hf_greedy(model, prompt, max_new_tokens):
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=EOS, pad_token_id=PAD)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_equals_hf_generate_token_for_token(arch, cache, request):
    model = request.getfixturevalue(arch)
    prompts = ragged_prompts()
    params = SamplingParams(temperature=0, max_new_tokens=20)
    ours = generate(model, prompts, params, eos_token_ids=[EOS], pad_token_id=PAD, batch_size=4, cache=cache)
    for prompt, g in zip(prompts, ours):
        expected = hf_greedy(model, prompt, 20)
        if EOS in expected:
            expected = expected[:expected.index(EOS) + 1]
        assert g.completion_ids == expected
        assert g.finish_reason == ("stop" if expected[-1] == EOS else "length")


@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_returned_logprobs_equal_a_teacher_forced_forward(arch, cache, request):
    model = request.getfixturevalue(arch)
    params = SamplingParams(temperature=0.8, top_k=50, top_p=0.9, max_new_tokens=16, n=2)
    prompts = ragged_prompts(4, seed=1)
    for g in generate(model, prompts, params, eos_token_ids=[EOS], pad_token_id=PAD, seed=3, cache=cache):
        prompt = prompts[g.prompt_index]
        full = torch.tensor([prompt + g.completion_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(full).logits[0].float(), -1)
        positions = torch.arange(len(prompt) - 1, full.shape[1] - 1)
        expected = logp[positions, torch.tensor(g.completion_ids)]
        assert torch.allclose(torch.tensor(g.logprobs), expected, atol=1e-5)
        # and under the sampling distribution: the same logits through the sampler chain
        with torch.no_grad():
            logits = model(full).logits[0, positions].float()
        q = torch.log_softmax(process_logits(logits, params), -1)[torch.arange(len(positions)),
                                                                 torch.tensor(g.completion_ids)]
        assert torch.allclose(torch.tensor(g.sampling_logprobs), q, atol=1e-5)


def test_sampling_is_reproducible_and_independent_of_the_batch(llama):
    prompts = ragged_prompts(6, seed=2)
    params = SamplingParams(temperature=1.0, max_new_tokens=12, n=3)
    kw = dict(eos_token_ids=[EOS], pad_token_id=PAD, seed=7, step=5)
    full = generate(llama, prompts, params, batch_size=18, **kw)
    again = generate(llama, prompts, params, batch_size=4, **kw)
    alone = generate(llama, prompts[3:4], params, batch_size=1, example_ids=[3], **kw)
    assert [g.completion_ids for g in full] == [g.completion_ids for g in again]
    assert [g.completion_ids for g in alone] == [g.completion_ids for g in full[9:12]]
    assert len({tuple(g.completion_ids) for g in full}) > 6, "samples should differ"
    static = generate(llama, prompts, params, batch_size=5, cache="static", **kw)
    assert [g.completion_ids for g in static] == [g.completion_ids for g in full]
    other_step = generate(llama, prompts, params, batch_size=18, **{**kw, "step": 6})
    assert [g.completion_ids for g in other_step] != [g.completion_ids for g in full]


def test_temperature_zero_and_top_k_one_equal_greedy(llama):
    prompts = ragged_prompts(5, seed=3)
    kw = dict(eos_token_ids=[EOS], pad_token_id=PAD, seed=1)
    greedy = generate(llama, prompts, SamplingParams(temperature=0, max_new_tokens=10), **kw)
    top1 = generate(llama, prompts, SamplingParams(temperature=1.3, top_k=1, max_new_tokens=10), **kw)
    assert [g.completion_ids for g in greedy] == [g.completion_ids for g in top1]


def test_stop_sequence_and_length(llama):
    prompts = ragged_prompts(3, seed=4)
    params = SamplingParams(temperature=1.0, max_new_tokens=6)
    out = generate(llama, prompts, params, eos_token_ids=[], pad_token_id=PAD,
                   stop_sequence=lambda ids: len(ids) == 3 and ids[0] % 2 == 0)
    for g in out:
        if g.finish_reason == "stop_sequence":
            assert len(g.completion_ids) == 3
        else:
            assert g.finish_reason == "length" and len(g.completion_ids) == 6


def test_static_cache_compaction_gives_the_dynamic_cache_results(llama):
    # Rows whose first token is even stop after 2 tokens: the static decoder carries them, then compacts once at
    # most half the batch is live; every output must equal the dynamic decoder's (which retires rows at once).
    prompts = ragged_prompts(8, seed=5)
    params = SamplingParams(temperature=1.0, max_new_tokens=9, n=2, repetition_penalty=1.3)
    kw = dict(eos_token_ids=[EOS], pad_token_id=PAD, seed=11,
              stop_sequence=lambda ids: len(ids) == 2 and ids[0] % 2 == 0)
    dynamic = generate(llama, prompts, params, cache="dynamic", **kw)
    static = generate(llama, prompts, params, cache="static", **kw)
    assert {g.finish_reason for g in dynamic} == {"stop_sequence", "length"}
    for d, s in zip(dynamic, static):
        assert (d.completion_ids, d.finish_reason) == (s.completion_ids, s.finish_reason)
        assert torch.allclose(torch.tensor(d.logprobs), torch.tensor(s.logprobs), atol=1e-5)
        assert torch.allclose(torch.tensor(d.sampling_logprobs), torch.tensor(s.sampling_logprobs), atol=1e-5)


def test_compiled_decode_step_matches_eager(llama):
    prompts = ragged_prompts(6, seed=6)
    params = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=8, n=2)
    kw = dict(eos_token_ids=[EOS], pad_token_id=PAD, seed=2)
    eager = generate(llama, prompts, params, **kw)
    compiled = generate(llama, prompts, params, compile=True, **kw)
    assert [g.completion_ids for g in compiled] == [g.completion_ids for g in eager]
    for e, c in zip(eager, compiled):
        assert torch.allclose(torch.tensor(e.logprobs), torch.tensor(c.logprobs), atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_logprob_mismatch_metric_is_zero_for_the_engine_and_catches_a_drift(arch, request):
    from posttrain.rollout.check import logprob_mismatch

    model = request.getfixturevalue(arch)
    prompts = ragged_prompts(5, seed=7)
    out = generate(model, prompts, SamplingParams(temperature=1.0, max_new_tokens=10, n=2),
                   eos_token_ids=[EOS], pad_token_id=PAD, seed=4)
    metrics = logprob_mismatch(model, prompts, out, pad_token_id=PAD, batch_size=3)
    assert metrics["rollout/logprob_diff_max"] < 1e-5 and metrics["rollout/kl_rollout_train"] < 1e-9
    # The docstring's example: a rollout log-prob 0.1 above the trainer's shows up as such.
    out[3].logprobs[2] += 0.1
    metrics = logprob_mismatch(model, prompts, out, pad_token_id=PAD)
    assert metrics["rollout/logprob_diff_max"] == pytest.approx(0.1, abs=1e-5)
    assert metrics["rollout/ratio_max"] == pytest.approx(1.0, abs=1e-5)  # e^-0.1 < 1: the max is another token
    n_tokens = sum(len(g.completion_ids) for g in out)
    assert metrics["rollout/kl_rollout_train"] == pytest.approx((math.exp(-0.1) - 1 + 0.1) / n_tokens, rel=1e-3)
