"""Rewards: score a step's completions from one or more sources and add them with weights; score reasoning steps.

The contract (DESIGN §3): a reward function is `fn(prompt, completion, **row) -> float | None`; None means "could
not be scored" — not a zero reward: the sample is left out of baselines, gets advantage 0, and is counted.

    contract.py     Outcome, outcome_of, ScoredBatch, score_all, reward_metrics; RewardSource, VerifierReward
    guard.py        UnscorableGuard: stop the run when most of a step cannot be scored
    worker.py       FileReward: user code in a worker process, with a timeout per call, killed with its children
    builtin.py      builtin_reward("code_tests"): built-in rewards by name (BUILTIN_REWARDS)
    model.py        ModelReward, load_reward_model: a trained outcome reward model (`posttrain rm`); `scores`
    process.py      step_logits, step_scores: a trained process reward model's σ(z) per step
    step_labels.py  Monte-Carlo step labels (Math-Shepherd) for `posttrain rm reward.mode=prm reward.labels=mc`

    sources  VerifierReward(task.score)              trusted code in this process (the built-in task's verifier)
             FileReward("my_reward.py", "reward")    user code, in a worker process with a timeout per call
             builtin_reward("code_tests")            a built-in reward by name; code_tests runs the row's unit
                                                     tests on the completion's code in posttrain.sandbox
             ModelReward(model, tokenizer)           a trained outcome reward model (`posttrain rm`)
    combine  score_all([(src, weight), ...], prompts, completions, rows) -> ScoredBatch
    watch    UnscorableGuard(reward.max_unscored_fraction).check(batch, step); reward_metrics(batch)

One RL step, as the loop uses it:

    with FileReward("my_reward.py", timeout_s=5) as user:        # loading errors are raised here, before training
        sources = [(VerifierReward(task.score), 1.0), (user, 0.5)]
        guard = UnscorableGuard(cfg.reward.max_unscored_fraction)
        for step in ...:
            batch = score_all(sources, prompts, completions, rows)   # rewards [B], scored [B]
            guard.check(batch, step)                                  # UserError when too much is unscorable
            tracker.log(step, reward_metrics(batch))
"""

from __future__ import annotations

import importlib

from posttrain.rewards.builtin import BUILTIN_REWARDS, builtin_reward
from posttrain.rewards.contract import (FAILURE_REASONS, Outcome, RewardSource, ScoredBatch, VerifierReward,
                                        outcome_of, reward_metrics, score_all)
from posttrain.rewards.guard import UnscorableGuard
from posttrain.rewards.worker import FileReward, _worker_main

# Names of the modules that load models (torch, transformers) are resolved on first use (PEP 562): the user-code
# worker imports this package, and it must start without them — a fresh worker is started after every hang.
_MODEL_NAMES = {"ModelReward": "model", "REWARD_HEADS": "model", "load_head_model": "model",
                "load_reward_model": "model", "step_logits": "process", "step_scores": "process"}


def __getattr__(name: str):
    if name not in _MODEL_NAMES:
        raise AttributeError(f"module 'posttrain.rewards' has no attribute {name!r}")
    return getattr(importlib.import_module(f"posttrain.rewards.{_MODEL_NAMES[name]}"), name)


__all__ = ["BUILTIN_REWARDS", "FAILURE_REASONS", "FileReward", "ModelReward", "Outcome", "REWARD_HEADS",
           "RewardSource", "ScoredBatch", "UnscorableGuard", "VerifierReward", "builtin_reward", "load_head_model",
           "load_reward_model", "outcome_of", "reward_metrics", "score_all", "step_logits", "step_scores",
           "_worker_main"]
