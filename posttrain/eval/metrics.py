"""Evaluation metrics over sampled solutions: accuracy, pass@k (the unbiased estimator) and maj@k.

    accuracy([1.0, 0.0, None, 1.0])              → 0.5     (None = unscorable, counts as wrong)
    by_group(rows, [1.0, 0.0, 1.0])              → {"level_1": 1.0, "level_2": 0.5}  per value of rows' `level`
    pass_at_k(n=4, c=1, k=2)                     → 0.5     P(at least one of k draws is right)
    maj_at_k(["5", "7", "5"], [1, 0, 1], k=3)    → 1.0     the majority answer's verdict
    paired_sign_test([0, 0, 1], [1, 1, 1])       → 0.5     is one strategy's lead over another chance?

Every function but the last is per problem; `mean_over_problems` averages any of them over a data set.
"""

from __future__ import annotations

import math
from typing import Sequence

from posttrain.search.voting import majority_vote


def accuracy(scores: Sequence[float | None]) -> float:
    """Mean verifier score; an unscorable sample (None) counts as wrong. Empty → 0.0.

    Example: accuracy([1.0, 0.0, None, 1.0]) = 2 / 4 = 0.5.
    """
    return sum(s or 0.0 for s in scores) / len(scores) if scores else 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """The probability that at least one of k samples drawn without replacement from n samples, c of them
    correct, is correct — the unbiased estimator of pass@k (Chen et al. 2021, "Evaluating Large Language
    Models Trained on Code", arXiv:2107.03374, eq. 1):

        pass@k = 1 − C(n−c, k) / C(n, k)

    The binomials overflow floats for large n, so it is computed as the paper's stable product

        C(n−c, k) / C(n, k) = ∏_{i = n−c+1}^{n} (1 − k / i)

    (each factor removes one correct sample from the pool). When n − c < k every k-subset holds a correct
    sample and pass@k = 1; when c = 0 it is 0.

    Worked example, n = 4, c = 1, k = 2: C(3, 2) / C(4, 2) = 3 / 6, so pass@2 = 0.5; the product gives
    1 − 2/4 = 0.5 as well. Averaging pass@k over problems estimates the pass@k of the model with less variance
    than drawing exactly k samples per problem.
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise ValueError(f"pass_at_k takes integers, got n={n!r}, c={c!r}, k={k!r}")
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 ≤ c ≤ n and 1 ≤ k ≤ n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    none_correct = 1.0
    for i in range(n - c + 1, n + 1):
        none_correct *= 1.0 - k / i
    return 1.0 - none_correct


def maj_at_k(answers: Sequence[str | None], scores: Sequence[float | None], k: int) -> float:
    """Self-consistency with the first k samples (Wang et al. 2022, arXiv:2203.11171): the verifier's score of
    the answer most of them agree on. answers[i] is sample i's extracted answer (None = none could be
    extracted, left out of the vote), scores[i] its verifier score; the winner's score is the score of its first
    sample (`search.voting.majority_vote`'s representative). No extractable answer among the k → 0.0.

    Example: answers ["5", "7", "5", None], scores [1, 0, 1, 0]: maj@3 votes "5" twice against "7" once → 1.0;
    maj@2 is a 1–1 tie, which goes to the answer seen first ("5") → 1.0; maj@1 → 1.0.
    """
    if not 1 <= k <= len(answers) or len(scores) != len(answers):
        raise ValueError(f"maj_at_k needs 1 ≤ k ≤ {len(answers)} and one score per answer")
    winner = majority_vote(answers[:k])
    return 0.0 if winner is None else float(scores[winner] or 0.0)


def mean_over_problems(per_problem: Sequence[float]) -> float:
    """The data-set metric: the mean of a per-problem metric (0.0 for no problems)."""
    return sum(per_problem) / len(per_problem) if per_problem else 0.0


GROUP_FIELD = "level"  # rows that carry it (the word task's difficulty levels) get their metrics per value too


def by_group(rows: Sequence[dict], values: Sequence[float | None], field: str = GROUP_FIELD) -> dict[str, float]:
    """The mean of per-problem `values` (None counts as 0, as in accuracy) over the rows of each value of
    rows[i][field], keyed "<field>_<value>" in the order of the values (numbers numerically); rows without the field
    are left out, and no row with it gives {} — so a data set without levels reports nothing more.

    Example: rows with levels [1, 2, 2], values [1.0, 0.0, 1.0] → {"level_1": 1.0, "level_2": 0.5}.
    """
    if len(rows) != len(values):
        raise ValueError(f"by_group needs one value per row, got {len(rows)} rows and {len(values)} values")
    groups: dict = {}
    for row, value in zip(rows, values):
        if row.get(field) is not None:
            groups.setdefault(row[field], []).append(value or 0.0)
    numeric = [g for g in groups if isinstance(g, (int, float))]
    order = sorted(numeric) + sorted((g for g in groups if g not in numeric), key=str)
    return {f"{field}_{g}": sum(groups[g]) / len(groups[g]) for g in order}


def correct_counts(scores: Sequence[Sequence[float | None]], threshold: float = 1.0) -> list[tuple[int, int]]:
    """(n, c) per problem from per-sample verifier scores: c counts the samples scored ≥ threshold.

    Example: [[1.0, 0.0, None], [1.0, 1.0]] → [(3, 1), (2, 2)].
    """
    return [(len(s), sum(1 for x in s if x is not None and x >= threshold)) for s in scores]


def wins(a: Sequence[float], b: Sequence[float]) -> tuple[int, int]:
    """(problems a gets right and b wrong, problems b gets right and a wrong), scores 0/1 per problem (None = 0):
    a = [1, 0, 0], b = [0, 1, 1] → (1, 2)."""
    return (sum(1 for x, y in zip(a, b) if (x or 0) > (y or 0)),
            sum(1 for x, y in zip(a, b) if (y or 0) > (x or 0)))


def paired_sign_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value that strategies a and b, scored 0/1 on the same problems, are equally accurate — the
    exact sign test on the problems where they disagree (McNemar's exact test).

    Problems both get right or both get wrong say nothing about which is better. Of the m problems where they
    disagree, b wins w; if the two were equally good, w would be Binomial(m, 1/2), and the p-value is the chance
    of a split at least as lopsided:

        p = min(1, 2 · Σ_{i ≤ min(w, m − w)} C(m, i) / 2^m)

    Worked example: b wins 5 problems a gets wrong, a wins 1 → m = 6, the smaller side 1:
    p = 2 · (C(6, 0) + C(6, 1)) / 64 = 2 · 7 / 64 = 0.219 — a 5–1 split is not yet evidence. 9–1 gives
    p = 2 · 11 / 1024 = 0.021. No disagreements → 1.0.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_sign_test needs one score per problem from each strategy, got {len(a)} and "
                         f"{len(b)}")
    a_wins, b_wins = wins(a, b)
    m = a_wins + b_wins
    tail = sum(math.comb(m, i) for i in range(min(a_wins, b_wins) + 1))
    return min(1.0, 2 * tail / 2 ** m)


__all__ = ["accuracy", "by_group", "correct_counts", "maj_at_k", "mean_over_problems", "paired_sign_test",
           "pass_at_k", "wins"]
