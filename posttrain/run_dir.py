"""The run directory: what makes a folder a posttrain run, who may use it, and when it may be replaced or reused.
Every training command (and `posttrain classic`) opens its output_dir with `open_run`.

    RUN_DIR/.posttrain-run   the marker, one JSON line {command, version, created}: this folder is a posttrain run
    RUN_DIR/.lock            an advisory lock (fcntl.flock) held by the live run, its PID inside; the kernel
                             releases it when the process exits or is killed
    RUN_DIR/config.yaml      the settings the run started with; a resume that changes some adds `resumed:` entries
    RUN_DIR/final/           the finished model, written atomically (`write_final`), by the LLM loops and classic

Rules (each refusal is a UserError naming the path, so the CLI exits with code 2):
- a folder that is not a posttrain run (no marker; for runs made before the marker, config.yaml together with
  metrics.jsonl or checkpoints/) is never written into or deleted, nor a file, `.`, `~`, `/` or a parent of `.`;
- a run in use by a live process is never touched: a second run, an overwrite or a resume names that PID;
- `overwrite=true` empties a run directory; a run whose earlier attempt stopped before its first step and never
  saved a checkpoint holds nothing worth keeping and is reused without it (only posttrain's own files removed);
- `checkpoint.resume=auto` resumes when a complete checkpoint exists, otherwise starts afresh in the directory;
- a resume compares the new config with the run's: settings that cannot change are refused, listed; durations,
  cadences and logging (and what checkpoint.allow_changes names) are applied and recorded in config.yaml.
Under torchrun rank 0 decides, locks and writes; the others receive its answer (or its error).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import yaml

from posttrain import __version__, checkpoint, config as C, distributed
from posttrain.errors import ConfigError, UserError

MARKER = ".posttrain-run"
LOCK = ".lock"
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
FINAL = "final"
# What posttrain writes into a run directory: all a reuse removes (other files stay where they are).
OWN_ENTRIES = (MARKER, CONFIG, METRICS, checkpoint.CHECKPOINTS, FINAL, FINAL + ".tmp", "tensorboard", "wandb",
               "plots", "reference_logps.safetensors", "prm_data.jsonl", "rationales.jsonl", "rationales_summary.json",
               "student")

# Settings a resumed run may change freely: how long it runs, how often it evaluates, logs and saves, how it
# reports, how many threads it uses, how many positions' logits it holds at once, its guard rails. (The invocation
# keys are not settings of the run at all.)
MAY_CHANGE = {"train.max_steps", "train.epochs", "total_steps", "rft.rounds", "eval.every", "eval.batch_size",
              "eval_every", "eval_episodes", "log.every", "log.report_to", "log.progress", "checkpoint.every",
              "checkpoint.keep_last", "threads", "train.max_bad_steps", "train.bad_grad_norm",
              "train.logits_chunk"}
INVOCATION = {"output_dir", "overwrite", "checkpoint.resume", "checkpoint.allow_changes"}
# Settings the checkpoint's weights and state are shaped by: no resume can change them.
FIXED = {"model.name_or_path", "model.init", "lora.r", "lora.target_modules", "algo", "algo.name", "algo.critic",
         "env", "dqn.hidden", "dqn.dueling", "pg.hidden", "pg.shared", "ppo.hidden", "ddpg.hidden", "ddpg.td3",
         "bc.hidden"}


def open_run(cfg, command: str = "") -> tuple[Path, Path | None]:
    """Create, reopen, replace or reuse cfg.output_dir by the rules above and lock it for this process.
    Returns (run_dir, checkpoint to resume from or None). Call it after config and data are validated."""
    outcome = None
    if distributed.rank() == 0:
        try:
            run_dir, resume_from = _open_run(cfg, command)
            outcome = ("ok", str(run_dir), str(resume_from) if resume_from else None)
        except UserError as e:
            outcome = ("error", str(e), None)
    kind, value, resume = distributed.broadcast_object(outcome)
    if kind == "error":
        raise UserError(value)
    return Path(value), Path(resume) if resume else None


def _open_run(cfg, command: str) -> tuple[Path, Path | None]:
    run_dir, mode = Path(cfg.output_dir), cfg.checkpoint.resume
    kind = classify(run_dir)  # before anything is written: a foreign folder is never touched, not even locked
    if kind == "file":
        raise UserError(f"output_dir {run_dir} is a file — fix: output_dir=DIR, a new or posttrain run directory")
    if kind == "foreign":
        what = "overwrite=true will not delete" if cfg.overwrite else "will not write into"
        raise UserError(f"output_dir {run_dir} holds files but is not a posttrain run (no {MARKER}); posttrain "
                        f"{what} it — fix: choose another output_dir, e.g. output_dir={run_dir / 'run'}")
    if mode is True and kind in ("absent", "empty"):
        raise UserError(f"checkpoint.resume=true but {run_dir} holds no run — fix: point output_dir at the run to "
                        "continue, or checkpoint.resume=auto to start one when there is none")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock(run_dir)
    kind = classify(run_dir)  # again, now that no other run can change it
    resume_from = checkpoint.latest(run_dir) if mode and kind == "run" else None
    if mode is True and resume_from is None:
        raise UserError(f"checkpoint.resume=true but {run_dir} has no complete checkpoint — fix: "
                        "checkpoint.resume=auto starts afresh when there is none; or point output_dir at the run")
    if resume_from is not None:
        changes = check_resume_config(cfg, run_dir, resume_from)
        if not (run_dir / MARKER).is_file():  # a run made before the marker existed
            write_marker(run_dir, command)
        if changes:
            record_changes(run_dir, checkpoint_step(resume_from), changes)
        return run_dir, resume_from
    if kind == "run":
        if cfg.overwrite:
            clear(run_dir, everything=True)
        elif mode == "auto" or not worth_keeping(run_dir):
            print(f"{run_dir}: no checkpoint yet — starting the run afresh in it", flush=True)
            clear(run_dir, everything=False)
        else:
            raise UserError(f"{run_dir} already holds a run — fix: checkpoint.resume=true to continue it, "
                            "overwrite=true to replace it, or choose another output_dir")
    try:
        write_marker(run_dir, command)
        C.save_yaml(cfg, run_dir / CONFIG)
    except OSError as e:  # a full disk: name the file (the CLI reports it in one line)
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise OSError(e.errno, f"no space left on device while writing {run_dir / CONFIG}", str(run_dir / CONFIG))
    return run_dir, None


# ---------------------------------------------------------------------------------------------------------------------
# What a folder is
# ---------------------------------------------------------------------------------------------------------------------

def classify(path: Path) -> str:
    """'absent', 'file', 'empty' (nothing but a lock), 'run' (a posttrain run) or 'foreign' (anything else)."""
    if not path.exists() and not path.is_symlink():
        return "absent"
    if not path.is_dir():
        return "file"
    names = {p.name for p in path.iterdir()} - {LOCK}
    if not names:
        return "empty"
    if MARKER in names or (CONFIG in names and (METRICS in names or checkpoint.CHECKPOINTS in names)):
        return "run"
    return "foreign"


def worth_keeping(run_dir: Path) -> bool:
    """A run holds something worth keeping once it has a checkpoint, a final model, a metrics line past step 0 or a
    teacher's rationales (distill.mode=cot); an attempt that failed before its first step (bad LoRA targets, an
    unscorable first batch …) holds none. Anything unexpected (no marker: a run of an older version; an unreadable
    metrics line) counts as worth keeping."""
    if (not (run_dir / MARKER).is_file() or checkpoint.latest(run_dir) is not None or (run_dir / "final").exists()
            or (run_dir / "rationales.jsonl").exists()):
        return True
    metrics = run_dir / METRICS
    if not metrics.is_file():
        return False
    for line in metrics.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            if json.loads(line)["step"] > 0:
                return True
        except (ValueError, KeyError, TypeError):
            return True
    return False


def clear(run_dir: Path, everything: bool) -> None:
    """Empty a run directory (everything: all but the lock this process holds; else only posttrain's own files).
    Refuses the current directory, a parent of it, the home directory and the root, whatever they hold."""
    resolved, cwd, home = run_dir.resolve(), Path.cwd().resolve(), Path.home().resolve()
    if resolved == Path(resolved.anchor) or resolved == home or resolved == cwd or resolved in cwd.parents:
        raise UserError(f"refusing to delete the contents of {run_dir} (the current, home or root directory or a "
                        "parent of it) — fix: choose a dedicated output_dir, e.g. output_dir=runs/NAME")
    for entry in run_dir.iterdir():
        own = entry.name in OWN_ENTRIES or entry.name.startswith(("final", "round_"))
        if entry.name == LOCK or not (everything or own):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def write_marker(run_dir: Path, command: str) -> None:
    record = {"command": command, "version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (run_dir / MARKER).write_text(json.dumps(record) + "\n")


def write_final(run_dir: Path, write: Callable[[Path], None]) -> Path:
    """RUN_DIR/final, written atomically: `write(directory)` fills final.tmp/, which then replaces final/
    (checkpoint.replace_dir), so a kill mid-write leaves the previous final/ or none, never half of one. Every
    loop's finished model goes through here: the LLM loops' weights and tokenizer, the classic networks."""
    final = Path(run_dir) / FINAL
    checkpoint.replace_dir(final.with_name(FINAL + ".tmp"), final, write)
    return final


# ---------------------------------------------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------------------------------------------

_held: dict[str, int] = {}  # resolved run dir → the descriptor whose open file holds its lock


def lock(run_dir: Path) -> None:
    """Take RUN_DIR/.lock for this process (again: a no-op). The lock belongs to the open file, so the kernel
    releases it when the process ends, however it ends; a live holder's PID is named in the refusal."""
    key = str(run_dir.resolve())
    if key in _held:
        return
    fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise UserError(f"{run_dir} is in use by a running posttrain process (PID {holder}) — fix: wait for it to "
                        f"end or stop it (kill {holder}), or choose another output_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = fd


def release(run_dir: Path | None = None) -> None:
    """Give up this process's lock on run_dir (None: on every run directory), e.g. when a command returns."""
    keys = list(_held) if run_dir is None else [str(Path(run_dir).resolve())]
    for key in keys:
        fd = _held.pop(key, None)
        if fd is not None:
            os.close(fd)  # closing the last descriptor of the open file releases the lock


def _forget_in_child() -> None:
    """A forked child (a data or reward worker) shares the parent's open lock files; it closes its copies, so
    the lock lives exactly as long as the process that took it."""
    for fd in _held.values():
        try:
            os.close(fd)
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


# ---------------------------------------------------------------------------------------------------------------------
# Resume: the new config against the run's
# ---------------------------------------------------------------------------------------------------------------------

def checkpoint_step(checkpoint_dir: Path) -> int | None:
    """The step a checkpoint was written at (trainer_state.json of the LLM loops, state.json of classic runs)."""
    for name, key in (("trainer_state.json", "step"), ("state.json", "step"), ("trainer_state.json", "round")):
        path = checkpoint_dir / name
        if path.is_file():
            value = json.loads(path.read_text()).get(key)
            if isinstance(value, int):
                return value
    return None


def check_resume_config(cfg, run_dir: Path, resume_from: Path) -> dict[str, tuple]:
    """Compare cfg with the run's settings (config.yaml with its recorded changes). Returns the permitted
    changes {key: (old, new)}; raises UserError listing every change a resume cannot make, or a duration
    shorter than the steps already done."""
    paths = C.field_paths(type(cfg))
    for key in cfg.checkpoint.allow_changes:
        if key not in paths:
            raise C.unknown_key_error(key, list(paths), "checkpoint.allow_changes")
        if key in FIXED:
            raise ConfigError(f"checkpoint.allow_changes: {key} can never change on resume (the checkpoint is "
                              "shaped by it) — fix: start a new run in another output_dir")
    stored_file = run_dir / CONFIG
    stored = C.apply_resumed(yaml.safe_load(stored_file.read_text()) or {}) if stored_file.is_file() else {}
    new = C.to_dict(cfg)
    allowed, refused = {}, []
    for key in paths:
        if key in INVOCATION:
            continue
        found, old = _lookup(stored, key)
        value = _lookup(new, key)[1]
        if not found or old == value:
            continue
        if key in MAY_CHANGE or (key in cfg.checkpoint.allow_changes and key not in FIXED):
            allowed[key] = (old, value)
        else:
            refused.append(key)
    if refused:
        listed = ", ".join(f"{k} {_show(_lookup(stored, k)[1])} → {_show(_lookup(new, k)[1])}" for k in refused)
        lora = ("; a LoRA run cannot continue a full fine-tune (or the reverse): lora.r is fixed by the checkpoint"
                if "lora.r" in refused else "")
        changeable = [k for k in refused if k not in FIXED]
        hint = (f", or allow them: checkpoint.allow_changes={','.join(changeable)}" if changeable else "")
        raise UserError(f"cannot resume {run_dir}: these settings differ from the run's ({stored_file}): {listed}"
                        f"{lora} — fix: keep the run's values (-c {stored_file} checkpoint.resume=true){hint}, "
                        "or start a new run in another output_dir")
    _check_duration(cfg, run_dir, resume_from)
    return allowed


def _check_duration(cfg, run_dir: Path, resume_from: Path) -> None:
    done = checkpoint_step(resume_from)
    train = getattr(cfg, "train", None)
    key, limit = ("train.max_steps", train.max_steps) if train is not None else ("total_steps", cfg.total_steps)
    if (resume_from / "trainer_state.json").is_file() and "round" in json.loads(
            (resume_from / "trainer_state.json").read_text()):
        key, limit = "rft.rounds", cfg.rft.rounds
    if done is not None and 0 < limit < done:
        raise UserError(f"cannot resume {run_dir} with {key}={limit}: its checkpoint is at step {done} already — "
                        f"fix: {key}={done} or more (the run ends at {done} with {key}={done})")


def record_changes(run_dir: Path, step: int | None, changes: dict[str, tuple]) -> None:
    """Append {step, changes} to config.yaml's `resumed:` list (the settings above it stay the run's first ones)."""
    path = run_dir / CONFIG
    values = yaml.safe_load(path.read_text()) or {}
    values.setdefault("resumed", [])
    values["resumed"] = (values["resumed"] or []) + [
        {"step": step, "changes": {k: {"from": old, "to": new} for k, (old, new) in changes.items()}}]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(values, sort_keys=False))
    os.replace(tmp, path)
    print(f"resuming at step {step} with changed settings: "
          + ", ".join(f"{k} {_show(old)} → {_show(new)}" for k, (old, new) in changes.items()), flush=True)


def _lookup(values: dict, key: str) -> tuple[bool, object]:
    node = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _show(value) -> str:
    if value is None:
        return "unset"
    return json.dumps(value) if isinstance(value, (str, list, dict)) else str(value)
