"""User reward code in a worker process: `FileReward("my_reward.py", "reward", timeout_s=5)`.

Why a separate process for user code: a bug there must not crash or hang the run. A call that outlives its timeout is
killed with its process (a thread cannot be killed), and the next call gets a fresh worker. The worker is a fresh
interpreter (subprocess: fork + exec at once), never a bare fork: forking a process that runs torch's thread pools can
deadlock the child.

Nothing the user's code starts outlives it. The worker leads its own session and process group, so killing the group
(`killpg`) ends the processes its reward function started too; that is how a timeout, a crash, `close()` and the end of
the run end it. When the trainer itself dies (even by SIGKILL, which runs no clean-up) the kernel kills the worker: it
asked for SIGKILL as its parent-death signal (prctl PR_SET_PDEATHSIG) — no watchdog thread, which could not run while
user code holds the GIL. A tiny second process in the group (the group reaper, forked before any user code) gets a
signal when the worker dies and kills the whole group. A child that leaves the group (setsid, a daemon) is beyond
this; code that does that deliberately belongs in posttrain.sandbox, whose PID namespace ends every descendant.

The worker interpreter runs `from posttrain.rewards.worker import _worker_main; _worker_main()`. What that imports —
this module, the contract, posttrain.rewards' own __init__ — imports no torch, so a worker starts in a fraction of a
second instead of several, which matters each time a hang restarts it (tests/rewards/test_reward_worker.py checks it).
"""

from __future__ import annotations

import importlib.util
import multiprocessing.connection
import os
import signal
import subprocess
import sys
from pathlib import Path

from posttrain.errors import ConfigError, UserError
from posttrain.rewards.builtin import BUILTIN_REWARDS, builtin_reward
from posttrain.rewards.contract import Outcome, RewardSource, describe_error, outcome_of, row_kwargs, short_repr
from posttrain.sandbox import die_with_parent, kill_group


