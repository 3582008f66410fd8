"""`arith`: integer addition/subtraction, the built-in verifiable task.

A problem is `(a, op, b)` with non-negative operands; the prompt is compact ("47+85=") and the answer
is the exact integer ("132"; subtraction may give "-35"). The same generator feeds every stage:
`text_rows` (pretraining corpus), `sft_rows` (chat messages), `rows` (online RL: prompt + answer), and
`score` is the verifier reward.

Sampling. Each operand first draws its digit count uniformly from 1..max_digits, then a value uniformly
among numbers with that many digits (the 1-digit numbers include 0). Uniform *values* would make
nearly every problem max_digits long and the model would never see the short cases it must learn first;
uniform digit counts give a curriculum for free, and training improves smoothly.

Splits. A problem belongs to "eval" iff blake2b("a op b") mod 10 == 0, else to "train": a stable hash
(Python's `hash()` is salted per process), so the splits are disjoint and the same in every run and for
every max_digits.

Steps format (`steps=True`): one step per line, the columns from the right, then a final `answer:` line,
so a process reward model can score each line.
    47+85               52-17                 17-52                  100-1
    7+5=12 carry 1      12-7=5 borrow 1       17-52=-(52-17)         10-1=9 borrow 1
    4+8+1=13 carry 1    5-1-1=3               12-7=5 borrow 1        10-0-1=9 borrow 1
    answer: 132         answer: 35            5-1-1=3                1-0-1=0
                                              answer: -35            answer: 99
Addition: "x+y[+1]=s", with " carry 1" when s ≥ 10 (the last carry is the leading digit of the answer).
Subtraction: "x-y[-1]=d"; when the column would go negative, x is written plus 10 ("12-7") and the line
ends " borrow 1". A missing digit of the shorter operand is 0. When a < b the first line rewrites
a-b as -(b-a) and the columns then work out b-a.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from posttrain.errors import ConfigError

Problem = tuple[int, str, int]

_PROBLEM_RE = re.compile(r"(\d+)\s*([+-])\s*(\d+)\s*=")
ANSWER_LINE_RE = re.compile(r"answer:\s*(-?\d+)")
INTEGER_RE = re.compile(r"-?\d+")
_EXHAUSTED_AFTER = 10_000  # eval draws in a row with no new problem: the split has run out


def split_of(a: int, op: str, b: int) -> str:
    """"eval" for one problem in ten (stable hash of "a op b"), else "train"."""
    return split_by_hash(f"{a}{op}{b}")


def split_by_hash(key: str) -> str:
    """"eval" when blake2b(key) is 0 mod 10, else "train": stable across processes, unlike Python's hash()."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return "eval" if int.from_bytes(digest, "big") % 10 == 0 else "train"


