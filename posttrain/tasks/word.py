"""`word`: arithmetic word problems in plain English at five levels, for instruct models in chat format.

    level  arithmetic                                   example
    1      2-digit + and −                              Maya has 47 stickers. Ben gives Maya 85 more. How many …
    2      3-digit + and −                              A shop had 604 eggs. It sold 259 of them. How many …
    3      ×, 2-digit by 1-digit                        Sam buys 7 boxes of marbles. Each of the boxes holds 23 …
    4      ×, 2-digit by 2-digit                        A hall has 34 rows of chairs with 27 chairs in each row. …
    5      two steps: a + b − c, a − b + c, a × b ± c   Ava had 52 coins, bought 19 more, and then gave 33 to …

Every answer is a positive integer (a subtraction takes the smaller number from the larger; a two-step problem
never gives away all there is). Each level has several story templates, and each story draws a name, a
friend, an object and a container, so a model cannot key on one sentence. The prompt is the story and the line
"Give the final answer as a number."; rows carry `answer` ("132") and `level` (1..5), so evaluation reports the
accuracy per level (eval/accuracy/level_N; see posttrain.eval.accuracy).

Levels. `levels` (task.levels=1,2,3) selects them; a data set of n rows takes the levels in turn (1, 2, …, 5, 1,
2, …), so every prefix is balanced, and each level draws from its own random stream: level 3's problems are the
same whichever other levels are selected.

Splits. A problem is "eval" iff blake2b("level:kind:template:numbers") mod 10 == 0 (arith's stable hash). The
key leaves out the names and objects: a held-out story is not in the training split under another name. The same
arithmetic may appear in both splits in different stories (level 3 has only 720 pairs of a 2-digit number and a
factor 2..9; a split on the numbers alone would leave 72 held-out ones).

Solutions (sft_rows): one or two worked lines ending in "The answer is N.":
    "Maya starts with 47 stickers and gets 85 more: 47 + 85 = 132. The answer is 132."
    "First, 52 + 19 = 71. Then 71 - 33 = 38. The answer is 38."

The verifier (`extract_answer`, then `score`) finds the final number of a free-form answer:

1. Clean the text: drop markdown emphasis (** and __), "$", LaTeX \\( \\) \\[ \\] delimiters and \\text; "\\times"
   and "\\cdot" become "×"; a Unicode minus "−" becomes "-"; "1{,}234" and "1\\,234" become "1,234".
2. Choose the answer segment, the first rule that applies:
   a. the content of the last \\boxed{…};
   b. the sentence after the last answer marker ("answer is", "answer:", "answer =", "answer was/would be/will
      be", "####"), when it holds a number: an explicit answer statement is what the model commits to, and the
      sentences after it are explanation whose numbers are its intermediate values;
   c. the last sentence that holds a number.
   Sentences end at ".", "!" or "?" followed by a space, and at line breaks. A bare number put as a question
   ("47?") is a tentative answer, not a sentence of its own: it joins the sentence after it, so "47? Maybe 52."
   is one sentence, while "What is 6 × 12? It is 72." is two.
3. In the segment, when text after its last "=" holds a number, keep only that text: a restated calculation
   ("47 + 0 = 47", "6 × 12 = 72 apples") answers with its result.
4. Numbers: an optional sign ("-" not after a letter, digit or bracket, so "72-9" is 72 and 9), digits with
   thousands groups of exactly three ("1,234,567"; "3, 4" and "3,4" are two numbers), an optional decimal part.
   A number glued to a letter before it ("x2", "H2O") is not one. Every number left must have the same value,
   else the answer conflicts and is None; the value is written plainly: "47.0" → "47", "1,234" → "1234",
   "47.50" → "47.5".

    "The answer is 47."                        → "47"      (marker)
    "**Answer:** 1,234 apples"                 → "1234"    (emphasis dropped, thousands separator)
    "So $\\boxed{47}$"                          → "47"      (boxed)
    "6 × 12 = 72. Then 72 - 9 = 63."          → "63"      (last sentence, after its "=")
    "The answer is 47. I used 12 and 35."      → "47"      (the marker wins over later numbers)
    "It is 47 or 48."                          → None      (conflict)
    "47? Maybe 52."                            → None      (one sentence: conflict)
    "What is 6 × 12? It is 72."                → "72"      (the question is a sentence of its own)
    "47 + 0 = 47"                              → "47"      (after "=")
    "It's 47.5"                                → "47.5"    (scores 0 against 47)

`score` is 1.0 when the extracted value equals the row's `answer`, 0.0 otherwise (no number, a conflict, a wrong
value); None when the row has no `answer` (the story cannot be parsed back into its numbers).
"""

