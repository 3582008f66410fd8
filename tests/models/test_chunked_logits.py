"""The chunked output layer (models/logits.target_logprobs with chunk > 0) against the full-logits path it replaces:
the same log-probs, entropies and parameter gradients on tiny models of several architectures (built from configs,
random weights), packed and padded, through a PEFT LoRA wrapper (on the output layer too); no [positions, vocabulary]
tensor kept for the backward; models whose logits are not their output layer's output are detected and take the
full path."""

import pytest
import torch
import transformers
from peft import LoraConfig as PeftLoraConfig, get_peft_model

from posttrain.algos.logprobs import IGNORE_INDEX, chunked_reduce, logprobs_and_entropy, token_entropy, token_logprobs
from posttrain.config import LoraConfig, ModelConfig
from posttrain.data import collate
from posttrain.models.loading import load_model
from posttrain.models.logits import chunkable_head, forward_logits, sequence_logps, target_logprobs

VOCAB = 101
SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2)


def _seeded(build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build().eval()


def tiny_llama():
    return load_model(ModelConfig(name_or_path="tiny"), LoraConfig()).eval()


def gpt2():
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2)
    return _seeded(lambda: transformers.GPT2LMHeadModel(config))


def qwen2():
    config = transformers.Qwen2Config(**SMALL, tie_word_embeddings=False)
    return _seeded(lambda: transformers.Qwen2ForCausalLM(config))


def qwen2_moe():
    config = transformers.Qwen2MoeConfig(**SMALL, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                                         shared_expert_intermediate_size=32)
    return _seeded(lambda: transformers.Qwen2MoeForCausalLM(config))


def mixtral():
    config = transformers.MixtralConfig(**SMALL, num_local_experts=4, num_experts_per_tok=2)
    return _seeded(lambda: transformers.MixtralForCausalLM(config))


def lora_llama():
    """The tiny Llama with LoRA adapters on attention AND the output layer (B initialised non-zero, so the adapter
    changes the logits and its own gradients are not trivially equal)."""
    model = get_peft_model(tiny_llama(), PeftLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"],
                                                       lora_dropout=0.0))
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model


MODELS = {"llama": tiny_llama, "gpt2": gpt2, "qwen2": qwen2, "qwen2_moe": qwen2_moe, "mixtral": mixtral,
          "lora": lora_llama}


