"""Hand-computed examples from the docstrings of algos/aggregate.py, algos/logprobs.py and algos/sft.py."""

import math

import pytest
import torch

from posttrain.algos.aggregate import aggregate
from posttrain.algos.logprobs import IGNORE_INDEX, token_entropy, token_logprobs
from posttrain.algos.sft import token_cross_entropy


def test_aggregate_worked_example():
    values = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert aggregate(values, mask, "token_mean").item() == pytest.approx(1 / 3)
    assert aggregate(values, mask, "seq_mean_token_mean").item() == pytest.approx(0.5)
    assert aggregate(values, mask, "seq_mean_token_sum_norm", max_len=4).item() == pytest.approx(0.25)


def test_aggregate_global_normalizer_makes_splits_add_up():
    torch.manual_seed(0)
    values, mask = torch.rand(6, 5), torch.rand(6, 5) > 0.3
    whole = aggregate(values, mask, "token_mean")
    n = mask.sum().item()
    parts = sum(aggregate(values[i:i + 2], mask[i:i + 2], "token_mean", num_tokens=n) for i in range(0, 6, 2))
    assert torch.allclose(whole, parts)
    whole = aggregate(values, mask, "seq_mean_token_mean")
    parts = sum(aggregate(values[i:i + 3], mask[i:i + 3], "seq_mean_token_mean", num_seqs=6) for i in (0, 3))
    assert torch.allclose(whole, parts)


def test_aggregate_unknown_mode_lists_valid():
    with pytest.raises(ValueError, match="token_mean"):
        aggregate(torch.ones(1, 1), torch.ones(1, 1), "mean")


def test_token_logprobs_and_cross_entropy_example():
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 1.0]]])
    targets = torch.tensor([[1, IGNORE_INDEX]])
    logp = token_logprobs(logits, targets)
    assert logp[0, 0].item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert logp[0, 1].item() == 0.0
    loss, mask = token_cross_entropy(logits, targets)
    assert loss[0, 0].item() == pytest.approx(-math.log(0.75), abs=1e-6)
    assert mask.tolist() == [[True, False]]


def test_chunked_logprobs_equal_direct_gather():
    torch.manual_seed(0)
    logits, targets = torch.randn(3, 7, 11), torch.randint(0, 11, (3, 7))
    direct = torch.log_softmax(logits, -1).gather(-1, targets[..., None]).squeeze(-1)
    assert torch.allclose(token_logprobs(logits, targets, chunk_rows=4), direct, atol=1e-6)


def test_entropy_of_uniform_is_log_v():
    assert token_entropy(torch.zeros(1, 1, 4)).item() == pytest.approx(math.log(4))
