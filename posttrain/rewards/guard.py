"""The unscorable guard: a run whose reward is broken stops, instead of training on noise.

    guard = UnscorableGuard(cfg.reward.max_unscored_fraction)
    guard.check(score_all(sources, prompts, completions, rows), step)   # UserError when too much is unscorable
"""

from __future__ import annotations

from posttrain.errors import ConfigError, UserError
from posttrain.rewards.contract import ScoredBatch


class UnscorableGuard:
    """Stop the run when a step has too many unscorable samples (default: more than half).

    A few unscorable samples are normal (a completion with no answer in it). Most of a step failing means the reward
    itself is broken — a typo in a column name, a crash, a hang — and training on what is left would be training on
    noise, so the run stops with the counts by reason and the first error.
    """

    def __init__(self, max_fraction: float = 0.5):
        if not 0.0 <= max_fraction <= 1.0:
            raise ConfigError(f"reward.max_unscored_fraction must be between 0 and 1, got {max_fraction}")
        self.max_fraction = max_fraction

    def check(self, batch: ScoredBatch, step: int) -> None:
        """Raise UserError when the unscored fraction of `batch` is above max_fraction (at it is fine)."""
        fraction = batch.unscored_fraction
        if fraction <= self.max_fraction:
            return
        total = batch.scored.numel()
        unscored = total - int(batch.scored.sum())
        counts = ", ".join(f"{reason} {n}" for reason, n in batch.failures.items() if n)
        first = "; ".join(f"first {reason}: {where}" for reason, where in batch.first_error.items())
        raise UserError(
            f"step {step}: {unscored} of {total} samples ({fraction:.0%}) could not be scored, more than "
            f"reward.max_unscored_fraction = {self.max_fraction} (failures: {counts}; {first}) — fix: look at the "
            "reward function (call it by hand on a few prompts and completions: a wrong column name, an exception "
            "or a hang shows at once), raise reward.timeout_s if it is just slow, or raise "
            "reward.max_unscored_fraction if many unscorable samples are expected")
