"""Built-in environments, and user environments from a file.

    env.name=calculator     a calculator tool for arithmetic word problems (the `word` task): the model may call
                            calculator(expression) as often as it likes (env.max_turns), then answers; the answer
                            is scored by the run's reward sources (the task's verifier by default)
    env.name=code           a run_python tool for the `code` task: the model may run code in the sandbox (its
                            output comes back), then answers with its function; the task's hidden unit tests,
                            run in the sandbox, score the answer (reward.verifier)
    env.name=search         a search(query) tool over the built-in corpus of the `lookup` task (BM25, top 3
                            documents): the answer to each question is in one document
    env.name=FILE.py:make   make(row) -> a fresh Environment (base.py) for one episode, defined by the user

`environment_factory(env_cfg)` returns make(row); an environment whose final step has reward None leaves the
scoring of its final answer to the run's reward sources (reward.verifier, reward.function, reward.model).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import math
import operator
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

from posttrain.data.chat import tool_call_text
from posttrain.envs.base import Environment, ToolEnv
from posttrain.envs.tools import tool_schema
from posttrain.envs.trajectory import ChatDeltas
from posttrain.errors import UserError

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
              ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression: numbers, + - * / // % **, parentheses.

    Args:
        expression: the expression, e.g. (47 + 85) * 3

    Examples: calculator("(47 + 85) * 3") → "396"; calculator("7 / 2") → "3.5"; calculator("2 ** 100") → an
    error (exponents above 64 are refused, as are names, calls and anything else that is not arithmetic).
    """
    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = value(node.left), value(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ValueError("exponent too large")
            return _OPERATORS[type(node.op)](left, right)
        raise ValueError(f"not arithmetic: {ast.unparse(node)}")

    result = value(ast.parse(expression.replace("×", "*").replace("÷", "/").replace("−", "-"), mode="eval").body)
    if isinstance(result, float) and result.is_integer():
        result = int(result)
    return str(round(result, 10) if isinstance(result, float) else result)


CALCULATOR_SYSTEM = ("You can use a calculator. Call it for every arithmetic step, then give the final answer as "
                     "a number.")


OUTPUT_CHARS = 2000  # of a run's stdout and stderr, each, that go back to the model


def run_python(code: str) -> str:
    """Run Python code in a sandbox (no network, 5 s, 512 MiB) and return what it printed.

    Args:
        code: a Python program; print what you want to see
    """
    from posttrain.sandbox import Limits, run
    result = run(code, limits=Limits(wall_s=5.0, cpu_s=5.0, memory_mb=512))
    if result.error:
        return f"error: the sandbox could not start: {result.error}"
    parts = [result.stdout[:OUTPUT_CHARS]]
    if result.stderr:
        parts.append("stderr:\n" + result.stderr[-OUTPUT_CHARS:])
    if not result.ok:
        parts.append("timed out" if result.timed_out else f"limit hit: {result.limit_hit}" if result.limit_hit
                     else f"exit code {result.exit_code}")
    return "\n".join(p for p in parts if p) or "(no output)"


CODE_SYSTEM = ("You can run Python with the run_python tool to try your code. When it works, reply with the final "
               "function in a ```python block.")


class BM25:
    """Okapi BM25 over a list of documents (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework:
    BM25 and Beyond"): score(q, d) = Σ_{t in q} idf(t) · tf·(k1 + 1) / (tf + k1·(1 − b + b·|d| / avg|d|)),
    idf(t) = ln((N − df + 0.5) / (df + 0.5) + 1); words are lower-cased runs of letters and digits.

    Example: over ["the river Elm", "the river Tarn", "a town"], "Elm" ranks document 0 first and matches no other.
    """

    def __init__(self, documents, k1: float = 1.5, b: float = 0.75):
        self.documents, self.k1, self.b = list(documents), k1, b
        self.counts = [Counter(self.words(d)) for d in self.documents]
        self.lengths = [sum(c.values()) for c in self.counts]
        self.avg = sum(self.lengths) / max(1, len(self.lengths))
        df = Counter(w for counts in self.counts for w in counts)
        n = len(self.documents)
        self.idf = {w: math.log((n - k + 0.5) / (k + 0.5) + 1) for w, k in df.items()}

    @staticmethod
    def words(text: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", text.lower())

    def scores(self, query: str) -> list[float]:
        query = set(self.words(query)) & self.idf.keys()
        out = []
        for counts, length in zip(self.counts, self.lengths):
            norm = self.k1 * (1 - self.b + self.b * length / self.avg)
            out.append(sum(self.idf[w] * counts[w] * (self.k1 + 1) / (counts[w] + norm) for w in query if counts[w]))
        return out

    def top(self, query: str, k: int = 3) -> list[int]:
        """The indices of the k best documents with a score above 0, best first (ties: corpus order)."""
        scores = self.scores(query)
        return [i for i in sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k] if scores[i] > 0]


@functools.cache
def lookup_index() -> BM25:
    from posttrain.tasks.lookup import corpus
    return BM25(corpus())


def search(query: str) -> str:
    """Search the encyclopedia of towns; returns the three best-matching documents.

    Args:
        query: what to look for, e.g. the name of a town
    """
    index = lookup_index()
    found = index.top(query, 3)
    return "\n".join(f"[{k + 1}] {index.documents[i]}" for k, i in enumerate(found)) or "no document matches"


SEARCH_SYSTEM = ("You can search an encyclopedia of towns with the search tool. Look the town up, then answer the "
                 "question in one short sentence.")


# name → (its tool, the system message, the least timeout a call gets: run_python's sandbox enforces its own 5 s,
# which the call's timeout has to outlast). Each is a ToolEnv whose answer the run's reward sources score.
ENVIRONMENTS: dict[str, tuple[Callable, str, float]] = {"calculator": (calculator, CALCULATOR_SYSTEM, 0.0),
                                                        "code": (run_python, CODE_SYSTEM, 10.0),
                                                        "search": (search, SEARCH_SYSTEM, 0.0)}
# The environments whose rows name the values a solution needs (row["values"], else row["answer"]), so that
# env.progress_reward can reward the tool turn that finds each: a word problem's step results, a town's fact.
PROGRESS = ("calculator", "search")


def environment_factory(name: str, *, max_turns: int, timeout: float,
                        progress_reward: float = 0.0) -> Callable[[dict], Environment]:
    """make(row) for env.name: a built-in environment, or FILE.py:FUNCTION from the user. progress_reward: the
    reward a tool turn earns per needed value it finds (ToolEnv), for the environments whose rows name them."""
    if progress_reward and name not in PROGRESS:
        raise UserError(f"env.progress_reward rewards finding the values a solution needs, which env.name={name} "
                        f"does not name (only {', '.join(PROGRESS)} do; a user environment returns its own "
                        "per-turn rewards from step) — fix: env.progress_reward=0")
    if name in ENVIRONMENTS:
        tool, system, least = ENVIRONMENTS[name]
        return lambda row: ToolEnv([tool], score=None, system=system, max_tool_turns=max_turns - 1,  # the last
                                   timeout=max(timeout, least), progress_reward=progress_reward)    # turn answers
    path, _, function = name.rpartition(":")
    if not path.endswith(".py"):
        raise UserError(f"env.name = {name!r} is neither a built-in environment ({', '.join(ENVIRONMENTS)}) nor "
                        "FILE.py:FUNCTION — fix: env.name=calculator or env.name=my_env.py:make")
    if not Path(path).is_file():
        raise UserError(f"env.name: no such file: {path} — fix: env.name=PATH/TO/FILE.py:{function or 'make'}")
    sys.path.insert(0, str(Path(path).resolve().parent))
    spec = importlib.util.spec_from_file_location(f"posttrain_user_env_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    make = getattr(module, function, None)
    if not callable(make):
        raise UserError(f"env.name: {path} defines no function {function!r} — fix: define `def {function}(row)` "
                        "returning an environment with reset(row) and step(message)")
    return make


def demonstrations(name: str, rows: list[dict], *, max_turns: int, timeout: float = 10.0) -> list[dict]:
    """SFT rows that show built-in environment `name` in use, for a tool-use warm start (`posttrain sft
    env.name=calculator`): each row of a task's `tool_rows` (its "calls" per turn and its "final" answer) is played
    through the environment itself, so the tool results are the tools' own and the system message is the one
    episodes start from:

        {"messages": [system, user, assistant (tool_calls), tool (result), …, assistant (final)],
         "tools": [the tool's JSON schema], "answer": …}

    Rendered by posttrain.data.chat like an episode, the assistant turns are the tokens an episode samples."""
    make = environment_factory(name, max_turns=max_turns, timeout=timeout)
    out = []
    for row in rows:
        if len(row["calls"]) >= max_turns:
            raise UserError(f"a demonstration of env.name={name} takes {len(row['calls']) + 1} turns, more than "
                            f"env.max_turns={max_turns} — fix: env.max_turns={len(row['calls']) + 1}")
        env = make(row)
        offered = {fn.__name__ for fn in env.tools}
        unknown = sorted({c["name"] for calls in row["calls"] for c in calls} - offered)
        if unknown:
            which = next((n for n, (tool, _, _) in ENVIRONMENTS.items() if tool.__name__ == unknown[0]), "…")
            raise UserError(f"these demonstrations call {', '.join(unknown)}, a tool env.name={name} does not offer "
                            f"({', '.join(sorted(offered))}) — fix: env.name={which}")
        messages = env.reset(row)
        for calls in row["calls"]:
            tool_calls = [{"type": "function", "function": call} for call in calls]
            step = env.step({"role": "assistant", "content": "\n".join(map(tool_call_text, tool_calls))})
            messages += [{"role": "assistant", "content": "", "tool_calls": tool_calls}, *step.messages]
        messages.append({"role": "assistant", "content": row["final"]})
        extra = {k: v for k, v in row.items() if k not in ("prompt", "calls", "final")}
        out.append({"messages": messages, "tools": [tool_schema(fn) for fn in env.tools], **extra})
    return out


def environment(name: str, tokenizer, row: dict, *, max_turns: int, timeout: float,
                progress_reward: float = 0.0) -> tuple[Callable, ChatDeltas]:
    """(make(row), the ChatDeltas that render its episodes, tools included — read off the environment `row`
    makes): what a command needs to run episodes of env.name."""
    make = environment_factory(name, max_turns=max_turns, timeout=timeout, progress_reward=progress_reward)
    return make, ChatDeltas(tokenizer, [tool_schema(fn) for fn in getattr(make(row), "tools", [])])


__all__ = ["BM25", "ENVIRONMENTS", "calculator", "demonstrations", "environment", "environment_factory", "run_python",
           "search"]
