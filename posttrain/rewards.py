"""Rewards for online RL: score a step's completions from one or more sources and add them with weights.

The contract (DESIGN §3): a reward function is `fn(prompt, completion, **row) -> float | None`, where `row` is the
sample's dataset row without its prompt (e.g. `answer=`), and None means "could not be scored". A sample that cannot
be scored is not a zero reward: it is left out of baselines, gets advantage 0, and is counted.

    sources  VerifierReward(task.score)              trusted code in this process (the built-in task's verifier)
             FileReward("my_reward.py", "reward")    user code, in a worker process with a timeout per call
             builtin_reward("code_tests")            a built-in reward by name (BUILTIN_REWARDS); code_tests runs the
                                                     row's unit tests on the completion's code in posttrain.sandbox
             ModelReward(model, tokenizer)           a trained outcome reward model (`posttrain rm`)
    combine  score_all([(src, weight), ...], prompts, completions, rows) -> ScoredBatch
    watch    UnscorableGuard(reward.max_unscored_fraction).check(batch, step); reward_metrics(batch)

One RL step, as the loop uses it:

    with FileReward("my_reward.py", timeout_s=5) as user:        # loading errors are raised here, before training
        sources = [(VerifierReward(task.score), 1.0), (user, 0.5)]
        guard = UnscorableGuard(cfg.reward.max_unscored_fraction)
        for step in ...:
            batch = score_all(sources, prompts, completions, rows)   # rewards [B], scored [B]
            guard.check(batch, step)                                  # UserError when too much is unscorable
            tracker.log(step, reward_metrics(batch))

Why a sample can be unscorable — `ScoredBatch.failures` counts each reason (once per source that failed):

    exception  the function raised, returned a non-number, or its worker process died
    none       the function returned None
    nan        it returned NaN or ±inf (a reward model's NaN score too)
    timeout    a user function took longer than timeout_s; its worker was killed and restarted

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

torch is imported inside the functions that need it: the worker process imports this module to find its entry point,
and without torch it starts in a fraction of a second instead of several — which matters each time a hang restarts it.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from posttrain.errors import ConfigError, UserError
from posttrain.sandbox import die_with_parent, kill_group

if TYPE_CHECKING:
    import torch

FAILURE_REASONS = ("exception", "none", "nan", "timeout")


class Outcome(NamedTuple):
    """One sample's result from one source: a finite value, or None with the reason (a FAILURE_REASONS key) and
    a short description for error messages ("ZeroDivisionError: division by zero (line 3)")."""

    value: float | None
    reason: str | None = None
    detail: str = ""


def outcome_of(value) -> Outcome:
    """Classify what a reward function returned: a finite number (int, float, numpy or one-element torch scalar),
    or a failure — None → "none"; NaN/±inf → "nan"; anything else (a string, a list …) → "exception".

    >>> outcome_of(1), outcome_of(None).reason, outcome_of(float("inf")).reason, outcome_of("1.0").reason
    (Outcome(value=1.0, reason=None, detail=''), 'none', 'nan', 'exception')
    """
    if value is None:
        return Outcome(None, "none", "returned None")
    try:
        if isinstance(value, (str, bytes)):  # float("1.5") would parse it; a reward must be a number
            raise TypeError
        number = float(value)
    except Exception:
        return Outcome(None, "exception", f"returned {_short(value)} ({type(value).__name__}), not a number")
    if not math.isfinite(number):
        return Outcome(None, "nan", f"returned {number}")
    return Outcome(number)


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _describe(e: BaseException, path: str | None = None) -> str:
    """"KeyError: 'answer' (line 4)": the exception and, when known, the line of `path` it came from."""
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    lines = [frame.lineno for frame in traceback.extract_tb(e.__traceback__) if path and frame.filename == path]
    return text + (f" (line {lines[-1]})" if lines else "")


def _row_kwargs(row: dict) -> dict:
    """The row as keyword arguments: without `prompt` and `completion`, which are passed as the sample's own."""
    return {k: v for k, v in row.items() if k not in ("prompt", "completion")}


