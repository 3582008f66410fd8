"""Run untrusted code — model-written programs, code rewards' tests — in a contained child process (DESIGN §3).

    result = sandbox.run("print(input()[::-1])", stdin="abc", limits=Limits(wall_s=5))
    result.stdout, result.exit_code, result.limit_hit      # ('cba\\n', 0, None)

What contains the code, and what it stops (Linux; each is measured in tests/test_sandbox.py):

    process group, session   the child leads its own; a timeout or any error kills the whole group
    PID namespace            the child's processes live in a namespace whose init dies with the call: the kernel then
                             kills every process in it — daemons, double forks and setsid escapes included
    parent-death signals     trainer dies (even by SIGKILL) → the supervisor dies → the namespace's init dies → all
    network namespace        only a loopback device that is down: no connection anywhere, 127.0.0.1 included
    mount namespace          the whole file system read-only (mount_setattr, Linux 5.12+), except fresh tmpfs
                             mounts on /tmp, /var/tmp and /dev/shm (private, size-capped, gone with the call); the
                             work directory is on that /tmp
    user (as root)           the code runs as a uid of its own (no such user exists), so RLIMIT_NPROC counts exactly
                             its processes and it can read only what any user can; a directory on the way to the
                             Python installation that others cannot enter (/root, mode 700) is replaced by an empty
                             one into which only the installation is bound
    rlimits                  RLIMIT_CPU (SIGXCPU), RLIMIT_AS (MemoryError), RLIMIT_FSIZE (EFBIG), RLIMIT_NPROC (fork
                             fails with EAGAIN), RLIMIT_CORE 0
    environment              scrubbed: PATH, HOME (= the work directory), TMPDIR, LANG; nothing of the trainer's
    wall clock, output       past wall_s, or past max_output_bytes on stdout or stderr, the run is killed

How the namespaces are made depends on who runs the trainer. As root: unshare(NEWNET|NEWPID|NEWNS), then the code
drops to its own uid. As another user, where the kernel allows unprivileged user namespaces:
unshare(NEWUSER|NEWNET|NEWPID|NEWNS) with the user's own uid mapped; RLIMIT_NPROC then counts every process of that
user (a per-uid count, in every namespace), so it is set to the user's current count plus `nproc`. Where no
namespace can be made (or with Limits(isolate=False)), the run still happens, with what can be enforced and said so
in the result: `network_isolated`, `pid_isolated` and `filesystem_isolated` are False, the work directory is a real
temporary directory (removed after), and the supervisor, a child subreaper (PR_SET_CHILD_SUBREAPER), kills every
descendant it can find when the call ends or the trainer dies. Measured on Linux 6.18 as root and as an ordinary
user: both get all three namespaces; one call costs about 0.13 s.

The process tree of one call (S runs supervisor.py as a script, `python -I -S supervisor.py`, with only the standard
library: no torch, nothing of the trainer's state):

    trainer ── S supervisor (own session; namespaces; reports) ── I init of the PID namespace ── U the code

Why a supervisor at all: the trainer may run torch's thread pools, and forking such a process is unsafe; S is a
fresh interpreter, so it can fork freely, and it is the only process that can make the namespaces for its
children. A limit that stops the code shows in `limit_hit`, read from the exit signal, the CPU time used and the
code's last error line (MemoryError, "File too large", "Resource temporarily unavailable"); code that catches
such an error and exits quietly is reported by its exit code alone.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

LIMITS = ("cpu", "memory", "fsize", "nproc", "wall", "output")


@dataclass
class Limits:
    """What one run may use. The defaults suit a unit test of a small function."""

    wall_s: float = 10.0
    """Seconds of wall-clock time; past them every process of the run is killed (limit_hit "wall")."""
    cpu_s: float = 10.0
    """CPU seconds (RLIMIT_CPU, whole seconds, rounded up)."""
    memory_mb: int = 1024
    """Address space per process, MiB (RLIMIT_AS): a larger allocation raises MemoryError."""
    fsize_mb: int = 16
    """Largest file a process may write, MiB (RLIMIT_FSIZE); the private /tmp holds four times that (then ENOSPC)."""
    nproc: int = 64
    """Processes (and threads) the code may run at once (RLIMIT_NPROC)."""
    max_output_bytes: int = 1 << 20
    """Bytes kept of stdout and of stderr each; more ends the run (limit_hit "output")."""
    isolate: bool = True
    """Use namespaces where the kernel allows (false: only rlimits, process group and subreaper)."""


@dataclass
class SandboxResult:
    """What happened to one run.

    exit_code      the code's exit status; None when a signal ended it (then `signal` says which)
    timed_out      it ran past Limits.wall_s and was killed
    limit_hit      the resource that stopped it: one of LIMITS, or None
    network_isolated, pid_isolated, filesystem_isolated   whether a network / PID / mount namespace (read-only
                   mounts, private /tmp) contained it (False: the kernel refused, or Limits.isolate was false)
    error          why the code could not be started at all (e.g. the interpreter is unreachable for its uid)
    """

    exit_code: int | None
    signal: int | None
    timed_out: bool
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    limit_hit: str | None
    wall_s: float
    cpu_s: float
    network_isolated: bool
    pid_isolated: bool
    filesystem_isolated: bool
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.limit_hit is None and self.error is None


# ---------------------------------------------------------------------------------------------------------------------
# Process helpers, shared with the user reward worker (posttrain.rewards)
# ---------------------------------------------------------------------------------------------------------------------

_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> bool:
    return sys.platform.startswith("linux") and _libc().prctl(option, value, 0, 0, 0) == 0


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL, exit_if_orphaned: bool = True) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies (PR_SET_PDEATHSIG; Linux), then check that
    the parent is still `parent_pid` — it may have died before the request. An orphan exits at once
    (exit_if_orphaned) or gets False back. The signal comes when the parent *thread* that started this process ends:
    start such children from a thread that lives as long as they should."""
    _prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() == parent_pid:
        return True
    if exit_if_orphaned:
        os._exit(1)
    return False


