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
from pathlib import Path
from typing import Callable

from posttrain.envs.base import Environment, ToolEnv
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


def calculator_env(max_tool_turns: int, timeout: float) -> Callable[[dict], Environment]:
    return lambda row: ToolEnv([calculator], score=None, system=CALCULATOR_SYSTEM, max_tool_turns=max_tool_turns,
                               timeout=timeout)


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


def code_env(max_tool_turns: int, timeout: float) -> Callable[[dict], Environment]:
    # the sandbox enforces its own 5 s; the call's timeout only has to outlast it
    return lambda row: ToolEnv([run_python], score=None, system=CODE_SYSTEM, max_tool_turns=max_tool_turns,
                               timeout=max(timeout, 10.0))


class BM25:
    """Okapi BM25 over a list of documents (Robertson & Zaragoza 2009, "The Probabilistic Relevance Framework:
    BM25 and Beyond"): score(q, d) = Σ_{t in q} idf(t) · tf·(k1 + 1) / (tf + k1·(1 − b + b·|d| / avg|d|)),
    idf(t) = ln((N − df + 0.5) / (df + 0.5) + 1); words are lower-cased runs of letters and digits.

    Example: over ["the river Elm", "the river Tarn", "a town"], "Elm" ranks document 0 first and matches no other.
    """

    def __init__(self, documents, k1: float = 1.5, b: float = 0.75):
        self.documents, self.k1, self.b = list(documents), k1, b
        self.terms = [self.words(d) for d in self.documents]
        self.avg = sum(map(len, self.terms)) / max(1, len(self.terms))
        df: dict[str, int] = {}
        for words in self.terms:
            for w in set(words):
                df[w] = df.get(w, 0) + 1
        n = len(self.documents)
        self.idf = {w: math.log((n - k + 0.5) / (k + 0.5) + 1) for w, k in df.items()}

    @staticmethod
    def words(text: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", text.lower())

    def scores(self, query: str) -> list[float]:
        query = set(self.words(query))
        out = []
        for words in self.terms:
            tf = {w: words.count(w) for w in query if w in self.idf}
            norm = self.k1 * (1 - self.b + self.b * len(words) / self.avg)
            out.append(sum(self.idf[w] * f * (self.k1 + 1) / (f + norm) for w, f in tf.items() if f))
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


def search_env(max_tool_turns: int, timeout: float) -> Callable[[dict], Environment]:
    return lambda row: ToolEnv([search], score=None, system=SEARCH_SYSTEM, max_tool_turns=max_tool_turns,
                               timeout=timeout)


ENVIRONMENTS: dict[str, Callable[..., Callable[[dict], Environment]]] = {"calculator": calculator_env,
                                                                         "code": code_env, "search": search_env}


def environment_factory(name: str, *, max_turns: int, timeout: float) -> Callable[[dict], Environment]:
    """make(row) for env.name: a built-in environment, or FILE.py:FUNCTION from the user."""
    if name in ENVIRONMENTS:
        return ENVIRONMENTS[name](max_turns - 1, timeout)  # the last turn is the answer
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


__all__ = ["BM25", "ENVIRONMENTS", "calculator", "environment_factory", "run_python", "search"]
