"""Shared test setup: offline, a private cache for the embedded model, and helpers to run the CLI."""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("POSTTRAIN_HOME", str(Path(tempfile.gettempdir()) / "posttrain-test-home"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
    """`python -m posttrain ARGS` in a real subprocess (one torch thread, no progress bar noise)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "posttrain", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def losses(run_dir: Path) -> dict[int, float]:
    """step → training loss from a run's metrics.jsonl."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out


@pytest.fixture
def varied_rows():
    """Chat rows of clearly different lengths (for invariance tests)."""
    rows = []
    for i in range(24):
        a, b = 7 ** (i % 9 + 1) % 100003, 3 ** (i % 7 + 2) % 997
        user = f"{a}+{b}=" + " please" * (i % 5)
        rows.append({"messages": [{"role": "user", "content": user},
                                  {"role": "assistant", "content": str(a + b) + "!" * (i % 4)}]})
    return rows
