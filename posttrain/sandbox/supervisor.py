"""The sandbox's supervisor: the process `sandbox.run` starts as `python -I -S supervisor.py STATUS_FD TRAINER_PID`
(the standard library only: no torch, nothing of the trainer's state). It reads the run's spec on stdin, makes the
namespaces, forks the init of the PID namespace and, under it, the code; it reports on STATUS_FD. What each step
contains is told in the package docstring (posttrain/sandbox/__init__.py)."""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script under -I: the package is not on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from posttrain.sandbox import (_PR_SET_CHILD_SUBREAPER, _PR_SET_PDEATHSIG, Limits, _libc, _prctl,  # noqa: E402
                               die_with_parent, kill_descendants)

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 2, 4, 4096, 16384, 1 << 18
_SYS_MOUNT_SETATTR, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = 442, 0x8000, 1  # x86-64 and the generic syscall table
_OWN_UID_BASE = 2_000_000_000  # as root the code runs as this + the supervisor's PID: a uid no one else has
_WORK = "/tmp/sandbox"


def _libc_call(name: str, *args) -> None:
    if getattr(_libc(), name)(*args) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{name}: {os.strerror(errno)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _libc_call("mount", source and source.encode(), target.encode(), fstype and fstype.encode(),
               ctypes.c_ulong(flags), data and data.encode())


def _supervise(status_fd: int, trainer_pid: int) -> None:
    """S: die with the trainer, read the spec, make the namespaces and the file system, start I (or U directly
    when there is no PID namespace), report, and on SIGTERM or trainer death kill every descendant."""
    os.set_inheritable(status_fd, False)
    _stop_on_term(lambda: kill_descendants(os.getpid()))
    die_with_parent(trainer_pid, signal.SIGTERM)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    spec = json.loads(sys.stdin.buffer.read())
    limits = Limits(**spec["limits"])
    root = os.geteuid() == 0
    spec["uid"] = _OWN_UID_BASE + os.getpid() if root else os.getuid()
    spec["nproc"] = limits.nproc if root else _tasks_of_uid(os.getuid()) + limits.nproc  # see the module docstring
    isolated = limits.isolate and _unshare(root)
    private_fs = isolated and _private_file_system(spec["prefixes"], root, 4 * limits.fsize_mb)
    with os.fdopen(status_fd, "w", buffering=1) as status:
        status.write(json.dumps({"network_isolated": isolated, "pid_isolated": isolated,
                                 "filesystem_isolated": private_fs}) + "\n")
        try:
            work = _prepare_files(spec, private_fs, root)
        except OSError as e:
            status.write(json.dumps({"error": f"sandbox: could not prepare the work directory: {e}"}) + "\n")
            return
        try:
            if isolated:
                init = os.fork()
                if init == 0:
                    _init(spec, limits, work, status, root)
                # the init's exit returns only once the kernel has ended every other process of the namespace, so
                # waiting for it (here and on SIGTERM) means that nothing of the run is left when this one exits
                _stop_on_term(lambda: (os.kill(init, signal.SIGKILL), os.waitpid(init, 0)))
                os.waitpid(init, 0)
            else:
                status.write(json.dumps(_run_code(spec, limits, work, root)) + "\n")
                kill_descendants(os.getpid())
        finally:
            if not private_fs:  # a private tmpfs goes with the namespace; a real directory must be removed
                import shutil

                shutil.rmtree(work, ignore_errors=True)


def _stop_on_term(kill) -> None:
    """On SIGTERM (the trainer's stop, or its death) run `kill`, then exit."""
    signal.signal(signal.SIGTERM, lambda *_: (kill(), os._exit(1)))


def _unshare(root: bool) -> bool:
    """New network, PID and mount namespaces (plus a user namespace when not root); False when the kernel refuses."""
    flags = _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWNS | (0 if root else _CLONE_NEWUSER)
    uid, gid = os.getuid(), os.getgid()
    try:
        _libc_call("unshare", flags)
        if not root:
            Path("/proc/self/setgroups").write_text("deny")
            Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
            Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
        _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    except OSError:
        return False
    return True


def _prepare_files(spec: dict, private_fs: bool, root: bool) -> str:
    """The work directory with the spec's files: on the private tmpfs /tmp, else a fresh temp dir."""
    if private_fs:
        work = _WORK
        os.mkdir(work, 0o700)
    else:
        import tempfile

        work = tempfile.mkdtemp(prefix="posttrain-sandbox-")
    for name, text in spec["files"].items():
        target = Path(work, name)
        if target.resolve().parent != Path(work).resolve():
            raise OSError(f"file name {name!r} is not a plain name in the work directory")
        target.write_text(text)
    stdin = Path(work, ".stdin")
    stdin.write_text(spec["stdin"])
    if root:
        for p in (work, *(str(Path(work, n)) for n in spec["files"]), str(stdin)):
            os.chown(p, spec["uid"], spec["uid"])
    return work


def _private_file_system(prefixes: list[str], root: bool, size_mb: int) -> bool:
    """In the new mount namespace: every mount read-only (mount_setattr, Linux 5.12+), then fresh writable tmpfs
    mounts on the world-writable directories. As root, first open the way to the Python installation for the
    code's own uid (_open_the_way). A Python installation inside one of those directories (a virtual environment
    made in /tmp) is bound back, read-only, at its own path. False, with nothing changed, when the kernel cannot make
    the mounts read-only."""
    masked = [d for d in ("/tmp", "/var/tmp", "/dev/shm") if os.path.isdir(d) and not os.path.islink(d)]
    inside = sorted({p for p in prefixes if os.path.isdir(p) and any(p.startswith(d + "/") for d in masked)})
    inside = [p for p in inside if not any(p.startswith(q + "/") for q in inside)]  # outermost only
    try:
        if root:
            _open_the_way(prefixes)
        attr = (ctypes.c_uint64 * 4)(_MOUNT_ATTR_RDONLY, 0, 0, 0)
        if _libc().syscall(_SYS_MOUNT_SETATTR, -100, b"/", _AT_RECURSIVE, ctypes.byref(attr),
                           ctypes.sizeof(attr)) != 0:
            return False
        kept = [(path, os.open(path, os.O_PATH)) for path in inside]  # before the tmpfs hides them
        for directory in masked:
            _mount("tmpfs", directory, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={size_mb}m,mode=1777")
        for path, fd in kept:  # a bind of a read-only mount stays read-only
            os.makedirs(path, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, _MS_BIND | _MS_REC)
            os.close(fd)
    except OSError:
        return False
    return True


def _open_the_way(paths: list[str]) -> None:
    """For each directory on the way to `paths` that others may not enter (no o+x, e.g. /root 700): cover it with an
    empty tmpfs and bind back only the entries on the way, so the code's uid reaches the interpreter and nothing else
    of that directory."""
    needed: dict[str, set[str]] = {}
    for path in paths:
        parts = Path(path).parts
        for i in range(1, len(parts)):
            ancestor = str(Path(*parts[:i]))
            if not os.stat(ancestor).st_mode & 0o001:
                needed.setdefault(ancestor, set()).add(parts[i])
    for ancestor in sorted(needed, key=len):
        kept = {name: os.open(os.path.join(ancestor, name), os.O_PATH) for name in needed[ancestor]}
        _mount("tmpfs", ancestor, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=64k,mode=0755")
        for name, fd in kept.items():
            target = os.path.join(ancestor, name)
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.mkdir(target)
            else:
                Path(target).touch()
            _mount(f"/proc/self/fd/{fd}", target, None, _MS_BIND | _MS_REC)
            os.close(fd)


def _init(spec: dict, limits: Limits, work: str, status, root: bool) -> None:
    """I, PID 1 of the new namespace: when it exits the kernel kills every process left in the namespace. It dies
    with the supervisor, mounts a /proc that shows only the namespace, runs the code and reports."""
    try:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != 0:  # the supervisor is outside the namespace: a parent we can see means it is gone
            os._exit(1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        try:  # in a mount namespace of its own, so the supervisor keeps seeing every process of the machine
            _libc_call("unshare", _CLONE_NEWNS)
            _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV)
        except OSError:
            pass
        status.write(json.dumps(_run_code(spec, limits, work, root)) + "\n")
        status.flush()
    finally:
        os._exit(0)


def _run_code(spec: dict, limits: Limits, work: str, root: bool) -> dict:
    """Fork U, which sets the limits, drops to its own uid (as root) and execs the interpreter on main.py; wait for
    it. Returns {"status": wait status, "cpu_s": CPU seconds} or {"error": why it could not start}.

    A failure before the code runs comes back through a close-on-exec pipe: a successful exec closes it unwritten,
    so the code itself cannot fake a start-up error (which would make its sample unscorable instead of wrong)."""
    errors_read, errors_write = os.pipe()  # close-on-exec, as every descriptor Python makes
    pid = os.fork()
    if pid == 0:
        os.close(errors_read)
        _become_code(spec, limits, work, root, errors_write)
    os.close(errors_write)
    with os.fdopen(errors_read, "rb") as errors:
        error = errors.read().decode()
    _, status, usage = os.wait4(pid, 0)
    if error:
        return {"error": error}
    return {"status": status, "cpu_s": usage.ru_utime + usage.ru_stime}


def _become_code(spec: dict, limits: Limits, work: str, root: bool, errors: int) -> None:
    """U: in the work directory, with stdin from the spec, the limits set, a scrubbed environment: exec Python."""
    import resource

    try:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        os.chdir(work)
        fd = os.open(".stdin", os.O_RDONLY)
        os.unlink(".stdin")
        os.dup2(fd, 0)
        os.close(fd)
        cpu = math.ceil(limits.cpu_s)
        for kind, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, limits.memory_mb << 20),
                            (resource.RLIMIT_FSIZE, limits.fsize_mb << 20), (resource.RLIMIT_NPROC, spec["nproc"]),
                            (resource.RLIMIT_CORE, 0)):
            resource.setrlimit(kind, value if isinstance(value, tuple) else (value, value))
        if root:
            uid = spec["uid"]
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
               "PYTHONDONTWRITEBYTECODE": "1"}
        os.execve(spec["python"], [spec["python"], "-I", "main.py", *spec["args"]], env)
    except BaseException as e:
        try:
            os.write(errors, f"sandbox: could not start the code: {type(e).__name__}: {e}".encode())
        finally:
            os._exit(127)


def _tasks_of_uid(uid: int) -> int:
    """Processes and threads of `uid` now: what RLIMIT_NPROC counts for it."""
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry}/task"))
            except OSError:
                pass
    return count


if __name__ == "__main__":
    _supervise(int(sys.argv[1]), int(sys.argv[2]))
