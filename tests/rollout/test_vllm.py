"""The vLLM engine against the built-in one. Runs only where vLLM and a CUDA GPU exist."""

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None or not torch.cuda.is_available(),
    reason="needs vLLM (pip install 'posttrain[vllm]') and a CUDA GPU; the built-in engine is tested everywhere")


@pytest.fixture(scope="module")
def setup():
    from transformers import AutoModelForCausalLM
    from posttrain.models.loading import load_tokenizer
    from posttrain.models.tiny import tiny_path
    from posttrain.rollout import HFEngine, VLLMEngine, format_prompt

    tokenizer = load_tokenizer(tiny_path())
    model = AutoModelForCausalLM.from_pretrained(tiny_path(), dtype=torch.float32).cuda().eval()
    prompts = [format_prompt(tokenizer, f"{a}+{b}=", use_chat_template=True) for a, b in [(3, 4), (12, 30), (7, 95)]]
    eos = [tokenizer.eos_token_id]
    return (model, prompts, HFEngine(model, eos, tokenizer.pad_token_id),
            VLLMEngine(tiny_path(), eos, gpu_memory_utilization=0.2, dtype="float32"))


def test_greedy_outputs_agree_with_the_built_in_engine(setup):
    from posttrain.rollout import SamplingParams
    _, prompts, hf, vllm = setup
    params = SamplingParams(temperature=0, max_new_tokens=16)
    assert [g.completion_ids for g in vllm.generate(prompts, params)] == \
        [g.completion_ids for g in hf.generate(prompts, params)]


def test_sampled_logprobs_match_the_trainer_and_samples_are_per_sample_seeded(setup):
    from posttrain.rollout import SamplingParams
    from posttrain.rollout.check import logprob_mismatch
    model, prompts, _, vllm = setup
    params = SamplingParams(temperature=1.0, max_new_tokens=16, n=3)
    out = vllm.generate(prompts, params, seed=5, step=2)
    assert logprob_mismatch(model, prompts, out)["rollout/logprob_diff_max"] < 1e-3
    assert all(g.sampling_logprobs == g.logprobs for g in out)  # T = 1, no truncation: the same distribution
    alone = vllm.generate(prompts[1:2], params, seed=5, step=2, example_ids=[1])
    assert [g.completion_ids for g in alone] == [g.completion_ids for g in out[3:6]]
