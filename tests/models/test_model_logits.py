"""models/logits.py and models/heads.py: the shared forward passes agree with a plain full forward of each example on
its own, packed or padded; a saved model's head is read from its architecture or its adapter's task type."""

import pytest
import torch
import torch.nn.functional as F

from posttrain.algos.logprobs import IGNORE_INDEX
from posttrain.config import LoraConfig, ModelConfig
from posttrain.data import collate
from posttrain.models.heads import HEADS, head_of
from posttrain.models.loading import load_model
from posttrain.models.logits import forward_logits, padded_forward, sequence_logps, target_positions


@pytest.fixture(scope="module")
def model():
    return load_model(ModelConfig(name_or_path="tiny"), LoraConfig()).eval()


def examples():
    """Four responses of different lengths; the first half of each is prompt (no target)."""
    g = torch.Generator().manual_seed(0)
    out = []
    for n in (5, 9, 3, 12):
        ids = torch.randint(7, 100, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (n // 2) + ids[n // 2:]})
    return out


def direct_logps(model, example) -> tuple[float, int]:
    """Σ log π over the example's targets, from one unpadded full forward."""
    ids = torch.tensor([example["input_ids"]])
    logp = F.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
    targets = example["labels"][1:]
    picked = [logp[t, y] for t, y in enumerate(targets) if y != IGNORE_INDEX]
    return sum(p.item() for p in picked), len(picked)


@pytest.mark.parametrize("packing", [True, False])
@torch.no_grad()
def test_sequence_logps_are_each_examples_own_sum(model, packing):
    batch = collate(examples(), pad_id=0, packing=packing)
    sums, counts = sequence_logps(model, batch, 4)
    expected = [direct_logps(model, e) for e in examples()]
    assert sums.tolist() == pytest.approx([s for s, _ in expected], abs=1e-4)
    assert counts.tolist() == [c for _, c in expected]


@torch.no_grad()
def test_forward_logits_keeps_only_the_positions_with_a_target(model):
    batch = collate(examples(), pad_id=0, packing=False)
    logits, targets = forward_logits(model, batch)
    keep = target_positions(batch["targets"])
    columns = batch["targets"].shape[1]
    assert keep.tolist() == [j for j in range(columns) if (batch["targets"][:, j] != IGNORE_INDEX).any()]
    assert logits.shape[:2] == targets.shape == (4, len(keep))
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, keep]
    real = targets != IGNORE_INDEX  # a row's padding and prompt positions are kept for the other rows' sake
    torch.testing.assert_close(logits[real], full[real], atol=1e-5, rtol=1e-5)
    assert target_positions(torch.tensor([[-100, 5, -100], [-100, -100, -100]])).tolist() == [1]


@torch.no_grad()
def test_padded_forward_matches_each_example_alone(model):
    out = padded_forward(model, examples(), pad_id=0)
    for row, example in zip(out, examples()):
        alone = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]
        torch.testing.assert_close(row[:len(alone)], alone, atol=1e-5, rtol=1e-5)


def test_a_saved_models_head_is_read_from_its_architecture_or_adapter():
    assert head_of("SEQ_CLS") == "score" and head_of("TOKEN_CLS") == "token" and head_of("CAUSAL_LM") == "lm"
    assert head_of(architectures=["LlamaForTokenClassification"]) == "token"
    assert head_of(architectures=["Qwen2ForSequenceClassification"]) == "score"
    assert head_of(architectures=["LlamaForCausalLM"]) == head_of() == "lm"
    assert HEADS["score"].suffix == "ForSequenceClassification"