from __future__ import annotations

import operator
import random
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from posttrain.errors import ConfigError
from posttrain.tasks.arith import draw_problems, split_by_hash

LEVELS = (1, 2, 3, 4, 5)
KINDS = {1: ("add", "sub"), 2: ("add", "sub"), 3: ("mul",), 4: ("mul",),
         5: ("add_sub", "sub_add", "mul_add", "mul_sub")}  # level → the kinds of problem it draws from
INSTRUCTION = "Give the final answer as a number."

NAMES = ("Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jack", "Kira", "Liam", "Maya",
         "Noah", "Olivia", "Priya", "Quinn", "Rosa", "Sam", "Tom", "Uma", "Victor", "Wen", "Zara")
ITEMS = ("apples", "marbles", "stickers", "pencils", "cookies", "stamps", "seashells", "trading cards", "coins",
         "beads", "eggs", "balloons", "crayons", "toy cars", "books", "oranges", "buttons", "postcards")
BOXES = ("boxes", "bags", "packs", "jars", "crates", "baskets", "cartons", "tins")

# kind → (question, worked solution) pairs. Fields: name, friend, item, box, a, b, c, s1 (the first step's result),
# ans. In a product a is the count per group and b the number of groups.
TEMPLATES: dict[str, list[tuple[str, str]]] = {
    "add": [
        ("{name} has {a} {item}. {friend} gives {name} {b} more. How many {item} does {name} have now?",
         "{name} starts with {a} {item} and gets {b} more: {a} + {b} = {ans}. The answer is {ans}."),
        ("A shop sold {a} {item} on Monday and {b} {item} on Tuesday. How many {item} did it sell on the two days?",
         "Monday and Tuesday together: {a} + {b} = {ans}. The answer is {ans}."),
        ("{name} collected {a} {item} in the morning and {b} in the afternoon. How many {item} did {name} collect "
         "that day?", "Morning plus afternoon: {a} + {b} = {ans}. The answer is {ans}."),
        ("There are {a} {item} in a drawer. {friend} puts {b} more {item} in it. How many {item} are in the drawer "
         "now?", "{a} + {b} = {ans} {item}. The answer is {ans}."),
    ],
    "sub": [
        ("{name} had {a} {item} and gave {b} of them to {friend}. How many {item} does {name} have left?",
         "{name} gives away {b} of {a}: {a} - {b} = {ans}. The answer is {ans}."),
        ("A shop had {a} {item}. It sold {b} of them. How many {item} does the shop have now?",
         "{a} - {b} = {ans} {item} are left. The answer is {ans}."),
        ("{name} wants {a} {item} and already has {b}. How many more {item} does {name} need?",
         "{name} still needs {a} - {b} = {ans}. The answer is {ans}."),
        ("{name} has {a} {item} and {friend} has {b}. How many more {item} does {name} have than {friend}?",
         "The difference is {a} - {b} = {ans}. The answer is {ans}."),
    ],
    "mul": [
        ("{name} buys {b} {box} of {item}. Each of the {box} holds {a} {item}. How many {item} does {name} buy?",
         "{b} {box} of {a}: {b} × {a} = {ans}. The answer is {ans}."),
        ("A hall has {b} rows of chairs with {a} chairs in each row. How many chairs are in the hall?",
         "{b} rows of {a} chairs: {b} × {a} = {ans}. The answer is {ans}."),
        ("{name} reads {a} pages every day for {b} days. How many pages does {name} read in all?",
         "{a} pages a day for {b} days: {a} × {b} = {ans}. The answer is {ans}."),
        ("There are {b} {box} on a shelf, and each one has {a} {item} inside. How many {item} are on the shelf?",
         "{b} × {a} = {ans} {item}. The answer is {ans}."),
    ],
    "add_sub": [
        ("{name} had {a} {item}, bought {b} more, and then gave {c} to {friend}. How many {item} does {name} have "
         "now?", "First, {a} + {b} = {s1}. Then {s1} - {c} = {ans}. The answer is {ans}."),
        ("A shop had {a} {item}. A delivery brought {b} more, and then the shop sold {c}. How many {item} does the "
         "shop have now?", "After the delivery: {a} + {b} = {s1}. After the sales: {s1} - {c} = {ans}. The answer "
         "is {ans}."),
    ],
    "sub_add": [
        ("{name} had {a} {item} and lost {b} of them. Then {friend} gave {name} {c} more. How many {item} does "
         "{name} have now?", "First, {a} - {b} = {s1}. Then {s1} + {c} = {ans}. The answer is {ans}."),
        ("There were {a} people on a bus. At the first stop {b} got off and {c} got on. How many people are on the "
         "bus now?", "After {b} get off: {a} - {b} = {s1}. After {c} get on: {s1} + {c} = {ans}. The answer is "
         "{ans}."),
    ],
    "mul_add": [
        ("{name} buys {b} {box} of {item} with {a} in each, and {friend} gives {name} {c} more. How many {item} "
         "does {name} have?", "First, {b} × {a} = {s1}. Then {s1} + {c} = {ans}. The answer is {ans}."),
        ("A baker makes {b} trays of {a} cookies and then {c} more cookies. How many cookies does the baker make?",
         "The trays hold {b} × {a} = {s1}. With the others: {s1} + {c} = {ans}. The answer is {ans}."),
    ],
    "mul_sub": [
        ("{name} buys {b} {box} of {item} with {a} in each and gives {c} of them to {friend}. How many {item} does "
         "{name} keep?", "First, {b} × {a} = {s1}. Then {s1} - {c} = {ans}. The answer is {ans}."),
        ("A baker makes {b} trays of {a} cookies and sells {c} of them. How many cookies are left?",
         "The trays hold {b} × {a} = {s1}. After the sales: {s1} - {c} = {ans}. The answer is {ans}."),
    ],
}


