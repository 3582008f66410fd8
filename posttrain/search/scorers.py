"""Scorers: how a search strategy judges a (partial) solution. One interface:

    scorer.scores(problem, completions) → [float per completion]     problem = the data row {"prompt", …}

    OutcomeRM   a trained outcome reward model (`posttrain rm`): one score per whole completion, tokenized and
                read exactly as in training (rewards.ModelReward: data.preference.response_example +
                rewards.model.scores). Scores are logits (any real number); `probability` maps them to (0, 1).
    ProcessRM   a trained process reward model (`posttrain rm reward.mode=prm`): σ(z) per step
                (data.process.step_example + rewards.process.step_logits, as in training), aggregated with
                min (default), product or last. Scores partial solutions too — what step-level search needs.
    Verifier    the task's verifier (`task.score`, needs the row's answer). It knows the right answer, so a
                strategy scored by it is an ORACLE: an upper bound for the table, never a test-time method.

Why min by default: a solution is only as good as its worst step (Lightman et al. 2023 use the product, which
also punishes length; Snell et al. 2024, arXiv:2408.03314, find the last step's score works well for search).
Worked example: step scores [0.9, 0.2, 0.8] → min 0.2, product 0.144, last 0.8.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Protocol

import torch

from posttrain.data.process import step_example
from posttrain.errors import ConfigError, UserError
from posttrain.rewards.model import load_head_model, load_reward_model
from posttrain.rewards.process import step_logits
from posttrain.search.policy import STEP_SEPARATOR, steps_of

AGGREGATES: dict[str, Callable[[list[float]], float]] = {
    "min": min,
    "product": math.prod,
    "last": lambda scores: scores[-1],
}


class Scorer(Protocol):
    name: str
    oracle: bool         # True: it reads the reference answer (upper-bound rows only)
    probabilities: bool  # True: scores are in [0, 1]; False: real-valued (σ maps them to weights and values)

    def scores(self, problem: dict, completions: list[str]) -> list[float]: ...


def probability(score: float) -> float:
    """σ(score): an outcome RM's logit as a weight in (0, 1), for weighted voting and MCTS values.
    Example: probability(0.0) = 0.5, probability(2.0) ≈ 0.881."""
    return 1.0 / (1.0 + math.exp(-score)) if score >= 0 else math.exp(score) / (1.0 + math.exp(score))


class OutcomeRM:
    """An outcome reward model's score of each whole completion (a real number; higher is better).

    reward: a rewards.ModelReward (rewards.load_reward_model(dir) loads one). An unscorable completion (NaN
    score) gets -inf, so it is never chosen.
    """

    name, oracle, probabilities = "reward model", False, False

    def __init__(self, reward):
        self.reward = reward

    def scores(self, problem: dict, completions: list[str]) -> list[float]:
        prompts = [problem["prompt"]] * len(completions)
        rows = [{k: v for k, v in problem.items() if k != "prompt"}] * len(completions)
        return [o.value if o.value is not None else -math.inf
                for o in self.reward.outcomes(prompts, completions, rows)]


class ProcessRM:
    """A process reward model: σ(z) per step of a (partial) solution, aggregated into one score in [0, 1].

    model: AutoModelForTokenClassification (num_labels 1) from `posttrain rm reward.mode=prm`; tokenizer: its
    tokenizer. aggregate: "min" | "product" | "last". A completion with no step (empty text) scores 0.0.
    Solutions are tokenized as in training (data.process.step_example) and scored in batches of batch_size by
    the function the training loop reads them with (rewards.process.step_logits).
    """

    oracle, probabilities = False, True

    def __init__(self, model, tokenizer, *, aggregate: str = "min", use_chat_template: bool | None = None,
                 batch_size: int = 32):
        if aggregate not in AGGREGATES:
            raise ConfigError(f"search.prm_aggregate = {aggregate!r} is not one of {', '.join(AGGREGATES)}")
        self.model, self.tokenizer, self.aggregate = model.eval(), tokenizer, aggregate
        self.use_chat_template, self.batch_size = use_chat_template, batch_size
        self.name = f"PRM ({aggregate})"

    @torch.no_grad()
    def step_scores(self, prompt, solutions: list[list[str]]) -> list[list[float]]:
        """σ(z) of every step of each solution (lists of step texts) → one list per solution."""
        out: list[list[float]] = [[] for _ in solutions]
        todo = [i for i, steps in enumerate(solutions) if steps]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            examples = [step_example(prompt, solutions[i], self.tokenizer, separator=STEP_SEPARATOR,
                                     use_chat_template=self.use_chat_template) for i in chunk]
            logits, _, solution = step_logits(self.model, examples, self.tokenizer.pad_token_id)
            for i, z in zip(solution.tolist(), torch.sigmoid(logits).tolist()):
                out[chunk[i]].append(z)
        return out

    def scores(self, problem: dict, completions: list[str]) -> list[float]:
        per_step = self.step_scores(problem["prompt"], [steps_of(c) for c in completions])
        return [AGGREGATES[self.aggregate](s) if s else 0.0 for s in per_step]


class Verifier:
    """The task's verifier as a scorer: 1.0 right, 0.0 wrong or unscorable. An oracle (it reads the answer)."""

    name, oracle, probabilities = "verifier (oracle)", True, True

    def __init__(self, score: Callable[..., float | None]):
        self.score = score

    def scores(self, problem: dict, completions: list[str]) -> list[float]:
        row = {k: v for k, v in problem.items() if k != "prompt"}
        return [self.score(problem["prompt"], c, **row) or 0.0 for c in completions]


# ---- loading ---------------------------------------------------------------------------------------------------------

def load_outcome_rm(path: str | Path, field: str = "reward_model") -> OutcomeRM:
    """An OutcomeRM from a `posttrain rm` run directory (or its final/). Errors name `field` and the fix."""
    if not Path(path).exists():
        raise ConfigError(f"{field} = {str(path)!r} does not exist — fix: pass the run directory of `posttrain rm` "
                          "(or its final/), or leave it unset")
    try:
        return OutcomeRM(load_reward_model(path))
    except UserError as e:
        raise ConfigError(f"{field}: {e}") from None


def load_prm(path: str | Path, *, aggregate: str = "min", field: str = "prm") -> ProcessRM:
    """A ProcessRM from a `posttrain rm reward.mode=prm` run directory (or its final/): a full model whose
    config says …ForTokenClassification, or a LoRA adapter of task type TOKEN_CLS on its base."""
    fix = "pass the run directory of `posttrain rm reward.mode=prm` (or its final/), or leave it unset"
    if not Path(path).exists():
        raise ConfigError(f"{field} = {str(path)!r} does not exist — fix: {fix}")
    try:
        model, tokenizer = load_head_model(path, "token", fix)
    except UserError as e:
        raise ConfigError(f"{field}: {e}") from None
    return ProcessRM(model, tokenizer, aggregate=aggregate)

__all__ = ["AGGREGATES", "OutcomeRM", "ProcessRM", "Scorer", "Verifier", "load_outcome_rm", "load_prm",
           "probability"]