def _evaluate(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


def random_operand(rng: random.Random, max_digits: int) -> int:
    """Digit count uniform in 1..max_digits, then a value uniform among numbers that long (1 digit includes 0)."""
    n_digits = rng.randint(1, max_digits)
    low = 0 if n_digits == 1 else 10 ** (n_digits - 1)
    return rng.randint(low, 10**n_digits - 1)


def draw_problems(task: str, draw, split_key, split: str, n: int, seed: int) -> list:
    """`n` problems of `split` from draw(rng), kept when split_key(problem) == split; deterministic in (task, split,
    n, seed). Train samples with replacement; eval keeps unique problems and returns fewer than `n` when the split
    runs out (_EXHAUSTED_AFTER draws in a row with nothing new)."""
    if split not in ("train", "eval"):
        raise ConfigError(f"{task}: split must be 'train' or 'eval', got {split!r}")
    rng = random.Random(f"{task}:{seed}:{split}")  # str seeds are hashed stably (sha512)
    out, seen, misses = [], set(), 0
    while len(out) < n and misses < _EXHAUSTED_AFTER:
        problem = draw(rng)
        if split_key(problem) == split and (split == "train" or problem not in seen):
            out.append(problem)
            seen.add(problem)
            misses = 0
        else:
            misses += 1
    return out


def answer_in(completion: str, steps: bool) -> str | None:
    """The number after the first "answer:" (steps format), else the first integer, sign included; None if none."""
    match = (ANSWER_LINE_RE if steps else INTEGER_RE).search(completion)
    if match is None:
        return None
    return match.group(1) if steps else match.group(0)


def _digits(n: int, width: int) -> list[int]:
    """Least-significant digit first, padded with zeros: _digits(47, 3) → [7, 4, 0]."""
    return [int(c) for c in reversed(str(n).zfill(width))]


def addition_steps(a: int, b: int) -> list[str]:
    """Column additions from the right: 47+85 → ["7+5=12 carry 1", "4+8+1=13 carry 1"]."""
    width = max(len(str(a)), len(str(b)))
    lines, carry = [], 0
    for x, y in zip(_digits(a, width), _digits(b, width)):
        total = x + y + carry
        line = f"{x}+{y}" + ("+1" if carry else "") + f"={total}"
        carry = total // 10
        lines.append(line + (" carry 1" if carry else ""))
    return lines


def subtraction_steps(a: int, b: int) -> list[str]:
    """Column subtractions from the right, a ≥ b: 52-17 → ["12-7=5 borrow 1", "5-1-1=3"]."""
    width = len(str(a))
    lines, borrow = [], 0
    for x, y in zip(_digits(a, width), _digits(b, width)):
        new_borrow = 1 if x - y - borrow < 0 else 0
        top = x + 10 * new_borrow  # borrow ten from the next column
        line = f"{top}-{y}" + ("-1" if borrow else "") + f"={top - y - borrow}"
        lines.append(line + (" borrow 1" if new_borrow else ""))
        borrow = new_borrow
    return lines


@dataclass
class ArithTask:
    """Addition/subtraction problems with a verifier (see the module docstring for formats).

    >>> task = ArithTask(max_digits=2)
    >>> task.prompt_text(47, "+", 85), task.solution_text(47, "+", 85)
    ('47+85=', '132')
    >>> task.score("47+85=", "132")
    1.0
    """

    max_digits: int = 3
    ops: str = "+"
    steps: bool = False

    def __post_init__(self):
        if not isinstance(self.max_digits, int) or self.max_digits < 1:
            raise ConfigError(f"arith: max_digits must be an integer ≥ 1, got {self.max_digits!r}")
        if not self.ops or set(self.ops) - set("+-"):
            raise ConfigError(f"arith: ops must be a non-empty subset of '+-', got {self.ops!r}")

    # ---- problems and their text ----------------------------------------------------------------

    def operand(self, rng: random.Random) -> int:
        """Digit count uniform in 1..max_digits, then a value uniform among numbers that long."""
        return random_operand(rng, self.max_digits)

    def problem(self, rng: random.Random) -> Problem:
        op = rng.choice(self.ops)
        return self.operand(rng), op, self.operand(rng)

    def prompt_text(self, a: int, op: str, b: int) -> str:
        return f"{a}{op}{b}="

    def solution_text(self, a: int, op: str, b: int) -> str:
        """The final answer ("132"), or with steps=True the step lines ending in "answer: 132"."""
        answer = str(_evaluate(a, op, b))
        if not self.steps:
            return answer
        if op == "+":
            lines = addition_steps(a, b)
        elif a >= b:
            lines = subtraction_steps(a, b)
        else:
            lines = [f"{a}-{b}=-({b}-{a})"] + subtraction_steps(b, a)
        return "\n".join(lines + [f"answer: {answer}"])

    # ---- datasets ---------------------------------------------------------------------------------

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        """`n` problems of `split`, deterministic in (split, n, seed, options).

        Train samples with replacement; eval keeps unique problems and returns fewer than `n` when the
        split runs out (with max_digits=1 there are only about ten eval problems).
        """
        return draw_problems("arith", self.problem, lambda problem: split_of(*problem), split, n, seed)

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Online-RL rows: [{"prompt": "47+85=", "answer": "132"}, ...]."""
        return [{"prompt": self.prompt_text(*p), "answer": str(_evaluate(*p))}
                for p in self.problems(split, n, seed)]

    def sft_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Chat rows: {"messages": [user: prompt, assistant: solution], "answer": "132"}."""
        return [{"messages": [{"role": "user", "content": self.prompt_text(*p)},
                              {"role": "assistant", "content": self.solution_text(*p)}],
                 "answer": str(_evaluate(*p))}
                for p in self.problems(split, n, seed)]

    def preference_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Paired rows: chosen = the correct solution, rejected = the same solution with a wrong final answer
        (off by 1 or 10, up or down, chosen per problem): {"prompt", "chosen", "rejected", "answer"}.

        Example (steps=False): 47+85= → chosen "132", rejected "131" (or 133, 122, 142).
        """
        rng = random.Random(f"arith-preference:{seed}:{split}")
        out = []
        for a, op, b in self.problems(split, n, seed):
            answer = _evaluate(a, op, b)
            wrong = answer + rng.choice((-10, -1, 1, 10))
            chosen = self.solution_text(a, op, b)
            head, _, _ = chosen.rpartition(str(answer))
            out.append({"prompt": self.prompt_text(a, op, b), "chosen": chosen, "rejected": head + str(wrong),
                        "answer": str(answer)})
        return out

    def process_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Step-labelled rows for a process reward model (needs steps=True):
        {"prompt", "completions": the solution's lines, "labels": one bool per line, "answer"}.

        About half the solutions carry one error, in a line k drawn uniformly: a column's result is changed
        (by ±1, ±2 or ±10 for an addition, a different digit for a subtraction), the minus sign of a
        negative result is dropped, or the final answer is miscopied (±1, ±10). The lines after k are worked
        correctly from the wrong value, so the final answer is wrong too. Labels follow PRM800K (Lightman et
        al. 2023): true before line k, false from line k on. Deterministic in (split, n, seed, options).

        Example: 47+85= corrupted at line 0 → ["7+5=13 carry 1", "4+8+1=13 carry 1", "answer: 133"],
        labels [False, False, False]; uncorrupted → the lines of solution_text, labels all True.
        """
        if not self.steps:
            raise ConfigError("arith: process_rows labels each solution line, so it needs the steps format — fix: "
                              "task.steps=true")
        rng = random.Random(f"arith-process:{seed}:{split}")
        out = []
        for a, op, b in self.problems(split, n, seed):
            answer = str(_evaluate(a, op, b))
            lines = self.solution_text(a, op, b).split("\n")
            labels = [True] * len(lines)
            if rng.random() < 0.5:
                k = rng.randrange(len(lines))
                lines = lines[:k] + self._lines_with_error(a, op, b, k, rng)
                labels = [True] * k + [False] * (len(lines) - k)
            out.append({"prompt": self.prompt_text(a, op, b), "completions": lines, "labels": labels,
                        "answer": answer})
        return out

    def _lines_with_error(self, a: int, op: str, b: int, k: int, rng: random.Random) -> list[str]:
        """Solution lines k, k+1, … of a op b when line k is wrong and the rest is worked from it."""
        answer = _evaluate(a, op, b)
        negative = op == "-" and a < b
        top, bottom = (b, a) if negative else (a, b)
        width = max(len(str(top)), len(str(bottom)))  # one line per column (top ≥ bottom when subtracting)
        if k == (1 if negative else 0) + width:  # the final line: a miscopied answer
            return [f"answer: {answer + rng.choice((-10, -1, 1, 10))}"]
        if negative and k == 0:  # the sign is lost: a-b worked out as b-a
            return [f"{a}-{b}=({b}-{a})"] + subtraction_steps(b, a) + [f"answer: {b - a}"]
        wrong_column = k - (1 if negative else 0)
        lines, value, carry = [], 0, 0  # carry: the addition's carry, or the subtraction's borrow
        for i, (x, y) in enumerate(zip(_digits(top, width), _digits(bottom, width))):
            if op == "+":
                total = x + y + carry
                if i == wrong_column:  # any other total in 0..19 keeps the "carry 1" format valid
                    total = rng.choice([t for t in (total - 10, total - 2, total - 1, total + 1, total + 2,
                                                    total + 10) if 0 <= t <= 19])
                line = f"{x}+{y}" + ("+1" if carry else "") + f"={total}"
                carry = total // 10
                value += total % 10 * 10 ** i
                lines.append(line + (" carry 1" if carry else ""))
            else:
                borrow = 1 if x - y - carry < 0 else 0
                digit = x + 10 * borrow - y - carry
                if i == wrong_column:
                    digit = rng.choice([d for d in (digit - 2, digit - 1, digit + 1, digit + 2) if 0 <= d <= 9])
                lines.append(f"{x + 10 * borrow}-{y}" + ("-1" if carry else "") + f"={digit}"
                             + (" borrow 1" if borrow else ""))
                value += digit * 10 ** i
                carry = borrow
        value += carry * 10 ** width if op == "+" else 0
        return lines[wrong_column:] + [f"answer: {-value if negative else value}"]

    def text_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Plain corpus rows for pretraining: {"text": "47+85=132"}."""
        return [{"text": self.prompt_text(*p) + self.solution_text(*p)}
                for p in self.problems(split, n, seed)]

    # ---- verifier ---------------------------------------------------------------------------------

    def extract_answer(self, completion: str) -> str | None:
        """The integer the completion answers with, or None.

        With steps=True: the number after the first "answer:" (the format's final line; what follows
        it is ignored). Otherwise: the first integer, sign included ("  -35</s>" → "-35").
        """
        return answer_in(completion, self.steps)

    def score(self, prompt: str, completion: str, answer: str | None = None, **row) -> float | None:
        """Reward: 1.0 if the extracted answer equals `answer` as integers, else 0.0.

        Without `answer` it is recomputed from the last "a op b=" in the prompt (which may be chat
        rendered); None only when neither is available.
        >>> ArithTask().score("Q: 52-17=", "35"), ArithTask().score("52-17=", "-35"), ArithTask().score("hi", "3")
        (1.0, 0.0, None)
        """
        if answer is None:
            found = _PROBLEM_RE.findall(prompt)
            if not found:
                return None
            a, op, b = found[-1]
            answer = str(_evaluate(int(a), op, int(b)))
        try:
            expected = int(str(answer).strip())
        except ValueError:
            return None
        given = self.extract_answer(completion)
        return 1.0 if given is not None and int(given) == expected else 0.0