def kill_group(pgid: int) -> None:
    """SIGKILL every process of the group; nothing when it is already gone."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _stat(pid: str) -> tuple[str, int] | None:
    """(state, parent PID) of a process from /proc, None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def kill_descendants(root: int) -> None:
    """SIGKILL every live descendant of `root`, again and again until none is left (a process that forks while
    being killed leaves children, which the subreaper `root` inherits and the next round finds)."""
    for _ in range(100):
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            stat = _stat(entry) if entry.isdigit() else None
            if stat is not None and stat[0] != "Z":
                children.setdefault(stat[1], []).append(int(entry))
        found, todo = [], list(children.get(root, []))
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        if not found:
            return
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap_children()
        time.sleep(0.005)


def _reap_children() -> None:
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


# ---------------------------------------------------------------------------------------------------------------------
# The trainer's side: start the supervisor, feed it, read the output with caps, enforce the wall clock
# ---------------------------------------------------------------------------------------------------------------------

def run(code: str | None = None, *, path: str | Path | None = None, stdin: str = "",
        files: dict[str, str] | None = None, args: list[str] = (), limits: Limits | None = None) -> SandboxResult:
    """Run Python `code` (or the file at `path`) in the sandbox as `python -I main.py ARGS`, with `stdin` as its
    standard input and `files` (name → text, e.g. tests) beside it in the work directory."""
    from posttrain.errors import ConfigError

    limits = limits or Limits()
    if (code is None) == (path is None):
        raise ConfigError("sandbox.run needs exactly one of code= and path=")
    if not (limits.wall_s > 0 and limits.cpu_s > 0 and limits.memory_mb > 0 and limits.fsize_mb > 0
            and limits.nproc > 0 and limits.max_output_bytes > 0):
        raise ConfigError(f"every sandbox limit must be positive, got {limits}")
    program = code if code is not None else Path(path).read_text()
    spec = {"files": {**(files or {}), "main.py": program}, "stdin": stdin, "args": list(args),
            "limits": asdict(limits), "python": sys.executable, "prefixes": _python_paths()}
    status_read, status_write = os.pipe()
    start = time.monotonic()
    supervisor = [sys.executable, "-I", "-S", str(Path(__file__).resolve().with_name("supervisor.py")), str(status_write),
                  str(os.getpid())]
    proc = subprocess.Popen(supervisor, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            pass_fds=(status_write,), start_new_session=True, env={"PATH": os.defpath})
    os.close(status_write)
    try:
        proc.stdin.write(json.dumps(spec).encode())
        proc.stdin.close()
        streams, status, timed_out = _collect(proc, status_read, start + limits.wall_s, limits.max_output_bytes)
    finally:
        _stop(proc)
        os.close(status_read)
    (out, out_cut), (err, err_cut) = streams
    report = {}
    for line in status.decode().splitlines():
        report.update(json.loads(line))
    return _result(report, out, err, out_cut, err_cut, timed_out, time.monotonic() - start, limits)


