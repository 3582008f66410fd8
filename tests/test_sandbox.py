"""posttrain.sandbox: untrusted code runs with limits, in namespaces where the kernel allows, and nothing of it
survives the call. The escape corpus: each attempt is bounded and aimed only at this machine; each must be
contained (README, "Sandbox", has the table of attempt → how it is contained)."""

import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from posttrain import sandbox
from posttrain.errors import ConfigError
from posttrain.sandbox import Limits

REPO = Path(__file__).resolve().parents[1]


def code(source: str) -> str:
    return textwrap.dedent(source)


def with_marker(marker: str) -> list[int]:
    """Live (not zombie) processes whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes() and \
                    (entry / "stat").read_text().rpartition(")")[2].split()[0] != "Z":
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def isolated():
    """Whether this machine gives the sandbox its namespaces (root, or unprivileged user namespaces)."""
    return sandbox.run("pass").pid_isolated


# ---- the basics -----------------------------------------------------------------------------------------------------

def test_stdin_files_arguments_output_and_exit_code():
    result = sandbox.run(code("""
        import sys
        print(input()[::-1], open("data.txt").read(), sys.argv[1:])
        print("to stderr", file=sys.stderr)
        sys.exit(3)
    """), stdin="abc\n", files={"data.txt": "hello"}, args=["x", "y"])
    assert result.stdout == "cba hello ['x', 'y']\n" and result.stderr == "to stderr\n"
    assert (result.exit_code, result.signal, result.timed_out, result.limit_hit, result.error) == (3, None, False,
                                                                                                 None, None)
    assert not result.ok and sandbox.run("pass").ok


def test_a_file_runs_like_a_string(tmp_path):
    path = tmp_path / "prog.py"
    path.write_text("print(6 * 7)")
    assert sandbox.run(path=path).stdout == "42\n"


def test_each_run_gets_a_fresh_work_directory_as_cwd_and_home():
    first = sandbox.run("import os; open('left.txt', 'w').write('x'); print(os.getcwd(), os.environ['HOME'])")
    second = sandbox.run("import os; print(os.path.exists('left.txt'), os.listdir('.'))")
    cwd, home = first.stdout.split()
    assert cwd == home and second.stdout == "False ['main.py']\n"
    if not first.pid_isolated:  # a real temp directory: removed after the call
        assert not os.path.exists(cwd)


def test_the_code_cannot_pass_itself_off_as_a_start_up_failure():
    # `error` (the sandbox could not start the code) makes a code reward's sample unscorable rather than wrong, so
    # it comes through a close-on-exec pipe that the code never sees, not through anything the code can write
    result = sandbox.run("open('.exec_error', 'w').write('fake'); import os; os._exit(127)")
    assert (result.error, result.exit_code) == (None, 127)


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="exactly one of code= and path="):
        sandbox.run()
    with pytest.raises(ConfigError, match="positive"):
        sandbox.run("pass", limits=Limits(wall_s=0))


@pytest.mark.parametrize("source, limits, hit", [
    ("while True: pass", Limits(cpu_s=1, wall_s=10), "cpu"),
    ("while True: pass", Limits(cpu_s=10, wall_s=1), "wall"),
    ("import time; time.sleep(60)", Limits(wall_s=1), "wall"),
    ("x = bytearray(1 << 30)", Limits(memory_mb=256), "memory"),
    ("open('big', 'wb').write(b'x' * (2 << 20))", Limits(fsize_mb=1), "fsize"),
    ("import os\nfor _ in range(100): os.fork() or __import__('time').sleep(5)", Limits(nproc=8), "nproc"),
    ("while True: print('y' * 1000)", Limits(max_output_bytes=10_000), "output"),
], ids=["cpu", "wall-busy", "wall-sleeping", "memory", "fsize", "nproc", "output"])
def test_each_limit_stops_the_code_and_is_named(source, limits, hit):
    start = time.monotonic()
    result = sandbox.run(source, limits=limits)
    assert result.limit_hit == hit, result
    assert time.monotonic() - start < 8
    assert result.timed_out == (hit == "wall")
    if hit == "output":
        assert result.stdout_truncated and len(result.stdout) == 10_000


# ---- the escape corpus ----------------------------------------------------------------------------------------------

def test_escape_fork_bomb_is_capped_by_nproc_and_leaves_nothing():
    marker = f"posttrain-bomb-{uuid.uuid4().hex}"
    result = sandbox.run(code("""
        import os, time
        forks = 0
        for _ in range(10_000):
            try:
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
            except OSError:
                break
            forks += 1
        print(forks)
    """), args=[marker], limits=Limits(nproc=64, wall_s=10))
    assert int(result.stdout) < 64
    assert not with_marker(marker)


def test_escape_memory_hog_gets_memory_error_and_the_test_process_is_unharmed():
    result = sandbox.run("blocks = []\nwhile True: blocks.append(bytearray(50 << 20))", limits=Limits(memory_mb=512))
    assert result.limit_hit == "memory" and "MemoryError" in result.stderr


def test_escape_infinite_loop_is_killed_at_the_wall_clock():
    start = time.monotonic()
    result = sandbox.run("while True: pass", limits=Limits(wall_s=1))
    assert result.timed_out and result.limit_hit == "wall" and time.monotonic() - start < 4


def test_escape_huge_output_is_capped_and_the_run_ended():
    result = sandbox.run("import sys\nwhile True: sys.stdout.write('z' * 65536)",
                         limits=Limits(max_output_bytes=1 << 16, wall_s=10))
    assert result.limit_hit == "output" and result.stdout_truncated and len(result.stdout) == 1 << 16
    assert result.wall_s < 5


def test_escape_writing_outside_the_work_directory_fails_or_stays_inside(tmp_path):
    targets = [tmp_path / "escaped.txt", REPO / "escaped.txt", Path("/tmp") / f"escaped-{uuid.uuid4().hex}",
               Path.home() / "escaped.txt"]
    result = sandbox.run(code("""
        import sys
        for target in sys.argv[1:]:
            try:
                open(target, "w").write("out")
                print("wrote", target)
            except OSError as e:
                print("refused", target, e.errno)
    """), args=[str(t) for t in targets])
    if not result.filesystem_isolated:
        pytest.skip("no private mount namespace here (filesystem_isolated=False): only file permissions guard it")
    assert result.exit_code == 0, result
    assert not any(t.exists() for t in targets), result.stdout


def test_escape_reading_the_environment_finds_no_secret(monkeypatch):
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("POSTTRAIN_TEST_SECRET", secret)
    result = sandbox.run(code("""
        import os, sys
        found = [k for k, v in os.environ.items() if sys.argv[1] in v]
        for pid in os.listdir("/proc"):
            try:
                if sys.argv[1].encode() in open(f"/proc/{pid}/environ", "rb").read():
                    found.append(pid)
            except OSError:
                pass
        print(found)
    """), args=[secret[:6]])  # the prefix only: the full secret must not be in the code's own argv
    assert result.stdout == "[]\n", result


def test_escape_socket_to_a_local_listener_cannot_connect(isolated):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    try:
        result = sandbox.run(code("""
            import socket, sys
            try:
                socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).sendall(b"leak")
                print("connected")
            except OSError as e:
                print("refused", e.errno)
        """), args=[str(port)])
        if not result.network_isolated:
            pytest.skip("no network namespace here (the result says network_isolated=False)")
        assert result.stdout.startswith("refused"), result
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


def test_escape_a_daemon_double_fork_and_setsid_does_not_outlive_the_call():
    marker = f"posttrain-daemon-{uuid.uuid4().hex}"
    result = sandbox.run(code("""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(30)  # the daemon
            os._exit(0)
        time.sleep(0.3)
        print("parent done")
    """), args=[marker])
    assert result.stdout == "parent done\n"
    assert not with_marker(marker)


def test_escape_setsid_leaving_the_group_does_not_outlive_a_timeout():
    marker = f"posttrain-setsid-{uuid.uuid4().hex}"
    result = sandbox.run(code("""
        import os, time
        if os.fork() == 0:
            os.setsid()  # out of the process group that a timeout kills
            time.sleep(30)
        time.sleep(30)
    """), args=[marker], limits=Limits(wall_s=1))
    assert result.timed_out
    assert not with_marker(marker)


def test_escape_signals_to_the_parent_and_everyone_leave_the_test_process_alive(isolated):
    if not isolated:
        pytest.skip("without a PID namespace kill(-1) would reach this user's processes")
    result = sandbox.run(code("""
        import os, signal, sys
        for name, target, sig in (("parent", os.getppid(), signal.SIGTERM), ("test", int(sys.argv[1]), signal.SIGTERM),
                                  ("runner", int(sys.argv[2]), signal.SIGTERM), ("all", -1, signal.SIGKILL)):
            try:
                os.kill(target, sig)  # -1: everything this process may signal
                print(name, "sent")
            except OSError as e:
                print(name, "refused", e.errno)
    """), args=[str(os.getpid()), str(os.getppid())])
    os.kill(os.getpid(), 0)  # still here
    # the two PIDs outside do not exist in the namespace; the parent is its init, which ignores signals from inside
    # (and, as root, belongs to another uid than the code)
    assert result.exit_code == 0 and "test refused 3\nrunner refused 3\n" in result.stdout, result


TRAINER = """
import sys
from posttrain import sandbox
sandbox.run("import os, time\\nif os.fork() == 0: os.setsid()\\nwhile True: pass", args=[sys.argv[1]],
            limits=sandbox.Limits(wall_s=600, cpu_s=600))
"""


def test_sigkill_of_the_trainer_leaves_no_sandboxed_process():
    marker = f"posttrain-orphan-{uuid.uuid4().hex}"
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, marker], cwd=REPO)
    deadline = time.monotonic() + 20
    while len(with_marker(marker)) < 3 and time.monotonic() < deadline:  # the code, its setsid child and the trainer
        time.sleep(0.05)
    assert len(with_marker(marker)) >= 3
    trainer.kill()
    trainer.wait()
    deadline = time.monotonic() + 2
    while with_marker(marker) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not with_marker(marker)


def test_an_error_in_the_trainer_during_a_run_kills_everything_the_run_started(monkeypatch):
    marker = f"posttrain-error-{uuid.uuid4().hex}"

    def collect_then_fail(proc, *args):
        deadline = time.monotonic() + 10
        while len(with_marker(marker)) < 2 and time.monotonic() < deadline:  # the code and its setsid child run
            time.sleep(0.02)
        raise KeyboardInterrupt

    monkeypatch.setattr(sandbox, "_collect", collect_then_fail)
    with pytest.raises(KeyboardInterrupt):
        sandbox.run("import os, time\nif os.fork() == 0: os.setsid()\ntime.sleep(30)", args=[marker])
    assert not with_marker(marker)