# ---------------------------------------------------------------------------------------------------------------------
# A step's rewards: the weighted sum of the sources, what could not be scored, metrics and the guard
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class ScoredBatch:
    """The rewards of a step's B samples.

    rewards     [B] float32  Σ weight × value over the sources; 0 where the sample is unscored
    scored      [B] bool     every source scored the sample (one failure makes it unscored overall)
    per_source  name → [B] float32 raw values of that source (before weighting), NaN where it failed
    failures    reason → count, every FAILURE_REASONS key present; one count per (source, sample) failure
    first_error reason → where it first happened, e.g. "source 'my_reward', sample 3: KeyError: 'answer' (line 4)"
    """

    rewards: torch.Tensor
    scored: torch.Tensor
    per_source: dict[str, torch.Tensor]
    failures: dict[str, int]
    first_error: dict[str, str] = field(default_factory=dict)

    @property
    def unscored_fraction(self) -> float:
        n = self.scored.numel()
        return 0.0 if n == 0 else 1.0 - self.scored.float().mean().item()


def score_all(sources: list[tuple[object, float]], prompts: list[str], completions: list[str],
              rows: list[dict]) -> ScoredBatch:
    """Score every sample with every source and add the values with their weights.

    sources: (source, weight) pairs; a source has `name` and `score(prompts, completions, rows)` (better, the
    `outcomes(...)` of the classes here, which say why a sample failed). rows[i] is sample i's dataset row.

    Example: sources a (weight 0.5) and b (weight 2); a scores [1, 4], b scores [3, None]:
        rewards [0.5·1 + 2·3, 0] = [6.5, 0], scored [True, False], per_source {a: [1, 4], b: [3, nan]},
        failures {"none": 1, ...}
    """
    import torch

    n = len(prompts)
    if len(completions) != n or len(rows) != n:
        raise ValueError(f"score_all: {n} prompts, {len(completions)} completions and {len(rows)} rows; one each per "
                         "sample")
    if not sources:
        raise ValueError("score_all needs at least one (source, weight)")
    names = [source.name for source, _ in sources]
    if len(set(names)) != len(names):
        raise UserError(f"two reward sources share a name ({', '.join(names)}); their metrics would collide — fix: "
                        "give each source its own name")
    total = [0.0] * n
    scored = [True] * n
    per_source, failures, first_error = {}, dict.fromkeys(FAILURE_REASONS, 0), {}
    for source, weight in sources:
        outcomes = _outcomes(source, prompts, completions, rows)
        for i, outcome in enumerate(outcomes):
            if outcome.value is None:
                scored[i] = False
                failures[outcome.reason] += 1
                first_error.setdefault(outcome.reason, f"source '{source.name}', sample {i}: {outcome.detail}")
            else:
                total[i] += weight * outcome.value
        per_source[source.name] = torch.tensor([math.nan if o.value is None else o.value for o in outcomes],
                                               dtype=torch.float32)
    rewards = torch.tensor([t if ok else 0.0 for t, ok in zip(total, scored)], dtype=torch.float32)
    return ScoredBatch(rewards, torch.tensor(scored, dtype=torch.bool), per_source, failures, first_error)


def _outcomes(source, prompts, completions, rows) -> list[Outcome]:
    """The source's outcomes, checked to be one per sample (a wrong count is the source's bug: a hard error)."""
    if hasattr(source, "outcomes"):
        outcomes = source.outcomes(prompts, completions, rows)
    else:  # any object with the plain contract: classify what it returned
        outcomes = [outcome_of(v) for v in source.score(prompts, completions, rows)]
    if len(outcomes) != len(prompts):
        raise UserError(f"reward source '{source.name}' returned {len(outcomes)} values for {len(prompts)} samples — "
                        "fix: return exactly one value (or None) per completion, in order")
    return outcomes


