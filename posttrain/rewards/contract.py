"""The reward contract: what a source returns, how a step's sources are added up, and the step's reward metrics.

A reward function is `fn(prompt, completion, **row) -> float | None`, where `row` is the sample's dataset row
without its prompt (e.g. `answer=`), and None means "could not be scored". A sample that cannot be scored is not a
zero reward: it is left out of baselines, gets advantage 0, and is counted.

Why a sample can be unscorable — `ScoredBatch.failures` counts each reason (once per source that failed):

    exception  the function raised, returned a non-number, or its worker process died
    none       the function returned None
    nan        it returned NaN or ±inf (a reward model's NaN score too)
    timeout    a user function took longer than timeout_s; its worker was killed and restarted

torch is imported inside the functions that need it: the user-code worker (worker.py) imports this module, and
without torch it starts in a fraction of a second instead of several — which matters each time a hang restarts it.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from posttrain.errors import UserError

if TYPE_CHECKING:
    import torch

FAILURE_REASONS = ("exception", "none", "nan", "timeout")


class Outcome(NamedTuple):
    """One sample's result from one source: a finite value, or None with the reason (a FAILURE_REASONS key) and
    a short description for error messages ("ZeroDivisionError: division by zero (line 3)")."""

    value: float | None
    reason: str | None = None
    detail: str = ""


def outcome_of(value) -> Outcome:
    """Classify what a reward function returned: a finite number (int, float, numpy or one-element torch scalar),
    or a failure — None → "none"; NaN/±inf → "nan"; anything else (a string, a list …) → "exception".

    >>> outcome_of(1), outcome_of(None).reason, outcome_of(float("inf")).reason, outcome_of("1.0").reason
    (Outcome(value=1.0, reason=None, detail=''), 'none', 'nan', 'exception')
    """
    if value is None:
        return Outcome(None, "none", "returned None")
    try:
        if isinstance(value, (str, bytes)):  # float("1.5") would parse it; a reward must be a number
            raise TypeError
        number = float(value)
    except Exception:
        return Outcome(None, "exception", f"returned {short_repr(value)} ({type(value).__name__}), not a number")
    if not math.isfinite(number):
        return Outcome(None, "nan", f"returned {number}")
    return Outcome(number)


def short_repr(value, limit: int = 60) -> str:
    """repr(value), cut to `limit` characters with "…" (for error messages)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def describe_error(e: BaseException, path: str | None = None) -> str:
    """"KeyError: 'answer' (line 4)": the exception and, when known, the line of `path` it came from."""
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    lines = [frame.lineno for frame in traceback.extract_tb(e.__traceback__) if path and frame.filename == path]
    return text + (f" (line {lines[-1]})" if lines else "")


def row_kwargs(row: dict) -> dict:
    """The row as keyword arguments: without `prompt` and `completion`, which are passed as the sample's own."""
    return {k: v for k, v in row.items() if k not in ("prompt", "completion")}


# ---------------------------------------------------------------------------------------------------------------------
# A step's rewards: the weighted sum of the sources, what could not be scored, and metrics
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class ScoredBatch:
    """The rewards of a step's B samples.

    rewards     [B] float32  Σ weight × value over the sources; 0 where the sample is unscored
    scored      [B] bool     every source scored the sample (one failure makes it unscored overall)
    per_source  name → [B] float32 raw values of that source (before weighting), NaN where it failed
    failures    reason → count, every FAILURE_REASONS key present; one count per (source, sample) failure
    first_error reason → where it first happened, e.g. "source 'my_reward', sample 3: KeyError: 'answer' (line 4)"
    """

    rewards: torch.Tensor
    scored: torch.Tensor
    per_source: dict[str, torch.Tensor]
    failures: dict[str, int]
    first_error: dict[str, str] = field(default_factory=dict)

    @property
    def unscored_fraction(self) -> float:
        n = self.scored.numel()
        return 0.0 if n == 0 else 1.0 - self.scored.float().mean().item()


