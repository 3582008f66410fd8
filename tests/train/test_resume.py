"""Nothing is lost: a real process killed with SIGKILL mid-training resumes to the uninterrupted run, and a
kill during a checkpoint write leaves the previous checkpoint loadable with `latest` pointing at it."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, losses, run_cli
from posttrain import checkpoint
from posttrain.track import read_metrics

ARGS = ["train.max_steps=40", "train.micro_batch_size=8", "train.grad_accum=2", "train.lr=3e-3",
        "train.warmup_steps=5", "checkpoint.every=10", "checkpoint.keep_last=2", "log.every=1",
        "log.progress=false", "eval.num_samples=8", "task.num_train=400", "task.num_eval=16", "threads=1"]


def final_weights(run_dir):
    return load_file(str(run_dir / "final" / "model.safetensors"))


def test_sigkill_mid_training_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_cli("sft", f"output_dir={straight}", *ARGS, check=True)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "posttrain", "sft", f"output_dir={killed}", *ARGS],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # kill once past the step-20 checkpoint
        if metrics.exists() and max(losses(killed), default=0) >= 25:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.latest(killed).name == "step_000020"
    assert not (killed / "final").exists()

    run_cli("sft", f"output_dir={killed}", *ARGS, "checkpoint.resume=auto", check=True)
    expected, got = losses(straight), losses(killed)
    assert sorted(got) == sorted(expected) == list(range(1, 41))
    for step in expected:
        assert abs(got[step] - expected[step]) <= 1e-6, (step, got[step], expected[step])
    a, b = final_weights(straight), final_weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


KILL_DURING_WRITE = textwrap.dedent("""
    import os, signal, sys, torch
    from pathlib import Path
    from posttrain import checkpoint

    run_dir = Path(sys.argv[1])
    model = torch.nn.Linear(3, 2)
    model.save_pretrained = lambda d, **kw: (d.mkdir(), torch.save(model.state_dict(), d / "w.pt"))
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)

    def write(step):
        return lambda d: checkpoint.write_training_state(d, model=model, optimizer=optimizer,
                                                         scheduler=scheduler, state={"step": step})

    checkpoint.save(run_dir, 1, write(1), keep_last=1)

    def write_then_die(d):
        write(2)(d)            # every file of step 2 is on disk …
        os.kill(os.getpid(), signal.SIGKILL)   # … but the process dies before the rename

    checkpoint.save(run_dir, 2, write_then_die, keep_last=1)
""")


def test_kill_during_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_WRITE, str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    latest = checkpoint.latest(tmp_path)
    assert latest is not None and latest.name == "step_000001"
    assert (tmp_path / "checkpoints" / "step_000002.tmp").is_dir()       # the torn write is visible …
    assert not (tmp_path / "checkpoints" / "step_000002").exists()      # … but never looks complete

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    state = checkpoint.read_training_state(latest, optimizer=optimizer, scheduler=scheduler)
    assert state["step"] == 1 and state["world_size"] == 1
    model.load_state_dict(torch.load(latest / "model" / "w.pt", weights_only=True))

    # The next save cleans up the torn directory and rotation keeps only complete checkpoints.
    checkpoint.save(tmp_path, 3, lambda d: (d / "x").write_text("ok"), keep_last=1)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step_000003"]
    assert checkpoint.latest(tmp_path).name == "step_000003"


def test_rotation_only_after_a_complete_write(tmp_path):
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, lambda d: (d / "x").write_text("ok"), keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_000002", "step_000003"]
    with pytest.raises(RuntimeError):
        checkpoint.save(tmp_path, 4, lambda d: (_ for _ in ()).throw(RuntimeError("disk full")), keep_last=2)
    assert checkpoint.latest(tmp_path).name == "step_000003"
    assert (tmp_path / "checkpoints" / "step_000002").is_dir()


def test_rng_state_round_trips_every_generator():
    import random
    import numpy as np
    g = torch.Generator().manual_seed(7)
    state = checkpoint.rng_state({"rollout": g})
    expected = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g).item())
    checkpoint.set_rng_state(state, {"rollout": g})
    assert (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g).item()) == expected


CLASSIC = {"dqn": ["total_steps=600", "dqn.learning_starts=100", "dqn.train_every=4", "dqn.gradient_steps=1",
                   "dqn.hidden=8", "dqn.target_every=50"],
           "ppo": ["total_steps=512", "ppo.n_steps=16", "ppo.epochs=2", "ppo.hidden=8"]}


def _without_time(run_dir):
    return [{k: v for k, v in r.items() if k not in ("time", "sps")} for r in read_metrics(run_dir)]


@pytest.mark.parametrize("algo", sorted(CLASSIC))
def test_resuming_a_finished_classic_run_adds_no_metrics_line(tmp_path, algo):
    args = ["classic", algo, "--env", "CartPole-v1", f"output_dir={tmp_path}", *CLASSIC[algo], "checkpoint.every=200",
            "eval_episodes=2", "log.progress=false"]
    run_cli(*args, check=True)
    finished = _without_time(tmp_path)
    assert "eval/return" in finished[-1]
    run_cli(*args, "checkpoint.resume=true", check=True)
    assert _without_time(tmp_path) == finished
    # killed after its final checkpoint, before the final evaluation was logged: resume logs it, once
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    shutil.rmtree(tmp_path / "final")
    run_cli(*args, "checkpoint.resume=auto", check=True)
    assert _without_time(tmp_path) == finished
