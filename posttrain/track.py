"""Metrics: one JSONL line per logged step (always), a console progress bar, TensorBoard / W&B when asked,
and `posttrain plot RUN_DIR` for PNG curves.

Metric names are stable across commands: `loss`, `lr`, `grad_norm`, `tokens_per_s`, `eval/loss`,
`eval/ppl`, `eval/accuracy`, … Each line also carries `step` and `time` (seconds since the run started).
"""

from __future__ import annotations

import errno
import json
import math
import os
import time
from collections import Counter
from pathlib import Path

from posttrain.errors import UserError

METRICS_FILE = "metrics.jsonl"
HEADLINE = ("loss", "eval/loss", "eval/accuracy", "lr", "tokens_per_s")


# log.report_to sink → (module it imports, package to install)
_SINK_PACKAGES = {"tensorboard": ("tensorboard", "tensorboard"), "wandb": ("wandb", "wandb")}


def check_report_to(report_to: list[str]) -> None:
    """Every metric sink asked for is installed. Checked before the run starts: the import would otherwise fail
    only when the tracker opens, after the data has been read and the run directory made."""
    import importlib.util

    from posttrain.errors import ConfigError

    for sink in report_to:
        module, package = _SINK_PACKAGES.get(sink, (None, None))
        if module is not None and importlib.util.find_spec(module) is None:
            raise ConfigError(f"log.report_to={sink} needs the '{package}' package, which is not installed — fix: "
                              f"pip install {package}, or drop {sink} from log.report_to")


class Tracker:
    """Writes metrics for one run. On resume, lines after the resumed step are dropped first, so the file
    reads as if the run had never stopped."""

    def __init__(self, run_dir: Path, *, total_steps: int, start_step: int = 0,
                 report_to: list[str] = (), progress: bool = True, config: dict | None = None,
                 active: bool = True):
        self.active = active  # only rank 0 of a multi-process run writes; the others' tracker does nothing
        if not active:
            return
        self.path = Path(run_dir) / METRICS_FILE
        kept = _truncate_after(self.path, start_step) if start_step > 0 else _drop_torn_last_line(self.path)
        # lines already written at the resumed step (a classic run's final evaluation, logged after its final
        # checkpoint): logging them again would repeat them, so each is logged only once
        self.already = Counter(frozenset(r) - {"step", "time"} for r in kept if r["step"] == start_step)
        self.start_step = start_step
        self.file = open(self.path, "a")
        self.start = time.time()
        self.bar = _progress_bar(total_steps, start_step) if progress else None
        self.tb = self.wandb = None
        if "tensorboard" in report_to:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        if "wandb" in report_to:
            import wandb
            self.wandb = wandb.init(project="posttrain", dir=str(run_dir), config=config, resume="allow")

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.active:
            return
        if step < self.start_step:
            return
        if step == self.start_step and self.already[frozenset(metrics)] > 0:
            self.already[frozenset(metrics)] -= 1
            return
        record = {"step": step, "time": round(time.time() - self.start, 3)}
        record.update({k: _plain(v) for k, v in metrics.items()})
        try:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(e.errno, f"no space left on device while writing {self.path}", str(self.path)) from e
            raise
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(k, _plain(v), step)
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if self.bar is not None:
            shown = {k: f"{_plain(metrics[k]):.4g}" for k in HEADLINE if k in metrics}
            self.bar.set_postfix(shown, refresh=False)

    def advance(self, n: int = 1) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.update(n)

    def write(self, message: str) -> None:
        """Print a line without breaking the progress bar."""
        if not self.active:
            return
        if self.bar is not None:
            self.bar.write(message)
        else:
            print(message, flush=True)

    def close(self) -> None:
        if not self.active:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.file.close()


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of RUN_DIR/metrics.jsonl (a torn last line, left by a kill mid-write, is skipped)."""
    return _records(Path(run_dir) / METRICS_FILE)[0]


def plot_run(cfg) -> list[Path]:
    """`posttrain plot RUN_DIR`: one PNG per metric (and one overview) in RUN_DIR/plots/."""
    run_dir = Path(cfg.run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        raise UserError(f"{run_dir / METRICS_FILE} not found — fix: pass a run directory written by a posttrain "
                        "command")
    paths = plot_metrics(read_metrics(run_dir), run_dir / "plots")
    print(f"wrote {len(paths)} plots to {run_dir / 'plots'}")
    return paths


def plot_metrics(records: list[dict], out_dir: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    names = sorted({k for r in records for k, v in r.items()
                    if k not in ("step", "time") and isinstance(v, (int, float))})
    paths = []
    for name in names:
        points = [(r["step"], r[name]) for r in records if name in r and _finite(r[name])]
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 30 else None)
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / (name.replace("/", "_") + ".png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------------------------------

def _plain(v):
    return v.item() if hasattr(v, "item") else v


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _records(path: Path) -> tuple[list[dict], list[str], str | None]:
    """The records of a metrics file, their lines, and its torn last line (None if there is none). A kill or a
    full disk can cut the line being written; any other unreadable line is damage the user must see."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    records, torn = [], None
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise UserError(f"{path}, line {number}: not a JSON record ({line[:60]!r}) — fix: delete or repair "
                                "that line, then rerun") from None
            torn = lines.pop()
    return records, lines, torn


def _truncate_after(path: Path, step: int) -> list[dict]:
    """Keep only records with step <= `step` (a killed run may have logged past its last checkpoint), and drop
    a torn last line. Returns the records kept."""
    if not path.exists():
        return []
    records, lines, torn = _records(path)
    keep = [i for i, r in enumerate(records) if r["step"] <= step]
    if torn is not None:
        print(f"{path}: dropped a torn last line ({len(torn)} characters, cut by an interrupted write)", flush=True)
    unended = not path.read_bytes().endswith(b"\n")  # a complete record whose newline was not written
    if torn is not None or len(keep) < len(records) or unended:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(lines[i] + "\n" for i in keep))
        os.replace(tmp, path)
    return [records[i] for i in keep]


def _drop_torn_last_line(path: Path) -> list[dict]:
    """A fresh start in a reused directory appends nothing to a torn line (normally the file is new)."""
    return _truncate_after(path, step=2 ** 62) if path.exists() else []


def _progress_bar(total: int, initial: int):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, mininterval=0.5)