def score_all(sources: list[tuple[object, float]], prompts: list[str], completions: list[str],
              rows: list[dict]) -> ScoredBatch:
    """Score every sample with every source and add the values with their weights.

    sources: (source, weight) pairs; a source has `name` and `score(prompts, completions, rows)` (better, the
    `outcomes(...)` of the classes here, which say why a sample failed). rows[i] is sample i's dataset row.

    Example: sources a (weight 0.5) and b (weight 2); a scores [1, 4], b scores [3, None]:
        rewards [0.5·1 + 2·3, 0] = [6.5, 0], scored [True, False], per_source {a: [1, 4], b: [3, nan]},
        failures {"none": 1, ...}
    """
    import torch

    n = len(prompts)
    if len(completions) != n or len(rows) != n:
        raise ValueError(f"score_all: {n} prompts, {len(completions)} completions and {len(rows)} rows; one each per "
                         "sample")
    if not sources:
        raise ValueError("score_all needs at least one (source, weight)")
    names = [source.name for source, _ in sources]
    if len(set(names)) != len(names):
        raise UserError(f"two reward sources share a name ({', '.join(names)}); their metrics would collide — fix: "
                        "give each source its own name")
    total = [0.0] * n
    scored = [True] * n
    per_source, failures, first_error = {}, dict.fromkeys(FAILURE_REASONS, 0), {}
    for source, weight in sources:
        outcomes = _outcomes(source, prompts, completions, rows)
        for i, outcome in enumerate(outcomes):
            if outcome.value is None:
                scored[i] = False
                failures[outcome.reason] += 1
                first_error.setdefault(outcome.reason, f"source '{source.name}', sample {i}: {outcome.detail}")
            else:
                total[i] += weight * outcome.value
        per_source[source.name] = torch.tensor([math.nan if o.value is None else o.value for o in outcomes],
                                               dtype=torch.float32)
    rewards = torch.tensor([t if ok else 0.0 for t, ok in zip(total, scored)], dtype=torch.float32)
    return ScoredBatch(rewards, torch.tensor(scored, dtype=torch.bool), per_source, failures, first_error)


def _outcomes(source, prompts, completions, rows) -> list[Outcome]:
    """The source's outcomes, checked to be one per sample (a wrong count is the source's bug: a hard error)."""
    if hasattr(source, "outcomes"):
        outcomes = source.outcomes(prompts, completions, rows)
    else:  # any object with the plain contract: classify what it returned
        outcomes = [outcome_of(v) for v in source.score(prompts, completions, rows)]
    if len(outcomes) != len(prompts):
        raise UserError(f"reward source '{source.name}' returned {len(outcomes)} values for {len(prompts)} samples — "
                        "fix: return exactly one value (or None) per completion, in order")
    return outcomes


def reward_metrics(batch: ScoredBatch) -> dict[str, float]:
    """Metrics of a step's rewards, with stable names:

        reward/mean, reward/std, reward/min, reward/max     over the scored samples (std divides by n)
        reward/<source>/mean, …/std, …/min, …/max           each source's raw values where it scored — always,
                                                            also for one source (its weight may differ from 1)
        reward/unscored_frac                                unscored samples ÷ B
        reward/failures/<reason>                            counts, every reason (0 when none)

    The statistics are left out when there is nothing to compute them over (no NaN in metrics.jsonl).
    Example: rewards [1, 0, 3, 2] with sample 1 unscored → mean 2, std √(2/3) ≈ 0.816, min 1, max 3,
    unscored_frac 0.25.
    """
    metrics = _stats("reward", batch.rewards[batch.scored])
    for name, values in batch.per_source.items():
        metrics.update(_stats(f"reward/{name}", values[~values.isnan()]))
    metrics["reward/unscored_frac"] = batch.unscored_fraction
    metrics.update({f"reward/failures/{reason}": float(count) for reason, count in batch.failures.items()})
    return metrics


def _stats(prefix: str, values: torch.Tensor) -> dict[str, float]:
    if values.numel() == 0:
        return {}
    v = values.double()
    return {f"{prefix}/mean": v.mean().item(), f"{prefix}/std": v.std(correction=0).item(),
            f"{prefix}/min": v.min().item(), f"{prefix}/max": v.max().item()}


# ---------------------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------------------

class RewardSource:
    """What every source provides: `name`, `outcomes(...)` (why a sample failed) and `score(...)` (the plain
    contract); sources that hold resources (a worker process) release them in `close()` / a `with` block."""

    name: str

    def outcomes(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[Outcome]:
        raise NotImplementedError

    def score(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[float | None]:
        """One value per sample, None where it could not be scored."""
        return [outcome.value for outcome in self.outcomes(prompts, completions, rows)]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VerifierReward(RewardSource):
    """A trusted function called in this process, e.g. the built-in task's `score(prompt, completion, answer=…)`.

    Trusted means it needs no timeout, not that it cannot fail: an exception or a NaN makes that sample unscored
    (counted) instead of ending the run.
    """

    def __init__(self, fn, name: str = "verifier"):
        self.fn, self.name = fn, name

    def outcomes(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[Outcome]:
        out = []
        for prompt, completion, row in zip(prompts, completions, rows):
            try:
                value = self.fn(prompt, completion, **row_kwargs(row))
            except Exception as e:
                out.append(Outcome(None, "exception", describe_error(e)))
                continue
            out.append(outcome_of(value))
        return out
