"""`sums`: the sum of 3 to 6 terms, worked as running totals in any order — a verifiable task with many correct
solutions.

The arithmetic task's column format has exactly one correct solution per problem, so a correct answer has the
probability of one token sequence while wrong answers pool the probability of many: majority voting (self-
consistency, Wang et al. 2022) cannot beat greedy decoding there by construction. Here the terms can be added in
any order, every order is a different correct solution ending in the same answer, and a mistake on one path
(a wrong running total, a term used twice or skipped) rarely agrees with a mistake on another: the setting
self-consistency and verifiers are made for.

Problems: 3..6 terms (count uniform), each drawn like an arith operand (digit count uniform in 1..max_digits,
then the value uniform); the prompt is "4+9+7+2=". Splits: a stable hash of the prompt, one in ten is "eval".

Steps format (`steps=True`): one running total per line, the terms taken in an order drawn per solution, then the
final `answer:` line. Three of the 4! orders of 4+9+7+2:
    4+9=13        7+2=9         9+4=13
    13+7=20       9+9=18        13+2=15
    20+2=22       18+4=22       15+7=22
    answer: 22    answer: 22    answer: 22
`solution_text` without a generator writes the terms left to right (the first column). Without steps the
solution is the bare answer ("22").
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from posttrain.errors import ConfigError
from posttrain.tasks.arith import answer_in, draw_problems, random_operand, split_by_hash

MIN_TERMS, MAX_TERMS = 3, 6
_PROBLEM_RE = re.compile(r"(\d+(?:\+\d+)+)=")

Problem = tuple[int, ...]


def split_of(terms: Problem) -> str:
    """"eval" for one problem in ten (blake2b of "4+9+7+2"), else "train"."""
    return split_by_hash("+".join(map(str, terms)))


def running_totals(terms: Problem, order: list[int]) -> list[str]:
    """The step lines of adding terms in `order` (indices): running_totals((4, 9, 7), [2, 0, 1]) →
    ["7+4=11", "11+9=20"]."""
    total, lines = terms[order[0]], []
    for i in order[1:]:
        lines.append(f"{total}+{terms[i]}={total + terms[i]}")
        total += terms[i]
    return lines


def swap_a_term(terms: Problem, rng: random.Random) -> Problem | None:
    """The terms with one (drawn uniformly) replaced by the value of another term that differs from it; None when
    every term is equal. swap_a_term((4, 9, 7, 2), rng) may give (4, 7, 7, 2): 9 replaced by the 7."""
    if len(set(terms)) < 2:
        return None
    i = rng.randrange(len(terms))
    out = list(terms)
    out[i] = rng.choice([t for t in terms if t != terms[i]])
    return tuple(out)


@dataclass
class SumsTask:
    """Sums of 3..6 terms with a verifier (see the module docstring for formats).

    >>> task = SumsTask(max_digits=1, steps=True)
    >>> task.prompt_text((4, 9, 7, 2)), task.solution_text((4, 9, 7, 2))
    ('4+9+7+2=', '4+9=13\\n13+7=20\\n20+2=22\\nanswer: 22')
    >>> task.score("4+9+7+2=", "7+2=9\\n9+9=18\\n18+4=22\\nanswer: 22")
    1.0
    """

    max_digits: int = 1
    ops: str = "+"
    steps: bool = False

    def __post_init__(self):
        if not isinstance(self.max_digits, int) or not 1 <= self.max_digits <= 3:
            raise ConfigError(f"sums: max_digits must be 1, 2 or 3 (digits per term), got {self.max_digits!r} — "
                              "fix: task.max_digits=1")
        if self.ops != "+":
            raise ConfigError(f"sums: terms are only added, so ops must be '+', got {self.ops!r} — fix: task.ops=+")

    # ---- problems and their text ----------------------------------------------------------------------------------

    def problem(self, rng: random.Random) -> Problem:
        return tuple(random_operand(rng, self.max_digits) for _ in range(rng.randint(MIN_TERMS, MAX_TERMS)))

    def prompt_text(self, terms: Problem) -> str:
        return "+".join(map(str, terms)) + "="

    def solution_text(self, terms: Problem, rng: random.Random | None = None) -> str:
        """The answer ("22"), or with steps=True the running totals in an order drawn from `rng` (None: left to
        right) ending in "answer: 22"."""
        answer = str(sum(terms))
        if not self.steps:
            return answer
        order = list(range(len(terms)))
        if rng is not None:
            rng.shuffle(order)
        return "\n".join(running_totals(terms, order) + [f"answer: {answer}"])

    # ---- datasets -------------------------------------------------------------------------------------------------

    def problems(self, split: str, n: int, seed: int = 0) -> list[Problem]:
        """`n` problems of `split`, deterministic in (split, n, seed, options); train with replacement, eval unique."""
        return draw_problems("sums", self.problem, split_of, split, n, seed)

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Online-RL rows: [{"prompt": "4+9+7+2=", "answer": "22"}, ...]."""
        return [{"prompt": self.prompt_text(p), "answer": str(sum(p))} for p in self.problems(split, n, seed)]

    def sft_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Chat rows, each solution in its own random order: {"messages": [user, assistant], "answer"}."""
        rng = random.Random(f"sums-order:{seed}:{split}")
        return [{"messages": [{"role": "user", "content": self.prompt_text(p)},
                              {"role": "assistant", "content": self.solution_text(p, rng)}],
                 "answer": str(sum(p))}
                for p in self.problems(split, n, seed)]

    def text_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Plain corpus rows for pretraining: {"text": "4+9+7+2=22"} (steps: the left-to-right solution)."""
        return [{"text": self.prompt_text(p) + self.solution_text(p)} for p in self.problems(split, n, seed)]

    def preference_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """chosen = a correct solution; rejected = the problem solved with one term replaced by another of its
        values, every line's arithmetic right — one term added twice, another skipped. That is the commonest error
        of a trained policy on this task (benchmarks/RESULTS.md, "sums"), and a reward model trained on on-policy
        pairs alone learns to catch it only slowly. A problem whose terms are all equal gets a final answer off by
        1 or 10 instead. Without steps both are bare answers.

        Example: 4+9+7+2 with the 9 replaced by the 7, added in the order 0, 1, 2, 3, gives the rejected
        "4+7=11", "11+7=18", "18+2=20", "answer: 20" (one line each; the right answer is 22).
        """
        rng = random.Random(f"sums-preference:{seed}:{split}")
        out = []
        for p in self.problems(split, n, seed):
            answer = sum(p)
            swapped = swap_a_term(p, rng)
            if swapped is None:
                chosen = self.solution_text(p, rng)
                rejected = chosen.rpartition(str(answer))[0] + str(_off_by(answer, (-10, -1, 1, 10), rng))
            else:
                rejected = self.solution_text(swapped, rng)
                chosen = self.solution_text(p, rng)
            out.append({"prompt": self.prompt_text(p), "chosen": chosen, "rejected": rejected, "answer": str(answer)})
        return out

    def process_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Step-labelled rows for a process reward model (needs steps=True): {"prompt", "completions" (lines),
        "labels" (one bool per line), "answer"}.

        About half the solutions carry one error in a line k drawn uniformly, of the kinds a small policy makes: a
        running total off by 1, 2 or 10; a term misread (another value in the line, the sum right for it); or a
        miscopied final answer. The lines after k are worked correctly from the wrong total. Labels as in PRM800K:
        true before k, false from k on. Example, 4+9+7 in the order 0, 1, 2 with line 0's total off by 1 →
        ["4+9=14", "14+7=21", "answer: 21"], labels [False, False, False].
        """
        if not self.steps:
            raise ConfigError("sums: process_rows labels each solution line, so it needs the steps format — fix: "
                              "task.steps=true")
        rng = random.Random(f"sums-process:{seed}:{split}")
        out = []
        for p in self.problems(split, n, seed):
            order = list(range(len(p)))
            rng.shuffle(order)
            lines = running_totals(p, order) + [f"answer: {sum(p)}"]
            labels = [True] * len(lines)
            if rng.random() < 0.5:
                k = rng.randrange(len(lines))
                lines = lines[:k] + self._lines_with_error(p, order, k, rng)
                labels = [True] * k + [False] * (len(lines) - k)
            out.append({"prompt": self.prompt_text(p), "completions": lines, "labels": labels,
                        "answer": str(sum(p))})
        return out

    def _lines_with_error(self, terms: Problem, order: list[int], k: int, rng: random.Random) -> list[str]:
        """Lines k, k+1, … of the solution in `order` when line k is wrong and the rest is worked from it."""
        if k == len(order) - 1:  # the answer line
            return [f"answer: {_off_by(sum(terms), (-10, -1, 1, 10), rng)}"]
        total = sum(terms[i] for i in order[:k + 1])  # the running total before line k's term
        term = terms[order[k + 1]]
        if rng.random() < 0.5:  # a wrong total
            line, total = f"{total}+{term}=", _off_by(total + term, (-10, -2, -1, 1, 2, 10), rng)
            lines = [line + str(total)]
        else:  # a misread term, added correctly
            misread = _off_by(term, (-2, -1, 1, 2), rng)
            lines, total = [f"{total}+{misread}={total + misread}"], total + misread
        for i in order[k + 2:]:
            lines.append(f"{total}+{terms[i]}={total + terms[i]}")
            total += terms[i]
        return lines + [f"answer: {total}"]

    # ---- verifier -------------------------------------------------------------------------------------------------

    def extract_answer(self, completion: str) -> str | None:
        """With steps: the number after the first "answer:"; otherwise the first integer."""
        return answer_in(completion, self.steps)

    def score(self, prompt: str, completion: str, answer: str | None = None, **row) -> float | None:
        """1.0 if the extracted answer equals `answer` (else recomputed from the prompt's "x+y+…=") as integers,
        else 0.0; None when there is no reference."""
        if answer is None:
            found = _PROBLEM_RE.findall(prompt)
            if not found:
                return None
            answer = str(sum(int(t) for t in found[-1].split("+")))
        given = self.extract_answer(completion)
        return 1.0 if given is not None and int(given) == int(answer) else 0.0


def _off_by(value: int, offsets: tuple[int, ...], rng: random.Random) -> int:
    """value plus an offset drawn from `offsets`, among those that keep it ≥ 0 (there is always one positive)."""
    return value + rng.choice([d for d in offsets if value + d >= 0])