def _python_paths() -> list[str]:
    """Directories the code's interpreter reads: it must be able to reach them when it runs as a uid of its own."""
    import sysconfig

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable),
             *(sysconfig.get_paths().get(k, "") for k in ("stdlib", "platstdlib", "purelib", "platlib"))}
    return sorted(os.path.realpath(p) for p in paths if p)


def _collect(proc, status_fd: int, deadline: float, cap: int):
    """Read stdout, stderr and the status pipe until all three close, keeping at most `cap` bytes per stream.
    Returns ([(stdout, over cap), (stderr, over cap)], status bytes, timed out); past the deadline or the cap the
    run is stopped at once (the caller then kills what is left)."""
    selector = selectors.DefaultSelector()
    kept = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), status_fd: bytearray()}
    over = dict.fromkeys(kept, False)
    for fd in kept:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    timed_out = False
    while selector.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        for key, _ in selector.select(left):
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fd)
                continue
            room = len(chunk) if key.fd == status_fd else cap - len(kept[key.fd])
            kept[key.fd] += chunk[:room]
            over[key.fd] = over[key.fd] or len(chunk) > room
        if any(over.values()):
            break
    selector.close()
    streams = [(kept[fd].decode(errors="replace"), over[fd]) for fd in (proc.stdout.fileno(), proc.stderr.fileno())]
    return streams, bytes(kept[status_fd]), timed_out


def _stop(proc: subprocess.Popen) -> None:
    """End the supervisor and everything under it: SIGTERM lets it kill its descendants (it is their subreaper),
    then the whole group is killed anyway; the supervisor is reaped last, so its group ID cannot be reused
    meanwhile."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            pass
    kill_group(proc.pid)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()


def _result(report: dict, out: str, err: str, out_cut: bool, err_cut: bool, timed_out: bool, wall: float,
            limits: Limits) -> SandboxResult:
    status = report.get("status")
    exit_code = sig = None
    if status is not None:
        exit_code = os.waitstatus_to_exitcode(status)
        if exit_code < 0:
            exit_code, sig = None, -exit_code
    if status is None and not (timed_out or out_cut or err_cut) and "error" not in report:
        report["error"] = "sandbox: the supervisor ended without a report"
    cpu = report.get("cpu_s", 0.0)
    result = SandboxResult(exit_code, sig, timed_out, out, err, out_cut, err_cut, None, wall, cpu,
                           report.get("network_isolated", False), report.get("pid_isolated", False),
                           report.get("filesystem_isolated", False), report.get("error"))
    result.limit_hit = _limit_hit(result, limits)
    return result


def _limit_hit(r: SandboxResult, limits: Limits) -> str | None:
    """Which limit stopped the run (see the module docstring for how it is told)."""
    if r.stdout_truncated or r.stderr_truncated:
        return "output"
    if r.timed_out:
        return "wall"
    if r.signal == signal.SIGXCPU or (r.signal == signal.SIGKILL and r.cpu_s >= math.ceil(limits.cpu_s)):
        return "cpu"
    if r.signal == signal.SIGXFSZ:
        return "fsize"
    if r.exit_code in (None, 0):
        return None
    tail = r.stderr[-2000:]
    for marker, limit in (("MemoryError", "memory"), ("[Errno 12] Cannot allocate memory", "memory"),
                          ("[Errno 27] File too large", "fsize"), ("[Errno 28] No space left", "fsize"),
                          ("[Errno 11] Resource temporarily unavailable",
                                                                   "nproc")):
        if marker in tail:
            return limit
    return None
