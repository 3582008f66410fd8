"""The test-time search strategies as a registry (posttrain.algos.registry): name → function, with what each needs.

    best_of_n   sample n, keep the one the scorer rates highest          scorer: outcome or process
    vote        sample n, majority (or scorer-weighted) vote on answers   scorer: optional
    step_beam   step-level beam search                                    scorer: process   budgeted
    mcts        Monte-Carlo tree search over steps                        scorer: value     budgeted

Flags: `scorer` — what judges candidates: "optional" (a vote needs none; with one it weighs the votes), "outcome or
process" (an outcome RM or a PRM on whole solutions), "process" (a PRM on partial solutions), "value" (an Evaluate
of a partial solution: `prm_value(prm)` or `rollout_value(policy, scorer)`); `budgeted` — it takes a per-problem
budget of generated tokens (`budget_tokens`), so it can be compared with best-of-N at equal compute. The functions'
signatures differ (each takes the policy, the problems and what its scorer flag names), so the registry is read for
what a strategy needs, and a caller names the arguments.
"""

from __future__ import annotations

from posttrain.algos.registry import Registry

STRATEGIES = Registry("search strategy", flags={"scorer": "optional", "budgeted": False})
