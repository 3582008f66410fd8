"""Built-in verifiable tasks: data generators plus a verifier reward, used when no data is given.

    task = tasks.get("arith", max_digits=2, ops="+-")
    task.rows("train", 1000)          # [{"prompt": "47+85=", "answer": "132"}, ...]
    task.score("47+85=", "132")       # 1.0 — the reward contract fn(prompt, completion, **row)
    tasks.from_config(cfg.task)       # the task a command's task.* section names, with the options it declares

    arith  column addition/subtraction        sums  3..6 terms in any order
    code   Python functions with hidden unit tests, scored in the sandbox (posttrain.tasks.code)
    word   arithmetic word problems in English at five levels, for instruct models in chat format; the verifier
           reads the final number of a free-form answer (posttrain.tasks.word)
    lookup questions about fictional towns, each answered by one document of a built-in corpus: the task of the
           retrieval environment, env.name=search (posttrain.tasks.lookup)
"""

from __future__ import annotations

import dataclasses
import difflib
import random
from typing import Protocol

from posttrain.errors import ConfigError
from posttrain.tasks.arith import ArithTask
from posttrain.tasks.code import CodeTask
from posttrain.tasks.lookup import LookupTask
from posttrain.tasks.sums import SumsTask
from posttrain.tasks.word import WordTask


class Task(Protocol):
    """What every built-in task provides (splits are "train" and "eval", disjoint)."""

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]: ...
    def sft_rows(self, split: str, n: int, seed: int = 0) -> list[dict]: ...
    def text_rows(self, split: str, n: int, seed: int = 0) -> list[dict]: ...
    def problem(self, rng: random.Random) -> tuple: ...
    def extract_answer(self, completion: str) -> str | None: ...
    def score(self, prompt: str, completion: str, **row) -> float | None: ...


_TASKS: dict[str, type] = {"arith": ArithTask, "code": CodeTask, "lookup": LookupTask, "sums": SumsTask,
                           "word": WordTask}


def names() -> list[str]:
    return sorted(_TASKS)


def get(name: str, **options) -> Task:
    """The task called `name`, built with `options`; a typo gets a did-you-mean."""
    if name not in _TASKS:
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown task '{name}'.{hint} Valid tasks: {', '.join(names())}")
    cls = _TASKS[name]
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"task '{name}' has no option(s) {unknown}; valid options: {', '.join(valid)}")
    return cls(**options)


def from_config(task_cfg, **overrides) -> Task:
    """The task `task_cfg.name` (a TaskConfig: the task.* section), built from the settings its class declares —
    arith, sums and code take max_digits, ops and steps; word takes levels — with `overrides` winning, e.g.
    from_config(cfg.task, steps=True). A setting the task does not declare is not passed: it does not apply."""
    cls = _TASKS.get(task_cfg.name)
    declared = [f.name for f in dataclasses.fields(cls)] if cls is not None else []
    options = {name: getattr(task_cfg, name) for name in declared if hasattr(task_cfg, name)}
    return get(task_cfg.name, **{**options, **overrides})
