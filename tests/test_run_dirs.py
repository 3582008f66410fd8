"""Nothing lost around the checkpoints: what overwrite may delete, the lock on a live run, resume checks on the
config, resume=auto, a failed first attempt reused, a torn metrics line, re-saving a step, a full disk, and a
blow-up guard whose abort leaves a good checkpoint."""

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO, losses, run_cli
from posttrain import checkpoint, cli, config as C
from posttrain.run_dir import MARKER

SFT = ["train.micro_batch_size=4", "task.num_train=64", "task.num_eval=8", "eval.num_samples=4",
       "eval.max_new_tokens=8", "threads=1", "log.progress=false", "train.lr=3e-3"]


def sft(run_dir, *args, check=False):
    return run_cli("sft", f"output_dir={run_dir}", *SFT, *args, check=check)


def one_error_line(proc, *needles):
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def refused(capsys, run_dir, *args, needles=()):
    """Run `posttrain sft` in this process (faster than a new one) and expect exit 2 with one error line."""
    code = cli.main(["sft", f"output_dir={run_dir}", *SFT, *args])
    proc = subprocess.CompletedProcess([], code, "", capsys.readouterr().err)
    return one_error_line(proc, *needles)


def weights(run_dir):
    return load_file(str(Path(run_dir) / "final" / "model.safetensors"))


# ---------------------------------------------------------------------------------------------------------------------
# overwrite deletes only posttrain runs (item 5)
# ---------------------------------------------------------------------------------------------------------------------

def test_overwrite_refuses_a_folder_that_is_not_a_run_and_a_file(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "holiday.jpg").write_text("precious")
    refused(capsys, folder, "train.max_steps=1", "overwrite=true", needles=(str(folder), "not a posttrain run"))
    assert (folder / "holiday.jpg").read_text() == "precious" and sorted(os.listdir(folder)) == ["holiday.jpg"]

    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    refused(capsys, a_file, "train.max_steps=1", "overwrite=true", needles=(str(a_file), "is a file"))
    assert a_file.read_text() == "keep me"


def test_overwrite_refuses_the_current_directory_even_if_it_is_a_run(tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    (here / MARKER).write_text("{}\n")
    (here / "config.yaml").write_text("seed: 0\n")
    (here / "my_notes.txt").write_text("mine")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "posttrain", "sft", "output_dir=.", "overwrite=true",
                           "train.max_steps=1", *SFT], cwd=here, env=env, capture_output=True, text=True, timeout=120)
    one_error_line(proc, "refusing to delete")
    assert (here / "my_notes.txt").read_text() == "mine"


def test_overwrite_replaces_a_run_and_a_run_made_before_the_marker(tmp_path):
    run = tmp_path / "run"
    sft(run, "train.max_steps=2", check=True)
    (run / MARKER).unlink()  # as written by an older version: config.yaml + metrics.jsonl + checkpoints/
    (run / "metrics.jsonl").write_text(json.dumps({"step": 99, "loss": 1.0}) + "\n")
    sft(run, "train.max_steps=2", "overwrite=true", check=True)
    assert sorted(losses(run)) == [1, 2] and json.loads((run / MARKER).read_text())["command"] == "sft"


# ---------------------------------------------------------------------------------------------------------------------
# A live run is locked (item 6)
# ---------------------------------------------------------------------------------------------------------------------

