"""Atomic checkpoints, a `latest` pointer, rotation, and exact resume.

Layout of a run directory:

    RUN_DIR/checkpoints/step_000100/    model/ (HF or PEFT layout, safetensors, consolidated), optimizer.pt
                                        (or optimizer/, sharded by torch.distributed.checkpoint under FSDP),
                                        scheduler.pt, rng.pt / rng_rankN.pt (python, numpy, torch and named
                                        generators, per process), trainer_state.json
    RUN_DIR/checkpoints/latest          text file naming the newest complete step directory

Write protocol (a kill at any instant leaves the previous checkpoint loadable and `latest` pointing at it):
write everything into `step_N.tmp/`, fsync the files, rename to `step_N/` (atomic on POSIX), fsync the parent,
replace `latest` atomically, and only then remove checkpoints beyond `keep_last`. Re-saving a step that exists
sets the old copy aside as `step_N.old` until the new one is in place, so `latest` never names nothing.
Nothing is unpickled from outside: tensors are safetensors, the rest loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from posttrain import distributed

CHECKPOINTS = "checkpoints"
LATEST = "latest"


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def save(run_dir: Path, step: int, write: Callable[[Path], None], keep_last: int) -> Path:
    """Write one checkpoint atomically. `write(directory)` fills the (temporary) step directory.

    With several processes every rank calls this and writes its part; rank 0 alone moves `latest` and rotates.
    """
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_dir_name(step)
    replace_dir(root / (final.name + ".tmp"), final, write)
    if distributed.rank() == 0:
        _write_atomic(root / LATEST, final.name + "\n")
        _rotate(root, keep_last, keep=final.name)
    distributed.barrier()
    return final


def replace_dir(tmp: Path, final: Path, write: Callable[[Path], None]) -> None:
    """Fill `tmp` with `write(tmp)`, flush it to disk, then rename it to `final`.

    An existing `final` (e.g. the final save of a step just saved periodically) is renamed aside to `final.old`
    first and removed last, so at every instant a complete copy is at `final` or at `final.old` (`latest()`
    and rotation know the second). Every rank calls `write` (barriers around it); rank 0 prepares `tmp` and
    renames. A full disk raises OSError(ENOSPC) naming `final`, with the partial `tmp` removed.
    """
    main = distributed.rank() == 0
    if main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a process killed mid-write
        tmp.mkdir(parents=True)
    distributed.barrier()
    try:
        write(tmp)
        distributed.barrier()
        if main:
            _fsync_tree(tmp)
    except Exception as e:
        if not _disk_full(e, tmp):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError(errno.ENOSPC, f"no space left on device while writing {final}", str(final)) from e
    if main:
        old = final.with_name(final.name + ".old")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(final, old)
        os.rename(tmp, final)
        _fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None: the step directory `latest` names; if it is missing
    (a crash while it was being re-saved), its complete old copy `step_N.old`, else the newest step directory."""
    root = Path(run_dir) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        for candidate in (path, path.with_name(path.name + ".old")):
            if path.name and candidate.is_dir():
                return candidate
    complete = sorted((p for p in root.glob("step_*") if p.is_dir() and _step_of(p) is not None), key=_step_of)
    return complete[-1] if complete else None


def _step_of(path: Path) -> int | None:
    """N for step_N and step_N.old (a complete copy set aside), None for a torn step_N.tmp."""
    name = path.name.removesuffix(".old")
    digits = name.removeprefix("step_")
    return int(digits) if name.startswith("step_") and digits.isdigit() else None


# ---------------------------------------------------------------------------------------------------------------------
# What a training checkpoint holds
# ---------------------------------------------------------------------------------------------------------------------

def write_training_state(directory: Path, *, model, optimizer, scheduler, state: dict,
                         generators: dict[str, torch.Generator] | None = None) -> None:
    """Model (save_pretrained: HF layout, or PEFT adapter), optimizer, scheduler, every RNG, loop state.

    Called on every rank. The model is consolidated (FSDP: gathered) and written by rank 0; a sharded (FSDP)
    optimizer is written by every rank with torch.distributed.checkpoint; RNG state is per rank.
    """
    rank = distributed.rank()
    distributed.save_pretrained(model, directory / "model")
    if rank == 0:
        torch.save(scheduler.state_dict(), directory / "scheduler.pt")
        state = {**state, "world_size": distributed.world_size()}
        (directory / "trainer_state.json").write_text(json.dumps(state, indent=2))
    if distributed.is_fsdp(model):
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=directory / "optimizer")
    elif rank == 0:
        torch.save(optimizer.state_dict(), directory / "optimizer.pt")
    torch.save(rng_state(generators), directory / _rng_file(rank))


def read_training_state(directory: Path, *, optimizer, scheduler, model=None,
                        generators: dict[str, torch.Generator] | None = None) -> dict:
    """Restore optimizer, scheduler and RNGs from a checkpoint; return the loop state. (The model is loaded
    from `directory/model` by the caller, since how depends on full vs LoRA training.)"""
    if (directory / "optimizer").is_dir():  # sharded (FSDP): every rank reads its part, resharding if needed
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
        target = {"optimizer": get_optimizer_state_dict(model, optimizer)}
        dcp.load(target, checkpoint_id=directory / "optimizer")
        set_optimizer_state_dict(model, optimizer, target["optimizer"])
    else:
        optimizer.load_state_dict(torch.load(directory / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=True))
    rng_file = directory / _rng_file(distributed.rank())
    if rng_file.is_file():  # absent when resuming on more processes than wrote the checkpoint
        set_rng_state(torch.load(rng_file, weights_only=True), generators)
    return json.loads((directory / "trainer_state.json").read_text())


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict:
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": [version, list(mt), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss],
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }


def set_rng_state(state: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    for name, g in (generators or {}).items():
        g.set_state(state["generators"][name])


# ---------------------------------------------------------------------------------------------------------------------

def _rng_file(rank: int) -> str:
    return "rng.pt" if rank == 0 else f"rng_rank{rank}.pt"


def _rotate(root: Path, keep_last: int, keep: str) -> None:
    """Remove checkpoints beyond the newest `keep_last`, directories torn by an earlier crash, and copies set
    aside by an interrupted re-save (put back in place when their step directory is missing)."""
    for torn in root.glob("step_*.tmp"):
        shutil.rmtree(torn, ignore_errors=True)
    for old in root.glob("step_*.old"):
        current = old.with_name(old.name.removesuffix(".old"))
        if current.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, current)
    steps = sorted(p for p in root.glob("step_*") if p.is_dir() and _step_of(p) is not None)
    for old in steps[:-keep_last]:
        if old.name != keep:
            shutil.rmtree(old, ignore_errors=True)


def _disk_full(error: BaseException, path: Path) -> bool:
    """True when a failed write ran out of disk space: an OSError ENOSPC/EDQUOT anywhere in the exception chain
    (torch and safetensors wrap it in their own errors), or, failing that, under 1 MiB left where it wrote."""
    e: BaseException | None = error
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    try:
        return shutil.disk_usage(path if path.exists() else path.parent).free < 2 ** 20
    except OSError:
        return False


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for sub in [directory, *(p for p in directory.rglob("*") if p.is_dir())]:
        _fsync_dir(sub)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
