"""The bookkeeping every training loop does at the end of a step and after its last one, written once.

A loop keeps its own `for step in range(start_step, num_steps):` and its own algorithm (batching, forward,
backward, the optimizer step, its metrics); at the end of each step it hands the metrics to a `StepEnd`:

    end = StepEnd(cfg, num_steps, tracker, guard, save=lambda step: save_checkpoint(run_dir, step, ...),
                  evaluate=lambda: evaluate(model, ...))
    for step in range(start_step, num_steps):
        ...                                   # the algorithm; metrics = {...}
        end.step(step + 1, metrics)           # skipped_steps, eval, log, progress, checkpoint
    return end.finish(metrics, run_dir, model, tokenizer, world.is_main, shown=("loss",))

The order inside a step is fixed, because metrics.jsonl writes keys in insertion order and a resumed run must
write the same lines as an uninterrupted one: skipped_steps (when the guard skipped any), then the eval metrics
(when eval is due), then the log line (when logging is due), then the progress bar, then the checkpoint.

Worked cadence: num_steps 5, eval.every 2, log.every 2, checkpoint.every 2 → eval after steps 2, 4, 5; a line
logged after 2, 4, 5; checkpoints after 2 and 4 (step 5 is the final checkpoint, written by `finish`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from posttrain.train.common import NonFiniteGuard, format_metrics, save_final


def eval_due(cfg, done: int, num_steps: int) -> bool:
    """Evaluate after `done` steps? After the last step, and every cfg.eval.every steps (0 = only at the end)."""
    return done == num_steps or bool(cfg.eval.every and done % cfg.eval.every == 0)


def log_due(cfg, done: int, num_steps: int) -> bool:
    """Write a metrics line after `done` steps? Every cfg.log.every steps, and after the last step."""
    return done % cfg.log.every == 0 or done == num_steps


def checkpoint_due(cfg, done: int, num_steps: int) -> bool:
    """Save a checkpoint after `done` steps? Every cfg.checkpoint.every steps (0 = never) before the last one; the
    last step's checkpoint is the final one, written by StepEnd.finish."""
    return bool(cfg.checkpoint.every and done % cfg.checkpoint.every == 0 and done < num_steps)


class StepEnd:
    """The end of every training step, and the outputs after the last one.

    save: save(step) writes the loop's checkpoint (each loop saves different state: a reference model, a critic);
    evaluate: evaluate() → the eval metrics, or None when the loop has nothing to evaluate on.
    """

    def __init__(self, cfg, num_steps: int, tracker, guard: NonFiniteGuard, save: Callable[[int], object],
                 evaluate: Callable[[], dict] | None = None):
        self.cfg, self.num_steps, self.tracker, self.guard = cfg, num_steps, tracker, guard
        self.save, self.evaluate = save, evaluate

    def step(self, done: int, metrics: dict) -> dict:
        """After `done` steps (1-based): add skipped_steps, evaluate when due, log when due, advance the progress
        bar, checkpoint when due. Updates `metrics` in place and returns it."""
        if self.guard.skipped:
            metrics["skipped_steps"] = self.guard.skipped
        if self.evaluate is not None and eval_due(self.cfg, done, self.num_steps):
            metrics.update(self.evaluate())
        if log_due(self.cfg, done, self.num_steps):
            self.tracker.log(done, metrics)
        self.tracker.advance()
        if checkpoint_due(self.cfg, done, self.num_steps):
            self.save(done)
        return metrics

    def finish(self, metrics: dict, run_dir: Path, model, tokenizer, is_main: bool, shown: tuple[str, ...],
               what: str = "model") -> dict:
        """After the last step: close the tracker, write the final checkpoint and RUN_DIR/final, and print the
        `done:` line (the `shown` keys and every eval/ metric). Returns `metrics`."""
        self.tracker.close()
        self.save(self.num_steps)
        save_final(run_dir, model, tokenizer)
        if is_main:
            line = {k: v for k, v in metrics.items() if k in shown or k.startswith("eval/")}
            print(f"done: {format_metrics(line)} — {what} in {run_dir / 'final'}", flush=True)
        return metrics
