"""Plumbing every training loop shares: run directory, data order, optimizer and schedule, the non-finite
guard, checkpoints and the final model. The loops (`sft.py`, `reward.py`, `preference.py`, `rl.py` …) compose
these; the math lives in `algos/`, the forward passes in `models/logits.py`.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch

from posttrain import checkpoint, distributed, tasks
from posttrain.config import to_dict
from posttrain.data import load_rows
from posttrain.errors import ConfigError, UserError
from posttrain.models.loading import count_parameters
from posttrain.run_dir import open_run, write_final
from posttrain.track import Tracker


# ---------------------------------------------------------------------------------------------------------------------
# Run directory
# ---------------------------------------------------------------------------------------------------------------------

def prepare_run_dir(cfg) -> tuple[Path, Path | None]:
    """Create, reopen or reuse the run directory and lock it (posttrain/run_dir.py has the rules). Returns
    (run_dir, checkpoint to resume from or None). Called only after config and data are validated, so a bad
    input never leaves a half-made run behind."""
    return open_run(cfg, command=type(cfg).__name__.removesuffix("Config").lower())


# ---------------------------------------------------------------------------------------------------------------------
# Data order: an endless stream of per-epoch permutations
# ---------------------------------------------------------------------------------------------------------------------

def task_and_problems(cfg) -> tuple[object | None, list[dict]]:
    """The built-in task, when it supplies data (no data.train_path / eval_path) or is scored, and the held-out
    problems scored for greedy accuracy at evaluation (see eval.task_accuracy)."""
    wanted = cfg.eval.task_accuracy if cfg.eval.task_accuracy is not None else cfg.data.train_path is None
    if cfg.data.train_path is not None and cfg.data.eval_path is not None and not wanted:
        return None, []
    task = tasks.from_config(cfg.task)
    problems = task.rows("eval", min(cfg.eval.num_samples, cfg.task.num_eval), cfg.seed) if wanted else []
    return task, problems


def train_and_eval_rows(cfg, task_rows) -> tuple[list[dict], list[dict] | None]:
    """Raw rows from data.train_path / data.eval_path, else from the task: task_rows(split, n, seed), e.g.
    `task.preference_rows`. No eval rows (None) when training on a user file without an eval file."""
    def from_file(path):
        return load_rows(path, columns=cfg.data.columns)

    train = from_file(cfg.data.train_path) if cfg.data.train_path is not None else \
        task_rows("train", cfg.task.num_train, cfg.seed)
    if cfg.data.eval_path is not None:
        return train, from_file(cfg.data.eval_path)
    if cfg.data.train_path is None:
        return train, task_rows("eval", cfg.task.num_eval, cfg.seed)
    return train, None


def batch_indices(step: int, global_batch: int, num_examples: int, seed: int) -> list[int]:
    """Example indices of optimizer step `step` (0-based).

    The stream is permutation(epoch 0) ++ permutation(epoch 1) ++ …, each permutation seeded by (seed, epoch);
    step s takes positions [s·G, (s+1)·G). The data position is therefore a pure function of the step: resume
    needs no iterator state, and any micro-batch × accumulation split of G sees the same examples.
    """
    return stream_indices(step * global_batch, global_batch, num_examples, seed)


def stream_indices(start: int, count: int, num_examples: int, seed: int) -> list[int]:
    """Example indices at positions [start, start + count) of the stream of per-epoch permutations."""
    out = []
    for position in range(start, start + count):
        epoch, offset = divmod(position, num_examples)
        out.append(_permutation(num_examples, seed, epoch)[offset])
    return out


_perm_cache: dict[tuple[int, int, int], list[int]] = {}


def _permutation(n: int, seed: int, epoch: int) -> list[int]:
    key = (n, seed, epoch)
    if key not in _perm_cache:
        if len(_perm_cache) > 4:
            _perm_cache.clear()
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        _perm_cache[key] = torch.randperm(n, generator=g).tolist()
    return _perm_cache[key]


def batch_plan(train_cfg, world_size: int = 1) -> tuple[int, int, int]:
    """(micro_batch_size, grad_accum, global_batch) for this many processes; refuses impossible arithmetic.

    global batch = micro_batch_size × grad_accum × world_size. With train.global_batch_size set, grad_accum is
    derived from it, so the same config gives the same optimizer steps on 1 or N processes.
    """
    micro = train_cfg.micro_batch_size
    if train_cfg.global_batch_size == 0:
        return micro, train_cfg.grad_accum, micro * train_cfg.grad_accum * world_size
    per_step = micro * world_size
    accum, remainder = divmod(train_cfg.global_batch_size, per_step)
    if accum == 0 or remainder:
        raise ConfigError(
            f"train.global_batch_size = {train_cfg.global_batch_size} is not a multiple of train.micro_batch_size "
            f"({micro}) × processes ({world_size}) = {per_step}" + (" (that would be zero accumulation steps)"
                                                                     if accum == 0 else "")
            + f" — set train.global_batch_size to a multiple of {per_step} or change train.micro_batch_size")
    return micro, accum, train_cfg.global_batch_size


def total_steps(train_cfg, num_examples: int, global_batch: int) -> int:
    """Optimizer steps of the run; refuses batch arithmetic that gives none."""
    if train_cfg.max_steps > 0:
        return train_cfg.max_steps
    steps = int(train_cfg.epochs * num_examples) // global_batch
    if steps < 1:
        raise ConfigError(
            f"{train_cfg.epochs} epoch(s) of {num_examples} examples at a global batch of {global_batch} "
            f"(train.micro_batch_size {train_cfg.micro_batch_size} × train.grad_accum × processes, or "
            "train.global_batch_size) gives zero optimizer steps — lower the batch, raise train.epochs, or set "
            "train.max_steps")
    return steps


# ---------------------------------------------------------------------------------------------------------------------
# Optimizer, schedule, precision
# ---------------------------------------------------------------------------------------------------------------------

def build_optimizer(model, train_cfg) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no weight decay on biases and norm weights (1-D tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": train_cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    # fused: one kernel for all parameters instead of a dozen small ops per tensor (CPU and CUDA alike)
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=train_cfg.lr,
                             betas=(train_cfg.adam_beta1, train_cfg.adam_beta2), fused=True)


class StepSchedule(torch.optim.lr_scheduler.LambdaLR):
    """A LambdaLR that counts training steps, not optimizer updates: it advances on a step the optimizer skipped
    (PPO's critic warm-up, a step whose advantages are all 0, a non-finite step), as intended — so torch's warning
    about an lr_scheduler.step() before the first optimizer.step() does not apply, and only it is hidden."""

    def step(self, epoch=None) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before "
                                    r"`optimizer\.step\(\)`", category=UserWarning)
            super().step(epoch)


def build_scheduler(optimizer, train_cfg, num_steps: int) -> StepSchedule:
    """Linear warmup to lr, then cosine or linear decay to lr·min_lr_ratio (or constant)."""
    warmup, floor = train_cfg.warmup_steps, train_cfg.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, num_steps - warmup))
        if train_cfg.schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if train_cfg.schedule == "linear":
            return floor + (1 - floor) * (1 - progress)
        return 1.0

    return StepSchedule(optimizer, factor)


def optimizer_step(model, optimizer, cfg, guard: "NonFiniteGuard", loss: float) -> float:
    """Clip the gradient norm (train.max_grad_norm; 0 = no clipping), step unless the step is bad — a non-finite
    loss or norm, or a norm above train.bad_grad_norm (the guard counts and eventually aborts) — and zero the
    gradients. Returns the pre-clip gradient norm."""
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else float("inf")
    grad_norm = distributed.local_tensor(torch.nn.utils.clip_grad_norm_(params, max_norm))
    if guard.ok(loss, grad_norm, bound=cfg.train.bad_grad_norm):
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm.item()


class TrainingDiverged(UserError, RuntimeError):
    """Too many bad steps in a row: the run stops before saving them (its last checkpoint is the last good one).
    The CLI reports it in one line and exits 2, like a user mistake: the fix is a setting."""


class NonFiniteGuard:
    """Skip a bad step — a non-finite loss or gradient norm, or a finite blow-up: a gradient norm above `bound`
    (train.bad_grad_norm) — and abort after `limit` in a row.

    A skipped step leaves the weights and optimizer state as they were. Aborting raises before any checkpoint is
    written, so the last checkpoint, saved after good steps only, stays intact and resumable.
    """

    def __init__(self, limit: int, state: dict | None = None):
        self.limit, self.in_a_row, self.skipped = limit, 0, 0
        if state:  # resumed: the counts go on from the checkpoint's, as if the run had not stopped
            self.in_a_row, self.skipped = state["in_a_row"], state["skipped"]

    def state_dict(self) -> dict:
        """The counts a checkpoint keeps (trainer_state.json's "guard")."""
        return {"in_a_row": self.in_a_row, "skipped": self.skipped}

    def ok(self, loss: torch.Tensor | float, grad_norm: torch.Tensor | float, bound: float = 0.0) -> bool:
        loss, grad_norm = float(loss), float(grad_norm)
        finite = math.isfinite(loss) and math.isfinite(grad_norm)
        if finite and not (bound > 0 and grad_norm > bound):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        self.skipped += 1
        if self.in_a_row >= self.limit:
            what = ("a non-finite loss or gradient" if not finite else
                    f"a gradient norm above train.bad_grad_norm={bound:g} (last {grad_norm:.4g})")
            raise TrainingDiverged(
                f"{self.in_a_row} consecutive steps had {what}; stopped without saving them; the last good "
                "checkpoint is intact (in output_dir). Fix: lower train.lr (or train.precision=fp32, or check the "
                "data), then continue with checkpoint.resume=true plus the changed setting in "
                "checkpoint.allow_changes, e.g. train.lr=1e-4 checkpoint.allow_changes=train.lr")
        return False


def start_training(cfg, model, world, run_dir, resume_from, num_steps: int, plan: tuple[int, int, int],
                   data_summary: str, unit: str = "examples"):
    """The part of setup every loop shares: wrap the model for cfg.train.strategy, build optimizer and scheduler,
    restore them on resume (or seed a fresh run), open the tracker and write the run's one-line summary.

    plan: (micro, accum, global) from batch_plan; data_summary: e.g. "900 training pairs (dropped 3 …)".
    Returns (model, optimizer, scheduler, start_step, tracker, guard): the NonFiniteGuard goes on with the
    checkpoint's counts.
    """
    micro, accum, global_batch = plan
    model = distributed.wrap(model.to(world.device).train(), world, cfg.train.strategy,
                             precision=cfg.train.precision, cpu_offload=cfg.train.fsdp_cpu_offload)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, num_steps)
    start_step, guard_state = 0, None
    if resume_from is not None:
        state = checkpoint.read_training_state(resume_from, optimizer=optimizer, scheduler=scheduler, model=model)
        start_step, guard_state = state["step"], state.get("guard")
        if start_step > num_steps:  # a shorter run than the checkpoint (train.epochs lowered): refuse, save nothing
            raise ConfigError(f"cannot resume {run_dir} at step {start_step}: the run now has {num_steps} steps — "
                              f"fix: train.max_steps={start_step} or more")
    else:
        torch.manual_seed(cfg.seed + world.rank)
    trainable, total = count_parameters(distributed.unwrap(model))
    tracker = Tracker(run_dir, total_steps=num_steps, start_step=start_step, report_to=cfg.log.report_to,
                      progress=cfg.log.progress, config=to_dict(cfg), active=world.is_main)
    tracker.write(f"{data_summary}; {num_steps} steps of {global_batch} {unit} ({micro} per micro-batch × {accum} "
                  f"accumulation × {world.world_size} process(es)); {trainable:,} of {total:,} parameters trainable"
                  + (f"; resuming at step {start_step}" if start_step else ""))
    return model, optimizer, scheduler, start_step, tracker, NonFiniteGuard(cfg.train.max_bad_steps, guard_state)


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints, the final model, the console line
# ---------------------------------------------------------------------------------------------------------------------

def save_checkpoint(run_dir: Path, step: int, model, optimizer, scheduler, guard: NonFiniteGuard, cfg) -> Path:
    """A checkpoint of a one-model loop (sft, rm, prm, distill): weights, optimizer, scheduler, RNGs, the step and
    the guard's counts."""
    return checkpoint.save(run_dir, step, lambda d: checkpoint.write_training_state(
        d, model=model, optimizer=optimizer, scheduler=scheduler, state={"step": step, "guard": guard.state_dict()}),
        keep_last=cfg.checkpoint.keep_last)


def save_final(run_dir: Path, model, tokenizer) -> Path:
    """RUN_DIR/final: the model (HF layout, or the PEFT adapter) and tokenizer, written atomically."""
    def write(directory: Path) -> None:
        distributed.save_pretrained(model, directory)  # every rank (gathering is collective), rank 0 writes
        if distributed.rank() == 0:
            tokenizer.save_pretrained(directory)

    return write_final(run_dir, write)


def format_metrics(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
