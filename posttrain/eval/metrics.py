"""Evaluation metrics over sampled solutions: accuracy, pass@k (the unbiased estimator) and maj@k.

    accuracy([1.0, 0.0, None, 1.0])              → 0.5     (None = unscorable, counts as wrong)
    pass_at_k(n=4, c=1, k=2)                     → 0.5     P(at least one of k draws is right)
    maj_at_k(["5", "7", "5"], [1, 0, 1], k=3)    → 1.0     the majority answer's verdict

Every function is per problem; `mean_over_problems` averages any of them over a data set.
"""

from __future__ import annotations

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


def correct_counts(scores: Sequence[Sequence[float | None]], threshold: float = 1.0) -> list[tuple[int, int]]:
    """(n, c) per problem from per-sample verifier scores: c counts the samples scored ≥ threshold.

    Example: [[1.0, 0.0, None], [1.0, 1.0]] → [(3, 1), (2, 2)].
    """
    return [(len(s), sum(1 for x in s if x is not None and x >= threshold)) for s in scores]


__all__ = ["accuracy", "correct_counts", "maj_at_k", "mean_over_problems", "pass_at_k"]