class FileReward(RewardSource):
    """User reward code from a Python file, run in a worker process with a timeout per call.

    path, function: the file and the function in it (config: reward.function = "path/to/file.py:function").
        Per sample it is called as function(prompt, completion, **row); with batched=True once per batch as
        function(prompts=[…], completions=[…], **columns) where each column is a list (TRL's convention), and must
        return one value per sample.
    timeout_s: the longest one call may take (batched: the whole batch's call). Past it the worker is killed, the
        sample (batched: every sample of the batch) is unscored as "timeout", and the next call starts a new worker.
    name: the source's name in metrics; default the file's stem.

    The file is loaded when the source is built, so a missing file, a syntax error or a missing function stops the
    run before training starts; its module-level code may take timeout_s too. The worker is started once and reused
    (one pipe round trip per sample, about 0.1 ms). It and every process it starts are killed on a timeout, a
    crash, close() and the trainer's death (see the module docstring) — the death of the thread that started it,
    to be exact (PR_SET_PDEATHSIG's rule): score from a thread that lives as long as the source.
    The file's directory is put on the worker's sys.path, so the file can import modules beside it.
    """

    BOOT_TIMEOUT_S = 60.0  # a fresh interpreter importing this module: a fraction of a second, unless the machine is
    # swamped; the user's module-level code then gets timeout_s of its own

    def __init__(self, path: str | Path, function: str = "reward", timeout_s: float = 10.0, batched: bool = False, *,
                 name: str | None = None):
        if not timeout_s > 0:
            raise ConfigError(f"reward.timeout_s must be positive, got {timeout_s}")
        self.path = Path(path).resolve()
        self.function, self.timeout_s, self.batched = function, timeout_s, batched
        self.name = name or Path(path).stem
        self._proc = self._conn = None
        self._check_file()
        self._start()

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> RewardSource:
        """From the config's "path/to/file.py:function" (no ":function": the function named `reward`) — or, for the
        name of a built-in reward (BUILTIN_REWARDS), that reward (builtin_reward)."""
        if spec in BUILTIN_REWARDS:
            return builtin_reward(spec, **kwargs)
        path, colon, function = spec.rpartition(":")
        if not colon or not function.isidentifier():  # no function named (a Windows drive's "C:" is not one)
            path, function = spec, "reward"
        return cls(path, function, **kwargs)

    def __repr__(self) -> str:
        return f"FileReward({str(self.path)!r}, {self.function!r}, timeout_s={self.timeout_s}, batched={self.batched})"

    # ---- scoring ----------------------------------------------------------------------------------------------------

    def outcomes(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[Outcome]:
        if self.batched:
            return self._batched_outcomes(prompts, completions, rows)
        out = []
        for prompt, completion, row in zip(prompts, completions, rows):
            reply, failure = self._request((prompt, completion, row_kwargs(row)))
            out.append(failure or Outcome(*reply))
        return out

    def _batched_outcomes(self, prompts, completions, rows) -> list[Outcome]:
        n = len(prompts)
        if n == 0:
            return []
        kwargs = [row_kwargs(row) for row in rows]
        keys = list(dict.fromkeys(k for row in kwargs for k in row))  # every column, in first-seen order
        columns = {k: [row.get(k) for row in kwargs] for k in keys}  # a row without the column gets None
        reply, failure = self._request((list(prompts), list(completions), columns))
        if failure is not None:
            return [failure] * n
        kind, payload = reply
        if kind == "failed":
            return [Outcome(*payload)] * n
        if kind == "not_a_list" or len(payload) != n:
            got = payload if kind == "not_a_list" else f"a list of {len(payload)} values"
            raise UserError(f"reward function {self.path}:{self.function} (batched) returned {got} for a batch of {n} "
                            f"completions; expected a list of {n} values — fix: return one value (or None) per "
                            "completion, in the order of `completions`")
        return [Outcome(*o) for o in payload]

    # ---- the worker -------------------------------------------------------------------------------------------------

    def _check_file(self) -> None:
        """Fail before starting any process on what can be seen from here: no such file, or a syntax error."""
        fix = f"set reward.function to 'path/to/file.py:{self.function}' with an existing file"
        if not self.path.is_file():
            raise UserError(f"reward function file {self.path} does not exist — fix: {fix}")
        try:
            compile(self.path.read_bytes(), str(self.path), "exec")
        except (SyntaxError, ValueError) as e:  # ValueError: null bytes in the source
            raise UserError(f"reward function file {self.path} has a syntax error: {describe_error(e)} — fix: "
                            "correct the file (python -m py_compile FILE shows the same error)") from None

    def _start(self) -> None:
        """Start a worker and wait until it has loaded the function: the interpreter's start does not count, the
        file's module-level code gets timeout_s. Loading errors become UserErrors naming the file."""
        conn, child_conn = multiprocessing.Pipe()
        package_root = str(Path(__file__).resolve().parents[2])  # the worker imports this very copy of posttrain
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen(
            [sys.executable, "-c", "from posttrain.rewards.worker import _worker_main; _worker_main()",
             str(child_conn.fileno()), str(self.path), self.function, str(int(self.batched)), str(os.getpid())],
            pass_fds=(child_conn.fileno(),), start_new_session=True, stdin=subprocess.DEVNULL, env=env)
        child_conn.close()  # only the worker holds its end: when it dies, our recv sees EOF instead of hanging
        try:
            reply = self._wait_for(conn, proc, self.BOOT_TIMEOUT_S, "starting the Python worker for",
                                   "the machine is overloaded; run again when it is not")
            if reply[0] == "loading":
                reply = self._wait_for(conn, proc, self.timeout_s, "loading the reward function file",
                                       "move slow set-up out of module level or make it lazy (done on the first "
                                       f"call), or raise reward.timeout_s (now {self.timeout_s:g})")
        except BaseException:
            _kill(proc, conn)
            raise
        if reply[0] != "ready":
            _kill(proc, conn)
            raise UserError(f"reward function file {self.path}: {reply[1]} — fix: {reply[2]}")
        self._proc, self._conn = proc, conn

    def _wait_for(self, conn, proc, seconds: float, what: str, fix: str) -> tuple:
        """The worker's next message, or a UserError when it takes longer than `seconds` or the worker exits."""
        try:
            if not conn.poll(seconds):
                raise UserError(f"{what} {self.path} took longer than {seconds:g} s — fix: {fix}")
            return conn.recv()
        except EOFError:
            raise UserError(f"the worker process exited while loading {self.path} (exit code {proc.wait()}; its error "
                            "output, if any, is printed above) — fix: check the file's module-level code (does it "
                            "call exit() or crash Python?)") from None

    def _request(self, message) -> tuple[object, Outcome | None]:
        """Send one call to the worker and wait at most timeout_s: (reply, None), or (None, the failure) when the
        call timed out or the worker died — either way the worker is gone and the next call starts a new one."""
        if self._proc is None or self._proc.poll() is not None:
            self._stop()
            self._start()
        try:
            self._conn.send(message)
            if not self._conn.poll(self.timeout_s):
                self._stop()
                return None, Outcome(None, "timeout", f"took longer than reward.timeout_s = {self.timeout_s:g} s "
                                                      "(the worker was restarted)")
            return self._conn.recv(), None
        except (EOFError, OSError):
            proc = self._proc
            self._stop()
            return None, Outcome(None, "exception", f"the worker process died (exit code {proc.returncode}) during "
                                                    "the call")

    def _stop(self) -> None:
        if self._proc is not None:
            _kill(self._proc, self._conn)
        self._proc = self._conn = None

    def close(self) -> None:
        """Shut the worker down (politely, then by force) with every process it started. Scoring again later starts
        a new one."""
        if self._proc is None:
            return
        try:
            self._conn.send(None)
            self._proc.wait(timeout=1.0)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self._stop()


def _kill(proc: subprocess.Popen, conn) -> None:
    """Kill the worker's process group — the worker, its reaper and whatever the user's code started — then reap the
    worker. In that order: an unreaped worker keeps its PID, so the group's ID cannot have been reused meanwhile."""
    kill_group(proc.pid)
    proc.kill()
    proc.wait()
    conn.close()


def _worker_main() -> None:
    """Entry point of the worker interpreter; argv: the pipe's fd, path, function, batched (0/1), the trainer's PID.

    First of all it arranges to die with the trainer (PR_SET_PDEATHSIG = SIGKILL, then a check that the trainer is
    still its parent — it may have died before the request was made) and starts the group reaper. Then it loads
    the function and serves calls."""
    fd, path, function, batched, parent_pid = sys.argv[1:]
    die_with_parent(int(parent_pid))
    _start_group_reaper(close_fd=int(fd))
    _serve(multiprocessing.connection.Connection(int(fd)), path, function, batched == "1")


def _start_group_reaper(close_fd: int) -> None:
    """Fork a process that kills this process group when the worker dies, however it dies (SIGKILL included): the
    parent-death signal kills the worker alone, not the children of the user's code.

    The reaper blocks SIGTERM, asks for it as its own parent-death signal and waits for it; then it kills the group,
    itself included. Forked before any user code runs, while the worker has no threads (so forking is safe)."""
    worker = os.getpid()
    if os.fork() != 0:
        return
    try:
        os.close(close_fd)  # the pipe to the trainer is the worker's: EOF there must mean the worker is gone
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        if die_with_parent(worker, signal.SIGTERM, exit_if_orphaned=False):
            signal.sigwait({signal.SIGTERM})
        os.killpg(0, signal.SIGKILL)
    finally:
        os._exit(0)


def _serve(conn, path: str, function: str, batched: bool) -> None:
    """The worker's loop: load the function, say "ready" (or why not), then answer calls until told to stop.

    Messages: ("loading",) once the interpreter is up, then ("ready",) or ("load_error", message, fix).
    Requests: (prompt, completion, row) → an Outcome as a tuple; batched: (prompts, completions, columns) →
    ("ok", [outcome tuples]) | ("failed", outcome tuple) | ("not_a_list", description).
    """
    conn.send(("loading",))
    try:
        fn = _load_function(path, function)
    except _LoadError as e:
        conn.send(("load_error", e.message, e.fix))
        return
    conn.send(("ready", None, None))
    call = _call_batched if batched else _call_one
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):  # the parent closed its end or died
            return
        if request is None:
            return
        conn.send(call(fn, path, *request))


