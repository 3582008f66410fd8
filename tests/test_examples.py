"""Every example config runs through the real CLI (shortened to a few steps)."""

import re
from pathlib import Path

import pytest

from conftest import REPO
from posttrain import cli

EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
# commands whose cost is not bounded by train.max_steps: rft samples every training problem each round
SHORTER = {"rft": ["task.num_train=8", "sampling.max_new_tokens=16", "rft.rounds=1"]}


def command_of(path: Path) -> str:
    """Each example names its command in a comment: `#   posttrain <command> -c examples/...`."""
    match = re.search(r"posttrain (\w+) -c examples/" + re.escape(path.name), path.read_text())
    assert match, f"{path.name} must say how to run it"
    return match.group(1)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_config_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "run"
    command = command_of(path)
    code = cli.main([command, "-c", str(path), f"output_dir={out}", "train.max_steps=2", "eval.num_samples=4",
                     "eval.every=0", "checkpoint.every=0", "log.progress=false", "threads=1",
                     *SHORTER.get(command, [])])
    assert code == 0
    assert (out / "final").is_dir() and (out / "metrics.jsonl").is_file()


def test_there_are_examples():
    assert len(EXAMPLES) >= 3