def batch_for(packing: bool) -> dict:
    """Five examples of different lengths; the first half of each is prompt (no target)."""
    g = torch.Generator().manual_seed(0)
    examples = []
    for n in (5, 9, 3, 12, 7):
        ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (n // 2) + ids[n // 2:]})
    return collate(examples, pad_id=0, packing=packing)


def full_path(model, batch, temperature: float):
    """What the loops computed before the chunked path: the full logits at the kept positions, then
    token_logprobs and token_entropy (rl.py's forward_tokens)."""
    logits, targets = forward_logits(model, batch)
    logits = logits.float() / temperature
    found = targets != IGNORE_INDEX
    entropy = torch.zeros(targets.shape).index_put((found,), token_entropy(logits[found]))
    return token_logprobs(logits, targets), entropy, found


def loss_of(logps, entropy, found):
    """A scalar that weighs every position differently, so a gradient misplaced between positions shows."""
    weights = torch.linspace(0.5, 2.0, logps.numel()).view(logps.shape) * found
    return (weights * logps).sum() - 0.3 * (weights * entropy).sum()


def values_and_grads(model, compute):
    model.zero_grad(set_to_none=True)
    logps, entropy, found = compute()
    loss_of(logps, entropy, found).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), entropy.detach(), grads


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # LoRA on the tied output layer
@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("arch", list(MODELS))
def test_chunked_values_and_gradients_equal_the_full_logits(arch, packing):
    model = MODELS[arch]()
    assert chunkable_head(model) is not None
    batch = batch_for(packing)

    def chunked():
        out = target_logprobs(model, batch, chunk=4, temperature=0.7, entropy=True)
        return out.logps, out.entropy, out.targets != IGNORE_INDEX

    want_logps, want_entropy, want_grads = values_and_grads(model, lambda: full_path(model, batch, 0.7))
    logps, entropy, grads = values_and_grads(model, chunked)
    torch.testing.assert_close(logps, want_logps, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(entropy, want_entropy, rtol=1e-5, atol=1e-5)
    assert grads.keys() == want_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        scale = want_grads[name].abs().max().clamp(min=1e-8)
        torch.testing.assert_close(grad / scale, want_grads[name] / scale, rtol=0, atol=1e-5, msg=name)
    if arch == "lora":  # the adapter on the output layer is trained through the chunks
        assert any("lm_head" in name and "lora_B" in name for name in grads)


def test_bf16_autocast_gives_the_same_values_and_gradients_within_bf16_rounding():
    """The head's matmul runs under the forward's autocast, in the forward and in the backward's recomputation (which
    would otherwise fail checkpoint's check that it recomputed the same tensors, or give fp32 logits)."""
    model, batch = qwen2(), batch_for(packing=True)
    grads = []
    for chunk in (0, 4):
        model.zero_grad(set_to_none=True)
        out = target_logprobs(model, batch, "bf16", chunk=chunk, entropy=True)
        (out.logps.sum() + out.entropy.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        if chunk == 0:
            want = out.logps.detach(), out.entropy.detach()
    torch.testing.assert_close(out.logps.detach(), want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.entropy.detach(), want[1], rtol=1e-6, atol=1e-6)
    assert ((grads[1] - grads[0]).norm() / grads[0].norm()).item() < 2e-2  # bf16 weight gradients, summed per chunk


def test_chunk_zero_is_the_full_logits_path_and_sequence_sums_agree():
    model, batch = tiny_llama(), batch_for(packing=False)
    out = target_logprobs(model, batch, chunk=0)
    logits, targets = forward_logits(model, batch)
    assert torch.equal(out.logps, token_logprobs(logits, targets))
    with torch.no_grad():
        for chunk in (1, 3, 1000):
            torch.testing.assert_close(sequence_logps(model, batch, 5, chunk=chunk), sequence_logps(model, batch, 5,
                                                                                                    chunk=0))


def saved_for_backward(model, compute) -> list[torch.Size]:
    """The shapes of the tensors autograd keeps for the backward while `compute` runs, the model's weights (and
    views of them) aside; outside checkpointed regions, whose own tensors are dropped and recomputed."""
    shapes = []
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        if t.untyped_storage().data_ptr() not in weights:
            shapes.append(t.shape)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        compute()
    return shapes


def test_no_positions_by_vocabulary_tensor_is_kept_for_the_backward():
    model, batch = tiny_llama(), batch_for(packing=True)
    vocab = model.config.vocab_size
    positions = int((batch["targets"] != IGNORE_INDEX).sum())
    assert positions > 8

    def vocabulary_wide(shapes) -> int:  # elements kept over the whole vocabulary
        return sum(s.numel() for s in shapes if s and s[-1] == vocab)

    full = saved_for_backward(model, lambda: target_logprobs(model, batch, chunk=0, entropy=True))
    chunked = saved_for_backward(model, lambda: target_logprobs(model, batch, chunk=4, entropy=True))
    assert vocabulary_wide(full) >= 2 * positions * vocab  # the logits and their log-softmax at every position
    assert vocabulary_wide(chunked) <= 4 * vocab  # at most one chunk (here: none, each chunk is recomputed)


class ScaledLogitsLlama(transformers.LlamaForCausalLM):
    """Post-processes its logits after the output layer, as Cohere (logit_scale) and Granite (logits_scaling) do."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 0.5
        return out


def test_models_that_post_process_their_logits_take_the_full_path():
    gemma = _seeded(lambda: transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
        **{**SMALL, "num_key_value_heads": 2}, head_dim=8, final_logit_softcapping=1.0, attn_logit_softcapping=None)))
    scaled = _seeded(lambda: ScaledLogitsLlama(transformers.LlamaConfig(**SMALL)))
    batch = batch_for(packing=False)
    for model in (gemma, scaled):
        assert chunkable_head(model) is None
        with torch.no_grad():
            got = target_logprobs(model, batch, chunk=4).logps
            logits, targets = forward_logits(model, batch)  # soft-capped / scaled: what the model's logits are
            torch.testing.assert_close(got, token_logprobs(logits, targets))
    assert chunkable_head(_seeded(lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**SMALL))))


def test_chunked_reduce_worked_example_and_any_chunk_size():
    logp, entropy = chunked_reduce(torch.tensor([[0.0, 1.0986123]]), torch.nn.Identity(),
                                   lambda z, y: logprobs_and_entropy(z, y, entropy=True), (torch.tensor([1]),))
    assert logp.item() == pytest.approx(-0.2876821, abs=1e-6) and entropy.item() == pytest.approx(0.5623351, abs=1e-6)
    torch.manual_seed(0)
    hidden, head = torch.randn(10, 6, requires_grad=True), torch.nn.Linear(6, 9)
    targets = torch.tensor([3, IGNORE_INDEX, 0, 8, 1, 1, IGNORE_INDEX, 5, 2, 7])
    results = []
    for chunk in (1, 3, 10, 64):
        hidden.grad = head.weight.grad = None
        logp, = chunked_reduce(hidden, head, logprobs_and_entropy, (targets,), chunk)
        (logp * torch.arange(10.0)).sum().backward()
        results.append((logp.detach(), hidden.grad.clone(), head.weight.grad.clone()))
    direct = token_logprobs(head(hidden), targets)
    for logp, grad_hidden, grad_weight in results:
        torch.testing.assert_close(logp, direct.detach())
        torch.testing.assert_close(grad_hidden, results[0][1])
        torch.testing.assert_close(grad_weight, results[0][2])
    assert [t.shape for t in chunked_reduce(torch.zeros(0, 6), head, logprobs_and_entropy,
                                            (torch.zeros(0, dtype=torch.long),))] == [torch.Size([0])]
