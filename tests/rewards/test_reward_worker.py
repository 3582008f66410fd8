"""The user reward worker leaks nothing: every process a reward function starts is killed with the worker's process
group on a timeout, a crash, the end of the run and a SIGKILL of the trainer (even while the worker holds the GIL);
loading the file may take reward.timeout_s."""

import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from posttrain.errors import UserError
from posttrain.rewards import FileReward

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path, source: str, name: str = "leaky_reward.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def with_marker(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:  # gone meanwhile
            continue
        if marker.encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    """The process has exited (a zombie nobody reaped yet counts as gone: it runs nothing)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


CHILD_STARTING_REWARD = """
    import subprocess, sys, time
    MARKER = {marker!r}
    def reward(prompt, completion, **row):
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", MARKER])
        if completion == "hang":
            time.sleep(30)
        if completion == "crash":
            import os
            os._exit(3)
        return 1.0
"""


def test_100_timed_out_calls_that_start_children_leave_no_process(tmp_path):
    marker = f"posttrain-test-{uuid.uuid4().hex}"
    path = write(tmp_path, CHILD_STARTING_REWARD.format(marker=marker))
    with FileReward(path, timeout_s=0.1) as source:  # each call: a worker start (~0.1 s) and the timeout
        outcomes = source.outcomes(["p"] * 100, ["hang"] * 100, [{}] * 100)
        assert [o.reason for o in outcomes] == ["timeout"] * 100
        assert wait_until(lambda: not with_marker(marker), 2.0), f"{len(with_marker(marker))} children left"
    assert not with_marker(marker)


def test_children_of_calls_that_return_are_killed_when_the_source_closes(tmp_path):
    marker = f"posttrain-test-{uuid.uuid4().hex}"
    path = write(tmp_path, CHILD_STARTING_REWARD.format(marker=marker))
    with FileReward(path, timeout_s=10) as source:
        assert source.score(["p"] * 8, ["ok"] * 8, [{}] * 8) == [1.0] * 8
        assert wait_until(lambda: len(with_marker(marker)) == 8, 5.0)  # they run while the source is open
    assert wait_until(lambda: not with_marker(marker), 2.0), f"{len(with_marker(marker))} children left"


def test_children_of_a_crashed_worker_are_killed(tmp_path):
    marker = f"posttrain-test-{uuid.uuid4().hex}"
    path = write(tmp_path, CHILD_STARTING_REWARD.format(marker=marker))
    with FileReward(path, timeout_s=10) as source:
        outcome = source.outcomes(["p"], ["crash"], [{}])[0]
        assert outcome.reason == "exception" and "exit code 3" in outcome.detail
        assert wait_until(lambda: not with_marker(marker), 2.0), f"{len(with_marker(marker))} children left"


TRAINER = """
import sys
from posttrain.rewards import FileReward
with FileReward(sys.argv[1], timeout_s=600) as source:
    source.score(["p"], ["c"], [{}])
"""


def test_sigkill_of_the_trainer_during_a_gil_holding_reward_ends_the_worker_and_its_children(tmp_path):
    marker = f"posttrain-test-{uuid.uuid4().hex}"
    pids = tmp_path / "pids"
    path = write(tmp_path, f"""
        import os, re, subprocess, sys
        def reward(prompt, completion, **row):
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", {marker!r}])
            with open({str(pids)!r}, "w") as f:
                f.write(f"{{os.getpid()}} {{child.pid}}")
            re.match(r"(a+)+$", "a" * 64 + "b")  # catastrophic backtracking: C code holding the GIL for ages
            return 1.0
    """)
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, str(path)], cwd=REPO)
    try:
        assert wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2, 30.0)
        worker, child = map(int, pids.read_text().split())
        time.sleep(0.3)  # well inside the regex
        assert not gone(worker)
    finally:
        trainer.kill()
        trainer.wait()
    assert wait_until(lambda: gone(worker), 2.0), "the worker outlived the trainer"
    assert wait_until(lambda: gone(child) and not with_marker(marker), 2.0), "the reward's child outlived the trainer"


def test_loading_may_take_reward_timeout_s_and_no_longer(tmp_path):
    def slow_module(seconds: float, name: str):
        return write(tmp_path, f"""
            import time
            time.sleep({seconds})
            def reward(prompt, completion, **row):
                return 1.0
        """, name)

    with FileReward(slow_module(1.0, "one_second.py"), timeout_s=3) as source:  # within 3 s (once: always 60 s)
        assert source.score(["p"], ["c"], [{}]) == [1.0]
    start = time.monotonic()
    with pytest.raises(UserError, match=r"took longer than 0\.5 s.*reward\.timeout_s"):
        FileReward(slow_module(10.0, "ten_seconds.py"), timeout_s=0.5)
    assert time.monotonic() - start < 5  # it gave up at the timeout, long before the module finished loading


def test_the_worker_leads_its_own_process_group_and_session(tmp_path):
    path = write(tmp_path, """
        import os
        def reward(prompt, completion, **row):
            return os.getpid() * 10 + (os.getpgid(0) == os.getpid()) + (os.getsid(0) == os.getpid())
    """)
    with FileReward(path) as source:
        value = int(source.score(["p"], ["c"], [{}])[0])
    assert value % 10 == 2 and value // 10 != os.getpid()
    assert os.getpgid(0) != value // 10


def test_the_worker_starts_without_torch():
    """The worker interpreter imports only what its entry point needs: no torch, no transformers (a restarted
    worker starts in a fraction of a second). The reward-model names of posttrain.rewards load on first use."""
    code = ("import sys; from posttrain.rewards.worker import _worker_main; import posttrain.rewards as r; "
            "print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules)); "
            "r.ModelReward; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.split("\n")
    assert out[:2] == ["[]", "True"], out