def reward_metrics(batch: ScoredBatch) -> dict[str, float]:
    """Metrics of a step's rewards, with stable names:

        reward/mean, reward/std, reward/min, reward/max     over the scored samples (std divides by n)
        reward/<source>/mean, …/std, …/min, …/max           each source's raw values where it scored — always,
                                                            also for one source (its weight may differ from 1)
        reward/unscored_frac                                unscored samples ÷ B
        reward/failures/<reason>                            counts, every reason (0 when none)

    The statistics are left out when there is nothing to compute them over (no NaN in metrics.jsonl).
    Example: rewards [1, 0, 3, 2] with sample 1 unscored → mean 2, std √(2/3) ≈ 0.816, min 1, max 3,
    unscored_frac 0.25.
    """
    metrics = _stats("reward", batch.rewards[batch.scored])
    for name, values in batch.per_source.items():
        metrics.update(_stats(f"reward/{name}", values[~values.isnan()]))
    metrics["reward/unscored_frac"] = batch.unscored_fraction
    metrics.update({f"reward/failures/{reason}": float(count) for reason, count in batch.failures.items()})
    return metrics


def _stats(prefix: str, values: torch.Tensor) -> dict[str, float]:
    if values.numel() == 0:
        return {}
    v = values.double()
    return {f"{prefix}/mean": v.mean().item(), f"{prefix}/std": v.std(correction=0).item(),
            f"{prefix}/min": v.min().item(), f"{prefix}/max": v.max().item()}


class UnscorableGuard:
    """Stop the run when a step has too many unscorable samples (default: more than half).

    A few unscorable samples are normal (a completion with no answer in it). Most of a step failing means the reward
    itself is broken — a typo in a column name, a crash, a hang — and training on what is left would be training on
    noise, so the run stops with the counts by reason and the first error.
    """

    def __init__(self, max_fraction: float = 0.5):
        if not 0.0 <= max_fraction <= 1.0:
            raise ConfigError(f"reward.max_unscored_fraction must be between 0 and 1, got {max_fraction}")
        self.max_fraction = max_fraction

    def check(self, batch: ScoredBatch, step: int) -> None:
        """Raise UserError when the unscored fraction of `batch` is above max_fraction (at it is fine)."""
        fraction = batch.unscored_fraction
        if fraction <= self.max_fraction:
            return
        total = batch.scored.numel()
        unscored = total - int(batch.scored.sum())
        counts = ", ".join(f"{reason} {n}" for reason, n in batch.failures.items() if n)
        first = "; ".join(f"first {reason}: {where}" for reason, where in batch.first_error.items())
        raise UserError(
            f"step {step}: {unscored} of {total} samples ({fraction:.0%}) could not be scored, more than "
            f"reward.max_unscored_fraction = {self.max_fraction} (failures: {counts}; {first}) — fix: look at the "
            "reward function (call it by hand on a few prompts and completions: a wrong column name, an exception "
            "or a hang shows at once), raise reward.timeout_s if it is just slow, or raise "
            "reward.max_unscored_fraction if many unscorable samples are expected")


# ---------------------------------------------------------------------------------------------------------------------
# Sources
# ---------------------------------------------------------------------------------------------------------------------