_APPLY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul}
_SYMBOL = {"add": "+", "sub": "-", "mul": "*"}


def evaluate(kind: str, numbers: tuple[int, ...]) -> tuple[int, int]:
    """(the first step's result, the answer) of `kind` ("mul", or two steps "mul_sub": (a × b) − c) on `numbers`:
    evaluate("mul_sub", (12, 6, 9)) → (72, 63); evaluate("add", (47, 85)) → (132, 132)."""
    first_op, *second_op = kind.split("_")
    first = _APPLY[first_op](numbers[0], numbers[1])
    return (first, _APPLY[second_op[0]](first, numbers[2])) if second_op else (first, first)


def draw_numbers(level: int, kind: str, rng: random.Random) -> tuple[int, ...]:
    """The operands of one problem; every result is ≥ 1 (a > b in a subtraction, c below what there is)."""
    if level in (1, 2):
        low, high = (10, 99) if level == 1 else (100, 999)
        a, b = rng.randint(low, high), rng.randint(low, high)
        while kind == "sub" and a == b:
            b = rng.randint(low, high)
        return (max(a, b), min(a, b)) if kind == "sub" else (a, b)
    if level == 3:
        return rng.randint(10, 99), rng.randint(2, 9)
    if level == 4:
        return rng.randint(11, 99), rng.randint(11, 99)
    if kind.startswith("mul"):
        a, b = rng.randint(10, 99), rng.randint(2, 9)
    elif kind == "sub_add":
        a = rng.randint(11, 99)
        b = rng.randint(10, a - 1)
    else:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
    if kind.endswith("_add"):
        return a, b, rng.randint(10, 99)
    first = _APPLY[kind.split("_")[0]](a, b)
    return a, b, rng.randint(10, min(99, first - 1))  # something is left after giving c away


@dataclass(frozen=True)
class WordProblem:
    """One problem. Equality and the split key use the arithmetic and the template only, so the eval split never
    holds the same story twice under different names."""

    level: int
    kind: str
    template: int
    numbers: tuple[int, ...]
    cast: tuple[str, str, str, str] = field(compare=False)  # name, friend, item, box

    @property
    def key(self) -> str:
        return f"{self.level}:{self.kind}:{self.template}:{','.join(map(str, self.numbers))}"

    @property
    def answer(self) -> int:
        return evaluate(self.kind, self.numbers)[1]

    def fields(self, answer: int | None = None) -> dict:
        """The template fields; `answer` replaces the true one (a wrong solution for preference rows)."""
        name, friend, item, box = self.cast
        s1, ans = evaluate(self.kind, self.numbers)
        a, b, c = (*self.numbers, None)[:3]
        return {"name": name, "friend": friend, "item": item, "box": box, "a": a, "b": b, "c": c, "s1": s1,
                "ans": ans if answer is None else answer}

    def story(self) -> str:
        return TEMPLATES[self.kind][self.template][0].format(**self.fields())

    def solution(self, answer: int | None = None) -> str:
        return TEMPLATES[self.kind][self.template][1].format(**self.fields(answer))

    def calculations(self) -> list[str]:
        """The arithmetic of the solution, one expression a step, each step using the result before it:
        "mul_sub" (12, 6, 9) → ["12 * 6", "72 - 9"]; "add" (47, 85) → ["47 + 85"]."""
        first_op, *second_op = self.kind.split("_")
        first, _ = evaluate(self.kind, self.numbers)
        steps = [f"{self.numbers[0]} {_SYMBOL[first_op]} {self.numbers[1]}"]
        return steps + [f"{first} {_SYMBOL[second_op[0]]} {self.numbers[2]}"] if second_op else steps

    def values(self) -> list[str]:
        """The result of each of calculations(): "mul_sub" (12, 6, 9) → ["72", "63"]."""
        first, answer = evaluate(self.kind, self.numbers)
        return [str(first), str(answer)] if "_" in self.kind else [str(answer)]


