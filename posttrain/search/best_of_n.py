"""Best-of-N, majority vote and weighted vote: sample N whole solutions per problem, then choose one.

    candidates = sample_candidates(policy, problems, n=8, seed=0)        # [problem][sample] Samples
    best_of_n(policy, problems, scorer, n=8, seed=0)                      # argmax of the scorer
    vote(policy, problems, n=8, seed=0, extract_answer=task.extract_answer)                  # self-consistency
    vote(..., scorer=prm, extract_answer=...)                                                 # weighted vote

Best-of-N (a.k.a. rejection sampling at test time; Cobbe et al. 2021 "Training Verifiers to Solve Math Word
Problems", arXiv:2110.14168; Lightman et al. 2023 with a PRM) spends N samples' tokens and picks the one the
scorer likes most. Ties go to the earliest sample, so best-of-1 is exactly plain sampling with the same seed:
sample k of problem i always has the engine seed derive_seed(seed, 0, i, k), whatever N is.

A sample whose answer cannot be extracted is still a candidate for best-of-N (the scorer decides); it takes no
part in a vote (voting.py). All three choose among the same samples, so when they are given the same seed they
can share them: `choose_best` and `choose_by_vote` work on already-sampled candidates.
"""

from __future__ import annotations

from typing import Callable

from posttrain.search.policy import Policy, Sample, SearchResult
from posttrain.search.scorers import Scorer, probability
from posttrain.search.strategies import STRATEGIES
from posttrain.search.voting import weighted_vote


def sample_candidates(policy: Policy, problems: list[dict], n: int, *, seed: int = 0) -> list[list[Sample]]:
    """n whole solutions per problem ({"prompt", …}); problem i's samples are seeded by (seed, 0, i, k)."""
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    return policy.sample([p["prompt"] for p in problems], [""] * len(problems), n, seed=seed, step=0,
                         example_ids=list(range(len(problems))))


def argmax_first(values: list[float]) -> int:
    """Index of the largest value; ties → the first. Example: [0.2, 0.9, 0.9] → 1."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def choose_best(candidates: list[Sample], scores: list[float]) -> SearchResult:
    """Best-of-N on sampled candidates: the highest-scored one (ties → first); cost = all candidates' tokens."""
    best = argmax_first(scores)
    return SearchResult(candidates[best].text, sum(c.num_tokens for c in candidates))


def choose_by_vote(candidates: list[Sample], answers: list[str | None],
                   weights: list[float] | None = None) -> SearchResult:
    """Majority (weights None) or weighted vote over sampled candidates: the first sample carrying the winning
    answer; no extractable answer at all → the first sample. Cost = all candidates' tokens."""
    winner = weighted_vote(answers, [1.0] * len(answers) if weights is None else weights)
    return SearchResult(candidates[0 if winner is None else winner].text, sum(c.num_tokens for c in candidates))


@STRATEGIES.register("best_of_n", scorer="outcome or process")
def best_of_n(policy: Policy, problems: list[dict], scorer: Scorer, n: int, *, seed: int = 0) -> list[SearchResult]:
    """Sample n solutions per problem and keep the one `scorer` rates highest (ties → the first sample)."""
    candidates = sample_candidates(policy, problems, n, seed=seed)
    return [choose_best(c, scorer.scores(p, [s.text for s in c])) for p, c in zip(problems, candidates)]


@STRATEGIES.register("vote")
def vote(policy: Policy, problems: list[dict], n: int, *, extract_answer: Callable[[str], str | None],
         scorer: Scorer | None = None, seed: int = 0) -> list[SearchResult]:
    """Self-consistency (scorer None: each sample one vote) or a weighted vote (each sample's weight is its score
    — a PRM's σ-probability, or an outcome RM's logit through σ, so weights are in (0, 1))."""
    out = []
    for problem, candidates in zip(problems, sample_candidates(policy, problems, n, seed=seed)):
        texts = [c.text for c in candidates]
        weights = None if scorer is None else vote_weights(scorer, problem, texts)
        out.append(choose_by_vote(candidates, [extract_answer(t) for t in texts], weights))
    return out


def vote_weights(scorer: Scorer, problem: dict, completions: list[str]) -> list[float]:
    """Vote weights in [0, 1] from a scorer: probabilities (PRM, verifier) as they are, an outcome RM's logits
    through σ."""
    scores = scorer.scores(problem, completions)
    return scores if scorer.probabilities else [probability(s) for s in scores]


__all__ = ["argmax_first", "best_of_n", "choose_best", "choose_by_vote", "sample_candidates", "vote", "vote_weights"]
