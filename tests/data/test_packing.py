"""Best-fit-decreasing bins, and the key property of packing: it changes nothing the model computes.

The exactness test runs a tiny random Llama three ways — padded batch, packed rows, one example at a time —
and requires the same per-example loss and the same gradients for every parameter.
"""

import random

import pytest
import torch
import torch.nn.functional as F

from posttrain.data import IGNORE_INDEX, best_fit_decreasing, collate


# ---- best-fit decreasing ------------------------------------------------------------------------------------

def test_bfd_hand_worked_example():
    # see the docstring: 6 -> A, 5 -> B, 4 -> C, 3 -> B (3 left is the tightest fit), 2 -> A (2 left)
    assert best_fit_decreasing([5, 3, 4, 2, 6], 8) == [[4, 3], [0, 1], [2]]


def test_bfd_ties_are_deterministic():
    assert best_fit_decreasing([2, 2, 2, 2], 4) == [[0, 1], [2, 3]]


def naive_best_fit_decreasing(lengths, capacity):
    """Reference: scan every bin, keep the fullest one that still fits (first such bin on ties)."""
    bins, space = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fits = [b for b in range(len(bins)) if space[b] >= lengths[i]]
        if fits:
            b = min(fits, key=lambda b: space[b])
        else:
            bins.append([])
            space.append(capacity)
            b = len(bins) - 1
        bins[b].append(i)
        space[b] -= lengths[i]
    return bins


@pytest.mark.parametrize("seed", range(20))
def test_bfd_invariants_and_agreement_with_naive_scan(seed):
    rng = random.Random(seed)
    capacity = rng.randint(4, 64)
    lengths = [rng.randint(1, capacity) for _ in range(rng.randint(1, 60))]
    bins = best_fit_decreasing(lengths, capacity)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))  # every example exactly once
    assert all(sum(lengths[i] for i in b) <= capacity for b in bins)
    assert bins == naive_best_fit_decreasing(lengths, capacity)


def test_bfd_rejects_an_example_longer_than_capacity():
    with pytest.raises(ValueError, match="example 1 has 9 tokens"):
        best_fit_decreasing([3, 9], 8)


# ---- collate ------------------------------------------------------------------------------------------------

A = {"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]}
B = {"input_ids": [8, 9], "labels": [IGNORE_INDEX, 9]}
C = {"input_ids": [4, 3, 2, 1], "labels": [IGNORE_INDEX, IGNORE_INDEX, 2, 1]}


def test_collate_padded_worked_example():
    batch = collate([A, B], pad_id=0, packing=False)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 9, 0]]
    assert batch["targets"].tolist() == [[6, 7, -100], [9, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 1, 0]]
    assert batch["seq_index"].tolist() == [[0, 0, 0], [1, 1, -1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_collate_packed_worked_example():
    batch = collate([A, B, C], pad_id=0, packing=True, pack_length=6)
    # BFD, capacity 6: C (4) opens row 0 (2 left); A (3) doesn't fit, opens row 1 (3 left); B (2) fits both,
    # row 0 is tighter. Each row lists its examples in index order: row 0 = [B, C], row 1 = [A] + 3 pads.
    assert batch["input_ids"].tolist() == [[8, 9, 4, 3, 2, 1], [5, 6, 7, 0, 0, 0]]
    assert batch["targets"].tolist() == [[9, -100, -100, 2, 1, -100], [6, 7, -100, -100, -100, -100]]
    assert batch["position_ids"].tolist() == [[0, 1, 0, 1, 2, 3], [0, 1, 2, 0, 1, 2]]
    assert batch["seq_index"].tolist() == [[1, 1, 2, 2, 2, 2], [0, 0, 0, -1, -1, -1]]
    assert "attention_mask" not in batch
    assert all(t.dtype == torch.long for t in batch.values())


def test_collate_default_pack_length_is_the_longest_example():
    batch = collate([A, B, C], pad_id=0, packing=True)  # capacity 4: C alone; A alone (3+2 > 4); B alone
    assert batch["input_ids"].shape == (3, 4)


# ---- exactness: packed == padded == one at a time ------------------------------------------------------------

VOCAB = 64


def make_examples(n=7, seed=0):
    """Examples of varied lengths whose first few tokens (a 'prompt') carry no loss."""
    g = torch.Generator().manual_seed(seed)
    examples = []
    for length in [9, 3, 14, 6, 11, 2, 7][:n]:
        ids = torch.randint(1, VOCAB, (length,), generator=g).tolist()
        prompt = length // 3
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return examples


def make_model(attn_implementation):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         attn_implementation=attn_implementation)
    return LlamaForCausalLM(config).float().eval()


def per_example_loss_and_grads(model, batch, n_examples):
    """Summed token loss of each example ([n_examples]) and the gradients of their total."""
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                   attention_mask=batch.get("attention_mask"), use_cache=False).logits
    token_loss = F.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE_INDEX,
                                 reduction="none")
    seq = batch["seq_index"].flatten()
    losses = torch.zeros(n_examples).index_add(0, seq.clamp(min=0), token_loss * (seq >= 0))
    losses.sum().backward()
    return losses.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packing_gives_the_same_losses_and_gradients(attn_implementation):
    model, examples = make_model(attn_implementation), make_examples()
    padded = collate(examples, pad_id=0, packing=False)
    packed = collate(examples, pad_id=0, packing=True, pack_length=16)
    assert packed["input_ids"].shape[0] < len(examples)  # rows really hold several examples
    assert ((packed["position_ids"] == 0) & (packed["seq_index"] >= 0)).sum(1).max() > 1

    padded_loss, padded_grads = per_example_loss_and_grads(model, padded, len(examples))
    packed_loss, packed_grads = per_example_loss_and_grads(model, packed, len(examples))
    torch.testing.assert_close(packed_loss, padded_loss, atol=1e-5, rtol=0)
    for name in padded_grads:
        torch.testing.assert_close(packed_grads[name], padded_grads[name], atol=1e-5, rtol=0, msg=name)

    alone = torch.cat([per_example_loss_and_grads(model, collate([e], pad_id=0, packing=False), 1)[0]
                       for e in examples])
    torch.testing.assert_close(alone, padded_loss, atol=1e-5, rtol=0)


def test_packing_without_position_restarts_would_leak_across_examples():
    """The exactness test can fail: continuous positions make one causal sequence per row, and losses change."""
    model, examples = make_model("sdpa"), make_examples()
    packed = collate(examples, pad_id=0, packing=True, pack_length=16)
    leaky = dict(packed, position_ids=torch.arange(packed["input_ids"].shape[1]).expand_as(packed["input_ids"]))
    exact_loss, _ = per_example_loss_and_grads(model, packed, len(examples))
    leaky_loss, _ = per_example_loss_and_grads(model, leaky, len(examples))
    assert (exact_loss - leaky_loss).abs().max() > 1e-3
