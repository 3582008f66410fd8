"""Test-time search on the rollout engine: spend more generated tokens at inference to answer better.

    policy.py      Policy (engine + tokenizer + sampling), Sample, SearchResult, steps_of
    voting.py      majority_vote, weighted_vote (self-consistency; ties → the answer seen first)
    scorers.py     OutcomeRM, ProcessRM (min / product / last over steps), Verifier (oracle only)
    best_of_n.py   best_of_n, vote (and choose_best / choose_by_vote on already-sampled candidates)
    step_beam.py   step_beam_search: one line per step, a PRM keeps the best B partial solutions
    mcts.py        mcts_search: UCT/PUCT selection, expansion by k sampled steps, PRM / rollout / value
                   evaluation, backup; the tree logic (select, expand, backup) separate from the model
    strategies.py  STRATEGIES: the four strategies above by name, with the scorer each needs and whether it
                   takes a token budget

Every strategy returns per problem a SearchResult(completion, generated_tokens), so strategies can be compared at
equal compute (`posttrain eval` prints that table). Seeds are explicit: the same seed gives the same result,
whatever the batch size.
"""

from posttrain.search.best_of_n import best_of_n, choose_best, choose_by_vote, sample_candidates, vote
from posttrain.search.mcts import mcts_search, prm_value, rollout_value
from posttrain.search.policy import Policy, Sample, SearchResult, steps_of
from posttrain.search.scorers import OutcomeRM, ProcessRM, Verifier, load_outcome_rm, load_prm
from posttrain.search.step_beam import step_beam_search
from posttrain.search.strategies import STRATEGIES
from posttrain.search.voting import majority_vote, weighted_vote

__all__ = ["OutcomeRM", "Policy", "ProcessRM", "STRATEGIES", "Sample", "SearchResult", "Verifier", "best_of_n",
           "choose_best", "choose_by_vote", "load_outcome_rm", "load_prm", "majority_vote", "mcts_search",
           "prm_value", "rollout_value", "sample_candidates", "step_beam_search", "steps_of", "vote", "weighted_vote"]