def test_a_live_run_is_locked_against_a_second_run_an_overwrite_and_a_resume_until_it_dies(tmp_path):
    run = tmp_path / "live"
    args = ["classic", "dqn", "--env", "CartPole-v1", f"output_dir={run}", "total_steps=200000", "dqn.hidden=8",
            "checkpoint.every=200", "log.progress=false", "dqn.learning_starts=100", "eval_episodes=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    live = subprocess.Popen([sys.executable, "-m", "posttrain", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while checkpoint.latest(run) is None and time.time() < deadline and live.poll() is None:
            time.sleep(0.1)
        assert live.poll() is None and checkpoint.latest(run) is not None
        pid = f"PID {live.pid}"
        one_error_line(run_cli(*args), pid)                                  # a second run
        one_error_line(run_cli(*args, "overwrite=true"), pid)                # an overwrite
        one_error_line(run_cli(*args, "checkpoint.resume=true"), pid)        # a resume
        assert live.poll() is None and (run / "checkpoints").is_dir()
    finally:
        live.send_signal(signal.SIGKILL)
        live.wait()
    # the kernel released the dead process's lock: the run resumes (shortened to end soon)
    done = json.loads((checkpoint.latest(run) / "state.json").read_text())["step"]
    proc = run_cli(*args[:5], f"total_steps={done + 200}", *args[6:], "checkpoint.resume=true")
    assert proc.returncode == 0, proc.stderr
    assert "total_steps" in yaml.safe_load((run / "config.yaml").read_text())["resumed"][0]["changes"]


# ---------------------------------------------------------------------------------------------------------------------
# Resume checks the config (item 7)
# ---------------------------------------------------------------------------------------------------------------------

def test_resume_refuses_settings_that_cannot_change_and_a_shorter_run(tmp_path, capsys):
    run = tmp_path / "run"
    sft(run, "train.max_steps=4", check=True)
    before = (run / "config.yaml").read_text()
    line = refused(capsys, run, "train.max_steps=4", "checkpoint.resume=true", "seed=1", "train.micro_batch_size=2",
                   needles=("seed 0 → 1", "train.micro_batch_size 4 → 2"))
    assert "checkpoint.allow_changes=seed,train.micro_batch_size" in line
    refused(capsys, run, "train.max_steps=4", "checkpoint.resume=true", "lora.r=4",
            needles=("lora.r unset → 4", "LoRA run cannot continue a full fine-tune"))
    refused(capsys, run, "train.max_steps=4", "checkpoint.resume=true", "train.lr=1e-4",
            needles=("train.lr 0.003 → 0.0001", "checkpoint.allow_changes=train.lr"))
    refused(capsys, run, "train.max_steps=3", "checkpoint.resume=true",
            needles=("train.max_steps=3", "checkpoint is at step 4", "train.max_steps=4 or more"))
    assert (run / "config.yaml").read_text() == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_000004"]


def test_resume_applies_and_records_permitted_changes_and_the_config_file_replays_them(tmp_path):
    run, straight = tmp_path / "run", tmp_path / "straight"
    constant = ["train.schedule=constant"]
    sft(run, "train.max_steps=3", *constant, check=True)
    sft(run, "train.max_steps=6", *constant, "checkpoint.resume=true", "log.every=2", check=True)
    sft(straight, "train.max_steps=6", *constant, check=True)
    # a longer run with a constant schedule: the same steps as a run that was 6 steps long from the start
    assert all(torch.equal(a, b) for a, b in zip(weights(run).values(), weights(straight).values()))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 3 and saved["log"]["every"] == 1  # the run's first settings …
    assert saved["resumed"] == [{"step": 3, "changes": {"train.max_steps": {"from": 3, "to": 6},  # … and the change
                                                        "log.every": {"from": 1, "to": 2}}}]
    replay = C.load_yaml(run / "config.yaml", C.SFTConfig)
    assert replay.train.max_steps == 6 and replay.log.every == 2 and replay.train.schedule == "constant"
    # lr only when named, and then recorded too
    sft(run, "train.max_steps=8", *constant, "log.every=2", "checkpoint.resume=true", "train.lr=1e-3",
        "checkpoint.allow_changes=train.lr", check=True)
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["resumed"][-1] == {"step": 6, "changes": {"train.max_steps": {"from": 6, "to": 8},
                                                           "train.lr": {"from": 0.003, "to": 0.001}}}
    assert C.load_yaml(run / "config.yaml", C.SFTConfig).train.lr == 0.001


# ---------------------------------------------------------------------------------------------------------------------
# resume=auto (item 11), and a failed first attempt does not block the rerun (item 12)
# ---------------------------------------------------------------------------------------------------------------------

def test_resume_auto_starts_afresh_without_a_checkpoint_and_resumes_with_one(tmp_path, capsys):
    straight, run = tmp_path / "straight", tmp_path / "run"
    sft(straight, "train.max_steps=4", "checkpoint.every=2", check=True)
    # killed after two logged steps, before its first checkpoint: metrics but nothing to resume from
    sft(run, "train.max_steps=4", "checkpoint.resume=auto", "checkpoint.every=2", check=True)
    for d in ("final", "checkpoints"):
        shutil.rmtree(run / d)
    refused(capsys, run, "train.max_steps=4", "checkpoint.every=2", needles=("already holds a run",))
    sft(run, "train.max_steps=4", "checkpoint.every=2", "checkpoint.resume=auto", check=True)
    assert losses(run) == losses(straight)
    # with a checkpoint, auto resumes it: rewind to step 2 and continue
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoints" / "step_000004")
    (run / "checkpoints" / "latest").write_text("step_000002\n")
    proc = sft(run, "train.max_steps=4", "checkpoint.every=2", "checkpoint.resume=auto", check=True)
    assert "resuming at step 2" in proc.stdout
    assert losses(run) == losses(straight)
    assert all(torch.equal(a, b) for a, b in zip(weights(run).values(), weights(straight).values()))
    assert "auto" in run_cli("sft", "--help").stdout


def test_a_run_that_failed_at_step_one_is_reused_by_the_corrected_rerun(tmp_path):
    run = tmp_path / "run"
    # every step is "bad" (gradient norm above a tiny bound): the run stops at step 1 after creating its directory
    line = one_error_line(sft(run, "train.max_steps=2", "train.bad_grad_norm=1e-9", "train.max_bad_steps=1"),
                          "train.bad_grad_norm", "is intact")
    assert "train.lr=" in line and (run / MARKER).is_file() and checkpoint.latest(run) is None
    sft(run, "train.max_steps=2", check=True)  # no overwrite needed: nothing worth keeping was there
    assert sorted(losses(run)) == [1, 2]


# ---------------------------------------------------------------------------------------------------------------------
# The blow-up guard's abort keeps the last good checkpoint (item 18)
# ---------------------------------------------------------------------------------------------------------------------

def test_blow_up_abort_is_one_line_and_the_last_good_checkpoint_resumes(tmp_path):
    straight, run = tmp_path / "straight", tmp_path / "run"
    constant = ["train.schedule=constant", "checkpoint.every=3"]
    sft(straight, "train.max_steps=6", *constant, check=True)
    sft(run, "train.max_steps=3", *constant, check=True)
    proc = sft(run, "train.max_steps=6", *constant, "checkpoint.resume=true", "train.bad_grad_norm=1e-9",
               "train.max_bad_steps=2")
    one_error_line(proc, "2 consecutive steps had a gradient norm above train.bad_grad_norm=1e-09")
    assert checkpoint.latest(run).name == "step_000003" and sorted(losses(run)) == [1, 2, 3, 4]  # 4 skipped
    sft(run, "train.max_steps=6", *constant, "checkpoint.resume=true", check=True)
    assert losses(run) == losses(straight)
    assert all(torch.equal(a, b) for a, b in zip(weights(run).values(), weights(straight).values()))


def test_skipped_step_counts_carry_across_a_resume(tmp_path):
    """Every step is skipped (a tiny train.bad_grad_norm) and the limit is 3 in a row. Uninterrupted, the run logs
    skipped_steps 1, 2 and aborts at step 3; rewound to its step-2 checkpoint and resumed, it must do the same —
    a guard that restarts its counts at 0 would log skipped_steps 1 at step 3 and never abort."""
    run = tmp_path / "run"
    bad = ["train.max_steps=4", "checkpoint.every=2", "log.every=1", "train.bad_grad_norm=1e-9",
           "train.max_bad_steps=3"]
    one_error_line(sft(run, *bad), "3 consecutive steps")
    def skipped():
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        return [(m["step"], m["skipped_steps"]) for m in lines if "skipped_steps" in m]
    assert skipped() == [(1, 1), (2, 2)] and checkpoint.latest(run).name == "step_000002"
    one_error_line(sft(run, *bad, "checkpoint.resume=true"), "3 consecutive steps")
    assert skipped() == [(1, 1), (2, 2)]


def test_guard_counts_a_finite_blow_up_like_a_non_finite_step():
    from posttrain.train.common import NonFiniteGuard, TrainingDiverged
    guard = NonFiniteGuard(limit=2)
    assert guard.ok(1.0, 5.0, bound=10.0)
    assert not guard.ok(1.0, 50.0, bound=10.0) and guard.skipped == 1
    assert guard.ok(1.0, 50.0, bound=0.0)  # no bound
    assert not guard.ok(float("nan"), 1.0)
    with pytest.raises(TrainingDiverged, match="non-finite"):
        guard.ok(1.0, float("inf"))


# ---------------------------------------------------------------------------------------------------------------------
# A torn metrics line (item 8)
# ---------------------------------------------------------------------------------------------------------------------

def test_a_torn_last_metrics_line_is_dropped_and_reported_on_resume(tmp_path):
    run, straight = tmp_path / "run", tmp_path / "straight"
    sft(straight, "train.max_steps=4", "checkpoint.every=2", check=True)
    sft(run, "train.max_steps=4", "checkpoint.every=2", check=True)
    shutil.rmtree(run / "final")
    shutil.rmtree(run / "checkpoints" / "step_000004")
    (run / "checkpoints" / "latest").write_text("step_000002\n")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 1.23')  # a kill mid-write
    proc = sft(run, "train.max_steps=4", "checkpoint.every=2", "checkpoint.resume=true", check=True)
    assert "dropped a torn last line" in proc.stdout
    assert losses(run) == losses(straight)


def test_tracker_drops_a_torn_line_but_refuses_damage_in_the_middle(tmp_path):
    from posttrain.errors import UserError
    from posttrain.track import Tracker, read_metrics
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    t = Tracker(tmp_path, total_steps=4, start_step=2, progress=False)
    t.log(3, {"loss": 1.0})
    t.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    path.write_text('{"step": 1, "lo\n{"step": 2, "loss": 1.5}\n')
    with pytest.raises(UserError, match="line 1"):
        Tracker(tmp_path, total_steps=4, start_step=2, progress=False)


# ---------------------------------------------------------------------------------------------------------------------
# Re-saving a step never leaves `latest` naming nothing (item 9)
# ---------------------------------------------------------------------------------------------------------------------

def test_a_crash_while_re_saving_a_step_leaves_latest_on_a_complete_copy(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, 1, lambda d: (d / "x").write_text("first"), keep_last=2)
    real_rename = os.rename

    def crash_after_setting_aside(src, dst):
        real_rename(src, dst)
        if str(dst).endswith(".old"):
            raise KeyboardInterrupt("killed")  # the process dies between setting the old copy aside and the rename

    monkeypatch.setattr(os, "rename", crash_after_setting_aside)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(tmp_path, 1, lambda d: (d / "x").write_text("second"), keep_last=2)
    monkeypatch.setattr(os, "rename", real_rename)
    found = checkpoint.latest(tmp_path)
    assert found is not None and (found / "x").read_text() == "first"
    # the next save puts things in order: the set-aside copy back in place, the torn one gone
    checkpoint.save(tmp_path, 2, lambda d: (d / "x").write_text("two"), keep_last=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_000001", "step_000002"]
    assert (tmp_path / "checkpoints" / "step_000001" / "x").read_text() == "first"


def test_re_saving_a_step_replaces_it(tmp_path):
    checkpoint.save(tmp_path, 1, lambda d: (d / "x").write_text("first"), keep_last=2)
    checkpoint.save(tmp_path, 1, lambda d: (d / "x").write_text("second"), keep_last=2)
    assert (checkpoint.latest(tmp_path) / "x").read_text() == "second"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_000001"]


# ---------------------------------------------------------------------------------------------------------------------
# A full disk (item 17, disk-full part)
# ---------------------------------------------------------------------------------------------------------------------

def test_disk_full_during_a_checkpoint_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "step_000004" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    code = cli.main(["sft", f"output_dir={run}", *SFT, "train.max_steps=4", "checkpoint.every=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert "no space left on device writing" in err[0] and "step_000004" in err[0] and "MiB free" in err[0]
    assert checkpoint.latest(run).name == "step_000002"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_000002"]


def test_disk_full_while_writing_metrics_is_one_line(tmp_path, monkeypatch, capsys):
    from posttrain import track

    class FullAfterTwoLines:
        def __init__(self, path, mode):
            self.f, self.lines = open(path, mode), 0

        def write(self, text):
            self.lines += 1
            if self.lines > 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(text)

        def __getattr__(self, name):
            return getattr(self.f, name)

    monkeypatch.setattr(track, "open", FullAfterTwoLines, raising=False)
    run = tmp_path / "run"
    code = cli.main(["sft", f"output_dir={run}", *SFT, "train.max_steps=4", "checkpoint.every=2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and str(run / "metrics.jsonl") in err[0], err
    assert checkpoint.latest(run).name == "step_000002"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_real_full_disk_gives_one_line(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        proc = sft(disk / "run", "train.max_steps=2")
        lines = [line for line in proc.stderr.splitlines() if "error:" in line]
        assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "no space left on device" in lines[0] and "MiB free" in lines[0]
        assert not list((disk / "run" / "checkpoints").glob("*.tmp"))  # the partial write was removed
    finally:
        subprocess.run(["umount", str(disk)])