def split_of(problem: WordProblem) -> str:
    """"eval" for one problem in ten (blake2b of its key), else "train"."""
    return split_by_hash(problem.key)


@dataclass
class WordTask:
    """Word problems with a robust final-number verifier (see the module docstring).

    >>> task = WordTask(levels=[1])
    >>> problem = WordProblem(1, "add", 0, (47, 85), ("Maya", "Ben", "stickers", "boxes"))
    >>> print(task.prompt_text(problem))
    Maya has 47 stickers. Ben gives Maya 85 more. How many stickers does Maya have now?
    Give the final answer as a number.
    >>> task.score(task.prompt_text(problem), "Maya has 47 + 85 = 132 stickers.", answer="132")
    1.0
    """

    levels: list[int] = field(default_factory=lambda: list(LEVELS))

    def __post_init__(self):
        levels = list(self.levels) if isinstance(self.levels, (list, tuple)) else [self.levels]
        if not levels or any(level not in LEVELS for level in levels) or len(set(levels)) < len(levels):
            raise ConfigError(f"word: task.levels must be distinct levels among {', '.join(map(str, LEVELS))}, got "
                              f"{self.levels!r} — fix: e.g. task.levels=1,2,3")
        self.levels = sorted(levels)

    # ---- problems and their text ----------------------------------------------------------------------------------

    def problem_at(self, level: int, rng: random.Random) -> WordProblem:
        kind = rng.choice(KINDS[level])
        template = rng.randrange(len(TEMPLATES[kind]))
        numbers = draw_numbers(level, kind, rng)
        name, friend = rng.sample(NAMES, 2)
        return WordProblem(level, kind, template, numbers, (name, friend, rng.choice(ITEMS), rng.choice(BOXES)))

    def problem(self, rng: random.Random) -> WordProblem:
        return self.problem_at(rng.choice(self.levels), rng)

    def prompt_text(self, problem: WordProblem) -> str:
        return f"{problem.story()}\n{INSTRUCTION}"

    def solution_text(self, problem: WordProblem) -> str:
        return problem.solution()

    # ---- datasets -------------------------------------------------------------------------------------------------

    def problems(self, split: str, n: int, seed: int = 0) -> list[WordProblem]:
        """`n` problems of `split`, the levels taken in turn (see the module docstring); deterministic in (split, n,
        seed, levels). Train samples with replacement; eval keeps unique problems."""
        per_level = [draw_problems(f"word-{level}", lambda rng, level=level: self.problem_at(level, rng), split_of,
                                   split, len(range(j, n, len(self.levels))), seed)
                     for j, level in enumerate(self.levels)]
        longest = max(map(len, per_level), default=0)  # shorter only when an eval level runs out of problems
        return [drawn[i] for i in range(longest) for drawn in per_level if i < len(drawn)]

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Online-RL rows: {"prompt": "Maya has 47 stickers. …\\nGive the final answer as a number.", "answer":
        "132", "level": 1, "values": ["132"]} — values: each step's result, which the calculator environment's
        env.progress_reward looks for in tool results (posttrain.envs.base.ToolEnv)."""
        return [{"prompt": self.prompt_text(p), "answer": str(p.answer), "level": p.level, "values": p.values()}
                for p in self.problems(split, n, seed)]

    def sft_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Chat rows: {"messages": [user: prompt, assistant: worked solution], "answer", "level"}."""
        return [{"messages": [{"role": "user", "content": self.prompt_text(p)},
                              {"role": "assistant", "content": self.solution_text(p)}],
                 "answer": str(p.answer), "level": p.level}
                for p in self.problems(split, n, seed)]

    def tool_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Rows with the calculator calls that solve them, one call a turn (for tool-use demonstrations,
        posttrain.envs.demonstrations): {"prompt", "answer", "level", "calls": [[{"name": "calculator",
        "arguments": {"expression": "52 + 19"}}], [{… "71 - 33"}]], "final": "The answer is 38."}."""
        return [{"prompt": self.prompt_text(p), "answer": str(p.answer), "level": p.level, "values": p.values(),
                 "calls": [[{"name": "calculator", "arguments": {"expression": e}}] for e in p.calculations()],
                 "final": f"The answer is {p.answer}."}
                for p in self.problems(split, n, seed)]

    def text_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Plain corpus rows: {"text": prompt + newline + solution}."""
        return [{"text": self.prompt_text(p) + "\n" + self.solution_text(p)} for p in self.problems(split, n, seed)]

    def preference_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """chosen = the worked solution; rejected = the same solution with a final result off by 1 or 10 (kept ≥ 0),
        its last line's arithmetic wrong: {"prompt", "chosen", "rejected", "answer", "level"}."""
        rng = random.Random(f"word-preference:{seed}:{split}")
        out = []
        for p in self.problems(split, n, seed):
            wrong = p.answer + rng.choice([d for d in (-10, -1, 1, 10) if p.answer + d >= 0])
            out.append({"prompt": self.prompt_text(p), "chosen": p.solution(), "rejected": p.solution(wrong),
                        "answer": str(p.answer), "level": p.level})
        return out

    # ---- verifier -------------------------------------------------------------------------------------------------

    def extract_answer(self, completion: str) -> str | None:
        """The completion's final number, written plainly ("1,234.0" → "1234"), or None (see the module
        docstring for the rule)."""
        return final_number(completion)

    def score(self, prompt: str, completion: str, answer: str | None = None, **row) -> float | None:
        """1.0 if the final number equals `answer` in value, else 0.0; None without a readable `answer`."""
        expected = _value(str(answer)) if answer is not None else None
        if expected is None:
            return None
        given = self.extract_answer(completion)
        return 1.0 if given is not None and Decimal(given) == expected else 0.0


