"""Kill torture: SIGKILL runs at random moments and resume them with `checkpoint.resume=auto` until they finish;
every metrics line and the final weights must equal those of the same run left alone.

    python benchmarks/kill_torture.py                    # 30 kills over sft, dpo, rm, grpo, ppo, dqn
    python benchmarks/kill_torture.py --kills 3 --commands sft,dqn

Each command runs a tiny configuration (a few dozen steps, a checkpoint every few) once uninterrupted, then again
under fire: an attempt is started with checkpoint.resume=auto and killed either during its start-up (a random moment
before its first new metrics line) or at a random moment after a randomly chosen step was logged (mid-step,
mid-evaluation, mid-checkpoint; the steps are drawn so that the kills spread over the whole run); killed attempts
are restarted with the same command until one finishes. A run that finishes before its share of kills was delivered
is followed by a new one in a fresh directory. Timing metrics (time, *_per_s, sps, time/*) are left out of the
comparison. grpo and ppo are scored by kill_torture_reward.py in the reward worker; a second after every kill, the
processes still running that file are counted (left behind: they must be 0). Prints a table:

    command   kills  runs  equal metrics  equal weights  left behind
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
LLM = ["threads=1", "log.progress=false", "task.num_train=96", "task.num_eval=8", "task.max_digits=2",
       "eval.num_samples=4", "eval.max_new_tokens=8", "train.lr=3e-3", "checkpoint.keep_last=2"]
REWARD = Path(__file__).resolve().with_name("kill_torture_reward.py")
RL = [f"reward.function={REWARD}:digits", "reward.verifier=false", "eval.task_accuracy=false",
      "task.max_digits=1", "sampling.max_new_tokens=8", "rl.prompts_per_step=4", "train.micro_batch_size=4",
      "train.max_steps=12", "checkpoint.every=3"]
COMMANDS = {
    "sft": ["sft", *LLM, "train.micro_batch_size=4", "train.max_steps=30", "checkpoint.every=5"],
    "dpo": ["dpo", *LLM, "train.micro_batch_size=4", "train.max_steps=24", "checkpoint.every=4"],
    "rm": ["rm", *LLM, "train.micro_batch_size=4", "train.max_steps=24", "checkpoint.every=4"],
    "grpo": ["rl", "--algo", "grpo", *LLM, *RL],
    "ppo": ["rl", "--algo", "ppo", *LLM, *RL],
    "dqn": ["classic", "dqn", "--env", "CartPole-v1", "total_steps=3000", "checkpoint.every=500", "dqn.hidden=16",
            "dqn.learning_starts=200", "dqn.train_every=4", "dqn.gradient_steps=1", "dqn.target_every=100",
            "eval_every=1000", "eval_episodes=2", "log.progress=false", "checkpoint.keep_last=2"],
}
TIMING = ("time", "sps", "round_s")


def launch(args: list[str], run_dir: Path, log) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "posttrain", *args, f"output_dir={run_dir}",
                             "checkpoint.resume=auto"], cwd=REPO, env=env, stdout=log, stderr=log)


def last_step(run_dir: Path) -> int:
    """The highest step in metrics.jsonl (a torn last line is ignored), 0 if none."""
    path = run_dir / "metrics.jsonl"
    steps = [0]
    if path.is_file():
        for line in path.read_text(errors="replace").splitlines():
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                pass
    return max(steps)


def straight_run(args: list[str], run_dir: Path, log) -> dict:
    """The uninterrupted run; returns its total steps (the last metrics step) and how long start-up took."""
    t0 = time.time()
    proc = launch(args, run_dir, log)
    first = None
    while proc.poll() is None:
        if first is None and last_step(run_dir) > 0:
            first = time.time() - t0
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(f"the uninterrupted {args[0]} run failed (exit {proc.returncode}); see {log.name}")
    return {"total": last_step(run_dir), "startup": first or time.time() - t0, "seconds": time.time() - t0}


def attempt(args: list[str], run_dir: Path, straight: dict, rng: random.Random, log,
            remaining: int) -> tuple[bool, int | None]:
    """One attempt, under fire while kills `remaining` > 0: the target step is drawn from the next
    1/remaining of the steps left, so the kills spread over the run. Returns (killed, exit code if it ended)."""
    before = last_step(run_dir)
    proc = launch(args, run_dir, log)
    t0 = time.time()
    if remaining <= 0:
        deadline, target = None, None
    elif before >= straight["total"] or rng.random() < 0.2:  # kill during start-up
        deadline, target = t0 + rng.uniform(0.2, 1.2) * straight["startup"], None
    else:  # kill a random moment after a random later step was logged
        span = -(-(straight["total"] - before) // remaining)  # ceil
        deadline, target = None, rng.randint(before + 1, min(before + span, straight["total"]))
    step_time = (straight["seconds"] - straight["startup"]) / max(straight["total"], 1)
    while proc.poll() is None:
        if target is not None and last_step(run_dir) >= target:
            deadline, target = time.time() + rng.uniform(0, 2 * step_time), None
        if deadline is not None and time.time() >= deadline:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True, None
        time.sleep(0.01)
    return False, proc.returncode


def reward_workers() -> int:
    """Processes still running kill_torture_reward.py (reward workers of a killed trainer that outlived it)."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        count += str(REWARD).encode() in cmdline and b"_worker_main" in cmdline
    return count


