"""Behaviour snapshot: every number a few representative runs write, so a refactor can show it changed nothing.

    python benchmarks/behaviour_snapshot.py record benchmarks/behaviour_baseline.json
    python benchmarks/behaviour_snapshot.py compare benchmarks/behaviour_baseline.json

Runs `posttrain demo --quick` (seed 0) and five short runs — sft, dpo, grpo, ppo and classic ppo, a few steps each,
fixed seeds, one thread — and collects every number of the demo's summary.json and of each run's metrics.jsonl,
leaving out wall-clock ones (time, *_per_s, *_s, *seconds, sps, time/* and the demo's "time (s)" columns). `compare`
runs them again and lists each number that differs (bitwise: floats are compared as written). One demo table
follows the wall clock by design — `scarce_demonstrations`: its SFT arms train for as many steps as fit in GRPO's
measured seconds — so an accuracy there may differ between any two runs. The numbers are
this machine's: float results can differ across CPUs and library versions, so record and compare on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LLM = ["threads=1", "log.progress=false", "seed=0", "task.num_train=64", "task.num_eval=8", "task.max_digits=2",
       "eval.num_samples=4", "eval.max_new_tokens=8", "train.lr=3e-3"]
RL = ["rl.prompts_per_step=4", "train.micro_batch_size=4", "sampling.max_new_tokens=8", "train.max_steps=3",
      "task.max_digits=1", "reward.verifier=false",
      f"reward.function={REPO / 'benchmarks' / 'kill_torture_reward.py'}:digits"]
RUNS = {
    "sft": ["sft", *LLM, "train.micro_batch_size=4", "train.max_steps=5"],
    "dpo": ["dpo", *LLM, "train.micro_batch_size=4", "train.max_steps=4"],
    "grpo": ["rl", "--algo", "grpo", *LLM, *RL],
    "ppo": ["rl", "--algo", "ppo", *LLM, *RL],
    "classic_ppo": ["classic", "ppo", "--env", "CartPole-v1", "total_steps=1024", "seed=0", "eval_episodes=2",
                    "log.progress=false"],
}
TIMING = ("time", "sps", "round_s", "time (s)", "seconds")


def timing(key: str) -> bool:
    return key in TIMING or key.startswith("time/") or key.endswith(("_per_s", "_s", "seconds"))


def strip(value):
    """The value without its wall-clock fields (recursively)."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if not timing(k)}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def run(args: list[str], cwd: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "posttrain", *args], cwd=cwd, env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"posttrain {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def snapshot(work: Path) -> dict:
    out = {}
    run(["demo", "--quick", "True", "--seed", "0", "--output_dir", str(work / "demo")], work)
    out["demo"] = strip(json.loads((work / "demo" / "summary.json").read_text()))
    for name, args in RUNS.items():
        run_dir = work / name
        run([*args, f"output_dir={run_dir}"], work)
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        out[name] = [strip(json.loads(line)) for line in lines if line.strip()]
        print(f"{name}: {len(out[name])} metrics lines", flush=True)
    return out


def differences(old, new, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = [f"{path}.{k}: only in {'baseline' if k in old else 'new run'}" for k in old.keys() ^ new.keys()]
        for k in old.keys() & new.keys():
            found += differences(old[k], new[k], f"{path}.{k}")
        return found
    if isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            return [f"{path}: {len(old)} entries → {len(new)}"]
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if old == new else [f"{path}: {old!r} → {new!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["record", "compare"])
    parser.add_argument("baseline", help="the JSON file to write (record) or to compare with (compare)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="behaviour-") as tmp:
        now = snapshot(Path(tmp))
    if args.action == "record":
        Path(args.baseline).write_text(json.dumps(now, indent=1) + "\n")
        print(f"recorded {args.baseline}")
        return 0
    found = differences(json.loads(Path(args.baseline).read_text()), now)
    for line in found:
        print(line)
    print(f"{len(found)} difference(s) from {args.baseline}" if found else f"every number equals {args.baseline}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