# ---- the final-number rule -------------------------------------------------------------------------------------------

_CLEAN = [(re.compile(r"\*\*|__|\$|\\[()\[\]]|\\text\s*"), ""), (re.compile(r"\\times|\\cdot"), " × "),
          (re.compile("\u2212"), "-"), (re.compile(r"(?<=\d)(?:\{,\}|\\,)(?=\d{3})"), ",")]
_BOXED = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_MARKER = re.compile(r"\banswer\s*(?:(?:is|was|would be|will be)\b|[:=])|####", re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_NUMBER = re.compile(r"(?<![A-Za-z_\d.])(?:(?<![\w)\]}])-)?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")


def final_number(completion: str) -> str | None:
    """The final number of a completion by the module docstring's rule (steps 1-4), or None.

    >>> final_number("First, 6 × 12 = 72. Then 72 - 9 = 63."), final_number("It is 47 or 48.")
    ('63', None)
    """
    text = completion
    for pattern, replacement in _CLEAN:
        text = pattern.sub(replacement, text)
    boxed = _BOXED.findall(text)
    if boxed:
        return _agreed(boxed[-1])
    markers = list(_MARKER.finditer(text))
    if markers:
        after = _sentences(text[markers[-1].end():].lstrip(" \t\n:"))  # "Answer:\n\n47": the 47
        if after and _NUMBER.search(after[0]):
            return _agreed(after[0])
    for sentence in reversed(_sentences(text)):
        if _NUMBER.search(sentence):
            return _agreed(sentence)
    return None


def _sentences(text: str) -> list[str]:
    """The non-empty sentences of `text`, a bare number with a question mark joined to the sentence after it:
    "Sum: 5. 47? Maybe 52." → ["Sum: 5.", "47? Maybe 52."]."""
    out, pending = [], ""
    for sentence in _SENTENCE_END.split(text):
        sentence = pending + sentence.strip()
        if not sentence:
            continue
        pending = ""
        if sentence.endswith("?") and not _NUMBER.sub("", sentence).strip(" ?"):
            pending = sentence + " "  # a tentative "47?": it belongs to what follows
        else:
            out.append(sentence)
    return out + [pending.strip()] if pending else out


def _agreed(segment: str) -> str | None:
    """The one value of the segment's numbers (after its last "=" when a number follows it); None if they differ."""
    head, equals, tail = segment.rpartition("=")
    if equals and _NUMBER.search(tail):
        segment = tail
    values = {_value(number) for number in _NUMBER.findall(segment)}
    if len(values) != 1:
        return None
    value = values.pop()
    return str(int(value)) if value == value.to_integral_value() else format(value.normalize(), "f")


def _value(number: str) -> Decimal | None:
    """"1,234.50" → Decimal("1234.50"); None when it is no finite number ("n/a", "NaN")."""
    try:
        value = Decimal(number.strip().replace(",", ""))
    except InvalidOperation:
        return None
    return value if value.is_finite() else None