class RewardSource:
    """What every source provides: `name`, `outcomes(...)` (why a sample failed) and `score(...)` (the plain
    contract); sources that hold resources (a worker process) release them in `close()` / a `with` block."""

    name: str

    def outcomes(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[Outcome]:
        raise NotImplementedError

    def score(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[float | None]:
        """One value per sample, None where it could not be scored."""
        return [outcome.value for outcome in self.outcomes(prompts, completions, rows)]

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VerifierReward(RewardSource):
    """A trusted function called in this process, e.g. the built-in task's `score(prompt, completion, answer=…)`.

    Trusted means it needs no timeout, not that it cannot fail: an exception or a NaN makes that sample unscored
    (counted) instead of ending the run.
    """

    def __init__(self, fn, name: str = "verifier"):
        self.fn, self.name = fn, name

    def outcomes(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[Outcome]:
        out = []
        for prompt, completion, row in zip(prompts, completions, rows):
            try:
                value = self.fn(prompt, completion, **_row_kwargs(row))
            except Exception as e:
                out.append(Outcome(None, "exception", _describe(e)))
                continue
            out.append(outcome_of(value))
        return out


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
            reply, failure = self._request((prompt, completion, _row_kwargs(row)))
            out.append(failure or Outcome(*reply))
        return out

    def _batched_outcomes(self, prompts, completions, rows) -> list[Outcome]:
        n = len(prompts)
        if n == 0:
            return []
        kwargs = [_row_kwargs(row) for row in rows]
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
            raise UserError(f"reward function file {self.path} has a syntax error: {_describe(e)} — fix: correct "
                            "the file (python -m py_compile FILE shows the same error)") from None

    def _start(self) -> None:
        """Start a worker and wait until it has loaded the function: the interpreter's start does not count, the
        file's module-level code gets timeout_s. Loading errors become UserErrors naming the file."""
        conn, child_conn = multiprocessing.Pipe()
        package_root = str(Path(__file__).resolve().parents[1])  # the worker imports this very copy of posttrain
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen(
            [sys.executable, "-c", "from posttrain.rewards import _worker_main; _worker_main()",
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


# name → "module:function" of a built-in reward, called as fn(prompt, completion, limits=sandbox.Limits(…), **row)
BUILTIN_REWARDS = {"code_tests": "posttrain.tasks.code:code_tests"}  # the fraction of the row's `tests` that pass


def builtin_reward(name: str, timeout_s: float = 10.0, batched: bool = False) -> RewardSource:
    """A built-in reward by name, e.g. reward.function=code_tests (with prompt rows that carry `tests`). It runs in
    this process — it is trusted code, and what it executes it sandboxes — with timeout_s as the sandbox's wall
    clock and CPU limit."""
    if batched:
        raise ConfigError(f"the built-in reward {name} scores one sample at a time — fix: "
                          "reward.function_batched=false")
    if not timeout_s > 0:
        raise ConfigError(f"reward.timeout_s must be positive, got {timeout_s}")
    from posttrain.sandbox import Limits

    module, _, function = BUILTIN_REWARDS[name].partition(":")
    fn = getattr(importlib.import_module(module), function)
    limits = Limits(wall_s=timeout_s, cpu_s=timeout_s)
    return VerifierReward(lambda prompt, completion, **row: fn(prompt, completion, limits=limits, **row), name=name)


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
        raise _LoadError(f"raised {_describe(e, path)} while loading", "correct the module-level code of the file (it "
                         "runs once, when the worker starts)") from None
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
        return (None, "exception", _describe(e, path))


def _call_batched(fn, path: str, prompts: list[str], completions: list[str], columns: dict) -> tuple:
    try:
        values = fn(prompts=prompts, completions=completions, **columns)
    except (Exception, SystemExit) as e:
        return ("failed", (None, "exception", _describe(e, path)))
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        return ("not_a_list", f"{_short(values)} ({type(values).__name__})")
    return ("ok", [tuple(outcome_of(v)) for v in values])


class ModelReward(RewardSource):
    """A trained outcome reward model (`posttrain rm`: a sequence-classification head with one score).

    A completion is tokenized exactly as the reward-model trainer tokenized its chosen/rejected responses
    (data.preference.response_example: prompt + completion, as a user/assistant chat when the template is used) and
    scored by the same function (train.reward.scores: the head's value at the last non-pad token), so scores at RL
    time mean what they meant in training. No gradients; the model is put in eval mode while scoring.

    use_chat_template: None (default) decides as `posttrain rm` did — the template when the tokenizer has one.
    batch_size: completions per forward pass; they are sorted by length first, so a batch holds similar lengths
        and little padding (the scores do not depend on it: padding is on the right, behind causal attention).
    A NaN or infinite score makes that sample unscored ("nan").
    """

    def __init__(self, model, tokenizer, *, use_chat_template: bool | None = None, batch_size: int = 32,
                 name: str = "reward_model", precision: str = "fp32"):
        if batch_size < 1:
            raise ConfigError(f"the reward model's batch size must be at least 1, got {batch_size}")
        self.model, self.tokenizer, self.use_chat_template = model, tokenizer, use_chat_template
        self.batch_size, self.name, self.precision = batch_size, name, precision
        model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token, as in training

    def outcomes(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[Outcome]:
        import torch

        from posttrain.data.preference import response_example
        from posttrain.train.reward import scores

        examples = [response_example(p, c, self.tokenizer, use_chat_template=self.use_chat_template)
                    for p, c in zip(prompts, completions)]
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
        values = [math.nan] * len(examples)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start:start + self.batch_size]
                    batch_scores = scores(self.model, [examples[i] for i in chunk], self.tokenizer.pad_token_id,
                                          self.precision)
                    for i, value in zip(chunk, batch_scores.tolist()):
                        values[i] = value
        finally:
            self.model.train(was_training)
        return [outcome_of(v) for v in values]


# head → (PEFT task type, architecture suffix, what it is, what it scores)
REWARD_HEADS = {"score": ("SEQ_CLS", "ForSequenceClassification", "an outcome reward model", "one score per response"),
                "token": ("TOKEN_CLS", "ForTokenClassification", "a process reward model", "a score per step")}


def load_head_model(path: str | Path, head: str, fix: str, trust_remote_code: bool = False):
    """(frozen model, tokenizer) from a reward-model run directory (its final/) or a model directory: full weights
    whose architecture has the `head` (REWARD_HEADS: "score" = outcome RM, "token" = PRM), or a LoRA adapter of
    that task type on its base. Anything else — a plain language model, whose head would be random, or the other
    kind of reward model — raises UserError ending in `fix`."""
    import json

    from posttrain.config import LoraConfig, ModelConfig
    from posttrain.models.loading import adapter_config, load_model, load_tokenizer, resolve_model_path

    task_type, suffix, kind, unit = REWARD_HEADS[head]
    directory = Path(resolve_model_path(str(path)))
    adapter, config_file = adapter_config(directory), directory / "config.json"
    if adapter is None and not config_file.is_file():
        raise UserError(f"{path} is not a reward model directory (no config.json or adapter_config.json) — "
                        f"fix: {fix}")
    if adapter is not None and adapter.get("task_type") != task_type:
        raise UserError(f"{directory} holds a LoRA adapter for {adapter.get('task_type')}, not {kind} "
                        f"({task_type}) — fix: {fix}")
    if adapter is None:
        architectures = json.loads(config_file.read_text()).get("architectures") or []
        if not any(a.endswith(suffix) for a in architectures):
            raise UserError(f"{directory} holds {', '.join(architectures) or 'a model'}, not {kind} "
                            f"(…{suffix}, {unit}) — fix: {fix}")
    model = load_model(ModelConfig(name_or_path=str(directory), trust_remote_code=trust_remote_code),
                       LoraConfig(), head=head)  # an adapter on its base, unmerged: the scores training saw
    model.requires_grad_(False)
    return model, load_tokenizer(str(directory), trust_remote_code)


def load_reward_model(path: str | Path, *, device: str | torch.device = "cpu", batch_size: int = 32,
                      name: str = "reward_model", precision: str = "fp32", trust_remote_code: bool = False
                      ) -> ModelReward:
    """A ModelReward from an `rm` run directory (its final/) or a Hugging Face directory holding an outcome reward
    model (full weights, or a LoRA adapter on its base), frozen, on `device`.

    Refuses a directory whose model has no trained score head — a plain language model (its head would be random)
    or a process reward model (a score per token) — instead of giving random or meaningless rewards.
    """
    model, tokenizer = load_head_model(
        path, "score", "set reward.model to the run directory of `posttrain rm` (reward.mode=outcome) or its final/",
        trust_remote_code)
    return ModelReward(model.to(device).eval(), tokenizer, batch_size=batch_size, name=name, precision=precision)
