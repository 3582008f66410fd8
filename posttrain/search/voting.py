"""Voting over sampled solutions: majority vote (self-consistency) and weighted vote.

Self-consistency (Wang et al. 2022, arXiv:2203.11171): sample several reasoning paths, extract each one's final
answer with the task's `extract_answer`, and answer with the most frequent one. A weighted vote adds up a
score per sample instead of counting (Li et al. 2023 "Making Language Models Better Reasoners with Step-Aware
Verifier", arXiv:2206.02336; Uesato et al. 2022 weight by an outcome RM) — weights are reward-model or PRM
scores, so agreement among well-scored solutions wins.

Both return the INDEX of one sample that carries the winning answer (its representative), not the answer
itself: the caller then has a whole completion to show, to score with a verifier, or to compare with other
strategies — and needs no notion of answer equality beyond the extracted strings being equal.

Unextractable answers (None) take no part in the vote. No extractable answer at all → None.

Tie-breaking (documented, deterministic): among answers with the same count (or the same total weight), the
one whose FIRST occurrence comes earliest wins, and its representative is that first occurrence. Samples are
drawn with seeds fixed by their index, so "earliest" is as random as any other rule yet reproducible.

    majority_vote(["12", None, "13", "13", "12"])        → "12" ×2 and "13" ×2 tie; "12" came first → 0
    weighted_vote(["12", "13", "13"], [0.9, 0.3, 0.4])   → "12" 0.9 beats "13" 0.3 + 0.4 = 0.7 → 0
"""

from __future__ import annotations

from typing import Sequence


def weighted_vote(answers: Sequence[str | None], weights: Sequence[float]) -> int | None:
    """Index of the first sample whose answer has the largest total weight; None if no answer was extracted.

    answers [N] (None = no answer), weights [N] (finite, ≥ 0: e.g. a PRM's σ-probabilities, or an outcome RM's
    scores passed through σ). Ties in total weight go to the answer that occurs first.

    Worked example: answers ["12", "13", "13", None], weights [0.9, 0.3, 0.4, 5.0] →
    totals {"12": 0.9, "13": 0.7} (the None sample's 5.0 is ignored) → index 0.
    With weights [0.2, 0.3, 0.4, 0] the totals are {"12": 0.2, "13": 0.7} → index 1, "13"'s first sample.
    """
    if len(weights) != len(answers):
        raise ValueError(f"weighted_vote: {len(answers)} answers but {len(weights)} weights")
    if any(not w >= 0 for w in weights):  # also catches NaN
        raise ValueError(f"weighted_vote needs weights ≥ 0 (map scores through σ first), got {list(weights)}")
    totals: dict[str, float] = {}
    first: dict[str, int] = {}
    for i, (answer, weight) in enumerate(zip(answers, weights)):
        if answer is None:
            continue
        first.setdefault(answer, i)
        totals[answer] = totals.get(answer, 0.0) + float(weight)
    if not totals:
        return None
    # max() keeps the first maximum it meets, and dicts iterate in insertion (= first occurrence) order
    best = max(totals, key=lambda a: totals[a])
    return first[best]


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """Index of the first sample carrying the most frequent extracted answer; None if none was extracted.
    A weighted vote with every weight 1; ties go to the answer that occurs first.

    Worked example: ["12", None, "13", "13", "12"] → "12" and "13" both occur twice; "12" occurs first → 0.
    ["12", None, "13", "13"] → "13" ×2 beats "12" ×1 → 2 (the first "13").
    """
    return weighted_vote(answers, [1.0] * len(answers))


__all__ = ["majority_vote", "weighted_vote"]
