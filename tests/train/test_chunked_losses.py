"""The loops' per-token losses with the chunked output layer (train.logits_chunk > 0) equal those from the full
logits (train.logits_chunk=0): SFT's cross-entropy, the RL update's log-probs and entropy at the sampling
temperature, distillation's divergence from the teacher and cross-entropy — values and gradients."""

import pytest
import torch

from posttrain.algos.sft import token_cross_entropy
from posttrain.config import DistillConfig, LoraConfig, ModelConfig, RLConfig
from posttrain.data import collate
from posttrain.models import tiny
from posttrain.models.loading import load_model
from posttrain.models.logits import forward_logits
from posttrain.train import distill, rl, sft


def policy():
    return load_model(ModelConfig(name_or_path="tiny"), LoraConfig())


def batch():
    g = torch.Generator().manual_seed(3)
    examples = []
    for n in (6, 11, 4, 9):
        ids = torch.randint(5, 300, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (n // 3) + ids[n // 3:]})
    return collate(examples, pad_id=0, packing=False)


def run(model, compute) -> tuple[list[torch.Tensor], dict]:
    """Values of compute() and the gradients of a weighted sum of them."""
    model.zero_grad(set_to_none=True)
    values = compute()
    loss = sum(torch.linspace(0.5, 1.5, v.numel()).view(v.shape).mul(v).sum() * (k + 1) for k, v in enumerate(values))
    loss.backward()
    return [v.detach() for v in values], {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(got, want):
    (values, grads), (want_values, want_grads) = got, want
    for v, w in zip(values, want_values, strict=True):
        torch.testing.assert_close(v, w, rtol=1e-5, atol=1e-5)
    assert grads.keys() == want_grads.keys()
    for name, grad in grads.items():
        scale = want_grads[name].abs().max().clamp(min=1e-8)
        torch.testing.assert_close(grad / scale, want_grads[name] / scale, rtol=0, atol=1e-5, msg=name)


def test_sft_token_losses_equal_the_cross_entropy_of_the_full_logits():
    model, b = policy(), batch()

    def full():
        logits, targets = forward_logits(model, b)
        return [token_cross_entropy(logits, targets)[0]]

    assert_same(run(model, lambda: [sft.token_losses(model, b, "fp32", 5)[0]]), run(model, full))


def test_rl_forward_tokens_chunked_equal_full():
    model = policy()
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13]]
    completions = [[20, 21, 22, 23], [30], [40, 41, 42]]
    results = []
    for chunk in (0, 2):
        cfg = RLConfig()
        cfg.train.logits_chunk, cfg.sampling.temperature, cfg.algo.entropy_coef = chunk, 0.8, 0.01
        results.append(run(model, lambda: list(rl.forward_tokens(model, prompts, completions, 4, cfg, entropy=True))))
    assert_same(results[1], results[0])
    assert results[0][0][0][1, 1:].abs().sum() == 0  # past the one-token completion: 0


@pytest.mark.parametrize("loss", ["forward_kl", "jsd"])
def test_distill_token_losses_chunked_equal_full(loss):
    model = policy()
    teacher = tiny.build_model(tiny.build_tokenizer(), seed=7).eval().requires_grad_(False)
    vocab = len(tiny.build_tokenizer())  # below the padded 384 rows of the output layers: sliced
    b = batch()
    results = []
    for chunk in (0, 3):
        cfg = DistillConfig()
        cfg.train.logits_chunk, cfg.distill.loss, cfg.distill.temperature = chunk, loss, 2.0
        divergence = distill.divergence_of(cfg)
        results.append(run(model, lambda: list(distill.token_losses(model, teacher, b, cfg, divergence, vocab)[:2])))
    assert_same(results[1], results[0])
    assert results[0][0][0].abs().sum() > 0  # two different models: a divergence to match