def comparable(run_dir: Path) -> list[dict]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING and not k.startswith("time/") and not k.endswith("_per_s")}
            for r in records]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted((run_dir / "final").rglob("*.safetensors")):
        for name, tensor in load_file(str(path)).items():
            out[f"{path.relative_to(run_dir)}:{name}"] = tensor
    return out


def torture(name: str, kills: int, work: Path, rng: random.Random) -> dict:
    args = COMMANDS[name]
    log = open(work / f"{name}.log", "w")
    straight_dir = work / f"{name}-straight"
    straight = straight_run(args, straight_dir, log)
    expected, expected_weights = comparable(straight_dir), final_weights(straight_dir)
    delivered, runs, equal_metrics, equal_weights, left_behind = 0, 0, True, True, 0
    while delivered < kills or runs == 0:
        runs += 1
        run_dir = work / f"{name}-killed-{runs}"
        while True:
            killed, code = attempt(args, run_dir, straight, rng, log, remaining=kills - delivered)
            if killed:
                delivered += 1
                time.sleep(1.0)
                left_behind += reward_workers()
                print(f"  {name}: kill {delivered} (run {runs}, metrics at step {last_step(run_dir)}, checkpoint "
                      f"{latest_name(run_dir)})", flush=True)
                continue
            if code != 0:
                raise SystemExit(f"{name}: a resumed attempt failed with exit {code}; see {log.name}")
            break
        equal_metrics &= comparable(run_dir) == expected
        got = final_weights(run_dir)
        equal_weights &= got.keys() == expected_weights.keys() and all(
            torch.equal(got[k], expected_weights[k]) for k in got)
    log.close()
    return {"command": name, "kills": delivered, "runs": runs, "equal metrics": equal_metrics,
            "equal weights": equal_weights, "left behind": left_behind}


def latest_name(run_dir: Path) -> str:
    pointer = run_dir / "checkpoints" / "latest"
    return pointer.read_text().strip() if pointer.is_file() else "none"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=30, help="SIGKILLs in all, shared among the commands")
    parser.add_argument("--commands", default=",".join(COMMANDS), help="comma-separated: " + ", ".join(COMMANDS))
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    parser.add_argument("--workdir", default=None, help="where the runs go (default: a temporary directory)")
    parser.add_argument("--keep", action="store_true", help="keep the run directories")
    args = parser.parse_args()
    names = [n for n in args.commands.split(",") if n]
    unknown = [n for n in names if n not in COMMANDS]
    if unknown:
        parser.error(f"unknown command(s) {', '.join(unknown)} — valid: {', '.join(COMMANDS)}")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kill-torture-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    shares = [args.kills // len(names) + (i < args.kills % len(names)) for i in range(len(names))]
    rows = []
    for name, share in zip(names, shares):
        print(f"{name}: uninterrupted run, then {share} kill(s)", flush=True)
        rows.append(torture(name, share, work, rng))
    print(f"\n{'command':<9} {'kills':>5} {'runs':>5}  {'equal metrics':<14} {'equal weights':<14} left behind")
    for r in rows:
        print(f"{r['command']:<9} {r['kills']:>5} {r['runs']:>5}  {str(r['equal metrics']):<14} "
              f"{str(r['equal weights']):<14} {r['left behind']}")
    ok = all(r["equal metrics"] and r["equal weights"] and not r["left behind"] for r in rows)
    verdict = ("every run equals its uninterrupted twin, no reward worker left behind" if ok
               else "MISMATCH — see the table")
    print(f"\n{sum(r['kills'] for r in rows)} kills; {verdict}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"runs kept in {work}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
