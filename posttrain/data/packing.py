"""Batch tokenized examples into tensors: padded (one example per row) or packed (several per row).

Packing puts several short examples into one row so fewer tokens are padding. It must not change what the
model computes for any example, which takes three things (all produced by `collate`):

  1. attention stays inside each example. We pass `position_ids` that restart at 0 for every example and no
     `attention_mask`; transformers (>= 5) then finds the example boundaries from the position restarts and
     builds a block-diagonal causal mask (the model must be called with `use_cache=False`, so it doesn't
     treat the row as one sequence continuing a cache).
  2. positions restart at 0, so rotary/learned position embeddings see what they would see unpacked.
  3. targets are shifted inside each example: the last token of one example must not be trained to predict
     the first token of the next one.

Loss convention (the trainer applies no further shift):

    F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none")

`tests/data/test_packing.py` checks that per-example losses and all gradients match the unpacked computation.
"""

from __future__ import annotations

import bisect

import torch

from posttrain.data.tokenize import IGNORE_INDEX


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Pack example indices into bins of at most `capacity` tokens (best-fit decreasing).

    Longest example first; each goes into the open bin with the least remaining space that still fits it
    (ties: the bin opened first), or opens a new bin. Deterministic: equal lengths keep their input order.

    Args:
        lengths: token count of each example.
        capacity: maximum tokens per bin.

    Returns:
        Bins, in the order they were opened; each lists example indices in the order they were placed.

    Raises:
        ValueError if an example is longer than `capacity`.

    Worked example, lengths [5, 3, 4, 2, 6], capacity 8. Placement order by length: 6, 5, 4, 3, 2.
        index 4 (6): no bin yet                          -> bin A [4]      (2 left)
        index 0 (5): nothing has 5 left                  -> bin B [0]      (3 left)
        index 2 (4): nothing has 4 left                  -> bin C [2]      (4 left)
        index 1 (3): B (3 left) and C (4 left) fit; B is tighter -> B [0, 1] (0 left)
        index 3 (2): A (2 left) and C (4 left) fit; A is tighter -> A [4, 3] (0 left)
        >>> best_fit_decreasing([5, 3, 4, 2, 6], 8)
        [[4, 3], [0, 1], [2]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # stable: ties keep input order
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, bin number), kept sorted so bisect finds the best fit
    for i in order:
        if lengths[i] > capacity:
            raise ValueError(f"example {i} has {lengths[i]} tokens, more than the bin capacity {capacity}")
        k = bisect.bisect_left(free, (lengths[i], -1))  # first bin with space >= length; lowest number on ties
        if k == len(free):
            bins.append([])
            space, b = capacity, len(bins) - 1
        else:
            space, b = free.pop(k)
        bins[b].append(i)
        bisect.insort(free, (space - lengths[i], b))
    return bins


def collate(examples: list[dict], *, pad_id: int, packing: bool,
            pack_length: int | None = None) -> dict[str, torch.Tensor]:
    """Make a batch from examples {"input_ids": list[int], "labels": list[int]} (labels unshifted, -100 = no loss;
    an example without "labels" — one only scored, e.g. by a reward model — has no targets).

    Args:
        examples: E tokenized examples, each non-empty.
        pad_id: token id used for padding (it is never attended to by real tokens nor trained on).
        packing: False -> one example per row; True -> best-fit-decreasing bins, each bin's examples
            concatenated in ascending example-index order.
        pack_length: capacity of a packed row. Default: the longest example's length, so packing never makes
            a row longer than padding would.

    Returns (R rows, T = longest row, no extra padding):
        input_ids     [R, T] long   tokens, right-padded with pad_id
        targets       [R, T] long   targets[r, j] = label of the next token of the same example;
                                    -100 at each example's last token and at padding
        position_ids  [R, T] long   0, 1, ... restarting at every example; padding counts from 0 as its own run
        seq_index     [R, T] long   index of the example in `examples`, -1 for padding
        attention_mask [R, T] long  1 = real token; only when packing=False (packed: pass attention_mask=None)

    Example, examples a = ids [5, 6, 7] labels [-100, 6, 7] and b = ids [8, 9] labels [-100, 9], packed:
        input_ids    [[5, 6, 7, 8, 9]]
        targets      [[6, 7, -100, 9, -100]]   (7 does not predict 8)
        position_ids [[0, 1, 2, 0, 1]]
        seq_index    [[0, 0, 0, 1, 1]]
    """
    lengths = [len(example["input_ids"]) for example in examples]
    if packing:
        bins = best_fit_decreasing(lengths, pack_length or max(lengths))
        row_members = [sorted(b) for b in bins]
    else:
        row_members = [[i] for i in range(len(examples))]
    width = max(sum(lengths[i] for i in members) for members in row_members)
    rows = [_build_row(examples, members, width, pad_id) for members in row_members]
    batch = {key: torch.tensor([row[key] for row in rows], dtype=torch.long)
             for key in ("input_ids", "targets", "position_ids", "seq_index")}
    if not packing:
        batch["attention_mask"] = (batch["seq_index"] >= 0).long()
    return batch


def _build_row(examples: list[dict], members: list[int], width: int, pad_id: int) -> dict[str, list[int]]:
    """Concatenate examples `members` into one row of `width` tokens, padding on the right."""
    row = {"input_ids": [], "targets": [], "position_ids": [], "seq_index": []}
    for i in members:
        ids = examples[i]["input_ids"]
        labels = examples[i].get("labels", [IGNORE_INDEX] * len(ids))
        row["input_ids"] += ids
        row["targets"] += list(labels[1:]) + [IGNORE_INDEX]  # shift within the example only
        row["position_ids"] += list(range(len(ids)))
        row["seq_index"] += [i] * len(ids)
    pad = width - len(row["input_ids"])
    row["input_ids"] += [pad_id] * pad
    row["targets"] += [IGNORE_INDEX] * pad
    row["position_ids"] += list(range(pad))
    row["seq_index"] += [-1] * pad
    return row
