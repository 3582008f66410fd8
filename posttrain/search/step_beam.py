"""Step-level beam search guided by a process reward model.

The policy writes a solution one step (one line) at a time; after every step a PRM scores each partial solution
and only the best B survive (Yao et al. 2023 "Tree of Thoughts", arXiv:2305.10601, BFS variant; Snell et al.
2024 "Scaling LLM Test-Time Compute Optimally…", arXiv:2408.03314, "beam search" against a PRM):

    beams ← [""]                                          the empty solution
    repeat (a round):
        every unfinished beam is expanded with k sampled next steps           ≤ B·k samples, one line each
        candidates = the finished beams + every beam + step (duplicates of a text kept once, the first)
        score each candidate with the PRM (aggregate of its step scores; min by default)
        beams ← the B best candidates (ties → the earlier candidate)
    until every beam is finished, max_steps rounds, or the problem's token budget is spent
    answer: the best-scored finished beam (ties → the earlier); none finished (the budget ran out first) →
            the best beam, completed by one sample (its tokens counted)

A step finishes a solution when it holds the final-answer marker, ends at eos, or hits the step length limit
(policy.py). Finished beams stay in the pool and compete with the new candidates, so a good early answer is
not displaced by worse longer ones.

Worked example (B = 2, k = 3, "47+85="; scores are the PRM's, tests/search/test_search.py checks exactly this):
    round 1  "" → "7+5=12 carry 1" (twice: kept once, 0.9), "7+5=11 carry 1" (0.2)        → both
    round 2  the 0.9 beam → "4+8+1=13 carry 1" (0.85, twice), "4+8+1=14 carry 1" (0.3);
             the 0.2 beam → "4+8+1=13 carry 1" (0.2), "answer: 121" (0.1, finished, twice)   → 0.85, 0.3
    round 3  each → its "answer: …" line three times: "answer: 132" (0.8), "answer: 142" (0.3)
             every beam finished → the answer is "7+5=12 carry 1\n4+8+1=13 carry 1\nanswer: 132"
The 15 sampled steps cost 45 + 92 + 72 = 209 tokens (a line's characters + its newline or eos).

Compute: every sampled step's tokens count (SearchResult.generated_tokens); the budget is checked before each
round, so the last round may overshoot it by at most B·k steps — the table reports what was really spent.
Problems are searched in lockstep (one engine call per round for all of them); beam b of problem i in round r
draws its k steps with the engine seeds derive_seed(seed, step "beam:r", example i·B + b, j), so results do not
depend on which other problems are in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.search.policy import STEP_SEPARATOR, Policy, SearchResult, complete_unfinished
from posttrain.search.scorers import Scorer
from posttrain.search.strategies import STRATEGIES


@dataclass
class Beam:
    text: str           # the partial solution: its steps, each followed by "\n" unless it finished the solution
    score: float        # the PRM's aggregate score of its steps
    finished: bool


def top_beams(candidates: list[Beam], width: int) -> list[Beam]:
    """The `width` highest-scored candidates, best first; equal scores keep the candidates' order (a stable sort).

    Example: scores [0.5, 0.9, 0.5, 0.7], width 3 → the candidates scored 0.9, 0.7 and the first 0.5.
    """
    return sorted(candidates, key=lambda b: -b.score)[:width]


def unique_by_text(candidates: list[Beam]) -> list[Beam]:
    """Candidates with a text seen before removed (the first one stays): the policy often samples the same step
    several times, and B copies of one solution would waste the beam."""
    seen: set[str] = set()
    return [c for c in candidates if not (c.text in seen or seen.add(c.text))]


@STRATEGIES.register("step_beam", scorer="process", budgeted=True)
def step_beam_search(policy: Policy, problems: list[dict], prm: Scorer, *, beam_width: int = 2, expansions: int = 4,
                     max_steps: int = 16, budget_tokens: list[int] | None = None,
                     seed: int = 0) -> list[SearchResult]:
    """Step-level beam search for each problem ({"prompt", …}); see the module docstring.

    prm: a scorer of partial solutions (scorers.ProcessRM). budget_tokens[i]: generated tokens problem i may
    spend (None: no limit). Returns per problem the chosen completion and the tokens spent.
    """
    if beam_width < 1 or expansions < 1 or max_steps < 1:
        raise ValueError(f"beam_width, expansions and max_steps must be ≥ 1, got {beam_width}, {expansions}, "
                         f"{max_steps}")
    beams = [[Beam("", 0.0, False)] for _ in problems]
    spent = [0] * len(problems)
    for round_ in range(max_steps):
        # ---- expand: every unfinished beam of every problem still searching, k next steps each -----------------
        jobs = [(i, b) for i in range(len(problems))
                if budget_tokens is None or spent[i] < budget_tokens[i]
                for b, beam in enumerate(beams[i]) if not beam.finished]
        if not jobs:
            break
        samples = policy.sample([problems[i]["prompt"] for i, _ in jobs], [beams[i][b].text for i, b in jobs],
                                expansions, seed=seed, step=f"beam:{round_}",
                                example_ids=[i * beam_width + b for i, b in jobs], one_step=True)
        children: dict[int, list[Beam]] = {}
        for (i, b), steps in zip(jobs, samples):
            for s in steps:
                spent[i] += s.num_tokens
                text = beams[i][b].text + s.text + ("" if s.finished else STEP_SEPARATOR)
                children.setdefault(i, []).append(Beam(text, 0.0, s.finished))
        # ---- score and prune: finished beams compete with the new candidates --------------------------------------
        for i, new in children.items():
            kept = [b for b in beams[i] if b.finished]
            new = unique_by_text(kept + new)
            fresh = new[len(kept):]  # the finished beams come first and keep their scores
            for c, score in zip(fresh, prm.scores(problems[i], [c.text for c in fresh])):
                c.score = score
            beams[i] = top_beams(new, beam_width)
    answers = [next((b for b in kept if b.finished), kept[0]) for kept in beams]  # kept best first
    return complete_unfinished(policy, problems, [(b.text, b.finished) for b in answers], spent, seed=seed)


__all__ = ["Beam", "step_beam_search", "top_beams", "unique_by_text"]