class _LoadError(Exception):
    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.message, self.fix = message, fix


def _load_function(path: str, function: str):
    """Import the file as a module and return its `function`."""
    sys.path.insert(0, str(Path(path).parent))
    spec = importlib.util.spec_from_file_location(f"posttrain_user_reward_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as a regular import does (dataclasses in the file look themselves up there)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        raise _LoadError(f"raised {describe_error(e, path)} while loading", "correct the module-level code of the "
                         "file (it runs once, when the worker starts)") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        defined = sorted(name for name, v in vars(module).items()
                         if callable(v) and getattr(v, "__module__", None) == module.__name__)
        found = f"it defines {', '.join(defined)}" if defined else "it defines no functions"
        raise _LoadError(f"no function '{function}' ({found})",
                         f"define `def {function}(prompt, completion, **row)` in the file, or name an existing "
                         "function: reward.function = 'FILE:NAME'")
    return fn


def _call_one(fn, path: str, prompt: str, completion: str, row: dict) -> tuple:
    try:
        return tuple(outcome_of(fn(prompt, completion, **row)))
    except (Exception, SystemExit) as e:  # SystemExit too: sys.exit() in user code must not end the worker
        return (None, "exception", describe_error(e, path))


def _call_batched(fn, path: str, prompts: list[str], completions: list[str], columns: dict) -> tuple:
    try:
        values = fn(prompts=prompts, completions=completions, **columns)
    except (Exception, SystemExit) as e:
        return ("failed", (None, "exception", describe_error(e, path)))
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        return ("not_a_list", f"{short_repr(values)} ({type(values).__name__})")
    return ("ok", [tuple(outcome_of(v)) for v in values])
