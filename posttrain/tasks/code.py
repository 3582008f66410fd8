"""`code`: write a small Python function; the verifier `code_tests` runs hidden unit tests on it in the sandbox.

A row is {"prompt": "Write a Python function `add(a, b)` that returns the sum of a and b.", "tests": ["assert
add(1, 2) == 3", …]} — MBPP's format: the tests are assert statements, kept out of the prompt. The reward is the
fraction of them that pass: 1.0 for a correct function, 0.5 when half the asserts hold, 0.0 for a syntax error, an
exception at import, or a function that never returns.

The code is the last ```python (or bare ```) fenced block of the completion, the text after an opening fence that was
never closed (a completion cut by the length limit), or else the whole completion (extract_code).

How one completion is scored (code_tests): the code and the tests go into a sandbox run (posttrain.sandbox: no
network, resource limits, nothing survives the run) as files; a small harness executes the code, then each assert
with its own time limit (SIGALRM: a Python loop that never ends fails that assert, the others still run), and
prints "<nonce> passed total" — a nonce it reads from stdin before the code runs, so output of the code cannot be
taken for the result by accident. (The code runs in the harness's interpreter, so code written to forge the
result could find the nonce; the sandbox contains it, it does not make the score unforgeable.) A run that could not
start at all (the sandbox's `error`) is unscorable (None), not 0: that is the machine's fault, not the model's.

Your own problems: rows with `prompt` and `tests` in a file, `posttrain rl data.train_path=problems.jsonl
task.name=code` — the verifier (reward.verifier, on by default) is then code_tests on each row's tests.

The built-in problems (PROBLEMS, 32 of them) are fixed; one in four (a stable hash of the name) is "eval". They run
offline and make a tiny end-to-end check; a small model scores about 0 on them.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
from dataclasses import dataclass

from posttrain.errors import ConfigError
from posttrain.sandbox import Limits, run

_FENCED = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_OPEN_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*)\Z", re.DOTALL | re.IGNORECASE)

# name, signature, what it does, a reference solution (for SFT rows and to check the tests), the hidden tests
PROBLEMS: list[tuple[str, str, str, str, list[str]]] = [
    ("add", "add(a, b)", "returns the sum of a and b", "return a + b",
     ["add(1, 2) == 3", "add(-4, 4) == 0", "add(10, 5) == 15", "add(0, 0) == 0"]),
    ("square", "square(x)", "returns x squared", "return x * x",
     ["square(3) == 9", "square(-2) == 4", "square(0) == 0", "square(11) == 121"]),
    ("is_even", "is_even(n)", "returns True when the integer n is even, else False", "return n % 2 == 0",
     ["is_even(4) is True", "is_even(7) is False", "is_even(0) is True", "is_even(-3) is False"]),
    ("maximum", "maximum(xs)", "returns the largest number in the non-empty list xs", "return max(xs)",
     ["maximum([1, 5, 3]) == 5", "maximum([-2, -9]) == -2", "maximum([7]) == 7", "maximum([0, 0, 1]) == 1"]),
    ("reverse_string", "reverse_string(s)", "returns the string s reversed", "return s[::-1]",
     ["reverse_string('abc') == 'cba'", "reverse_string('') == ''", "reverse_string('ab') == 'ba'",
      "reverse_string('racecar') == 'racecar'"]),
    ("count_vowels", "count_vowels(s)", "returns how many of the characters of s are vowels (aeiou, lower case)",
     "return sum(c in 'aeiou' for c in s)",
     ["count_vowels('hello') == 2", "count_vowels('xyz') == 0", "count_vowels('aeiou') == 5", "count_vowels('') == 0"]),
    ("factorial", "factorial(n)", "returns n! for an integer n >= 0",
     "out = 1\n    for i in range(2, n + 1):\n        out *= i\n    return out",
     ["factorial(0) == 1", "factorial(1) == 1", "factorial(5) == 120", "factorial(10) == 3628800"]),
    ("fibonacci", "fibonacci(n)", "returns the n-th Fibonacci number, with fibonacci(0) = 0 and fibonacci(1) = 1",
     "a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
     ["fibonacci(0) == 0", "fibonacci(1) == 1", "fibonacci(2) == 1", "fibonacci(10) == 55"]),
    ("is_palindrome", "is_palindrome(s)", "returns True when the string s reads the same backwards",
     "return s == s[::-1]",
     ["is_palindrome('level') is True", "is_palindrome('abc') is False", "is_palindrome('') is True",
      "is_palindrome('ab') is False"]),
    ("sum_list", "sum_list(xs)", "returns the sum of the numbers in the list xs (0 for an empty list)",
     "return sum(xs)",
     ["sum_list([1, 2, 3]) == 6", "sum_list([]) == 0", "sum_list([-1, 1]) == 0", "sum_list([10]) == 10"]),
    ("average", "average(xs)", "returns the mean of the non-empty list of numbers xs", "return sum(xs) / len(xs)",
     ["average([1, 2, 3]) == 2", "average([4]) == 4", "average([1, 2]) == 1.5", "average([-2, 2]) == 0"]),
    ("count_char", "count_char(s, c)", "returns how many times the character c occurs in the string s",
     "return s.count(c)",
     ["count_char('banana', 'a') == 3", "count_char('abc', 'z') == 0", "count_char('', 'a') == 0",
      "count_char('aaa', 'a') == 3"]),
    ("absolute", "absolute(x)", "returns the absolute value of the number x", "return abs(x)",
     ["absolute(-5) == 5", "absolute(3) == 3", "absolute(0) == 0", "absolute(-0.5) == 0.5"]),
    ("minimum_of_three", "minimum_of_three(a, b, c)", "returns the smallest of the three numbers",
     "return min(a, b, c)",
     ["minimum_of_three(3, 1, 2) == 1", "minimum_of_three(5, 5, 5) == 5", "minimum_of_three(-1, 0, 1) == -1",
      "minimum_of_three(9, 8, 7) == 7"]),
    ("capitalize_words", "capitalize_words(s)", "returns s with the first letter of every space-separated word upper "
     "case and the rest unchanged", "return ' '.join(w[:1].upper() + w[1:] for w in s.split(' '))",
     ["capitalize_words('hello world') == 'Hello World'", "capitalize_words('a') == 'A'",
      "capitalize_words('') == ''", "capitalize_words('python is fun') == 'Python Is Fun'"]),
    ("evens", "evens(xs)", "returns the even numbers of the list xs, in order", "return [x for x in xs if x % 2 == 0]",
     ["evens([1, 2, 3, 4]) == [2, 4]", "evens([]) == []", "evens([1, 3]) == []", "evens([0, -2]) == [0, -2]"]),
    ("unique", "unique(xs)", "returns the elements of the list xs without repeats, in order of first occurrence",
     "return list(dict.fromkeys(xs))",
     ["unique([1, 2, 1, 3]) == [1, 2, 3]", "unique([]) == []", "unique([5, 5, 5]) == [5]",
      "unique(['b', 'a', 'b']) == ['b', 'a']"]),
    ("is_prime", "is_prime(n)", "returns True when the integer n is a prime number",
     "return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))",
     ["is_prime(2) is True", "is_prime(15) is False", "is_prime(1) is False", "is_prime(97) is True"]),
    ("gcd", "gcd(a, b)", "returns the greatest common divisor of the positive integers a and b",
     "while b:\n        a, b = b, a % b\n    return a",
     ["gcd(12, 18) == 6", "gcd(7, 3) == 1", "gcd(10, 10) == 10", "gcd(100, 75) == 25"]),
    ("digit_sum", "digit_sum(n)", "returns the sum of the decimal digits of the integer n >= 0",
     "return sum(int(d) for d in str(n))",
     ["digit_sum(123) == 6", "digit_sum(0) == 0", "digit_sum(99) == 18", "digit_sum(1000) == 1"]),
    ("celsius_to_fahrenheit", "celsius_to_fahrenheit(c)", "converts c degrees Celsius to Fahrenheit",
     "return c * 9 / 5 + 32",
     ["celsius_to_fahrenheit(0) == 32", "celsius_to_fahrenheit(100) == 212", "celsius_to_fahrenheit(-40) == -40",
      "celsius_to_fahrenheit(37) == 98.6"]),
    ("word_count", "word_count(s)", "returns the number of whitespace-separated words in s", "return len(s.split())",
     ["word_count('a b c') == 3", "word_count('') == 0", "word_count('  hi  there ') == 2", "word_count('one') == 1"]),
    ("flatten", "flatten(xss)", "returns the lists inside the list xss joined into one list",
     "return [x for xs in xss for x in xs]",
     ["flatten([[1, 2], [3]]) == [1, 2, 3]", "flatten([]) == []", "flatten([[], [1]]) == [1]",
      "flatten([['a'], ['b', 'c']]) == ['a', 'b', 'c']"]),
    ("clamp", "clamp(x, low, high)", "returns x limited to the range low..high", "return max(low, min(x, high))",
     ["clamp(5, 0, 10) == 5", "clamp(-3, 0, 10) == 0", "clamp(42, 0, 10) == 10", "clamp(0, 0, 0) == 0"]),
    ("last_element", "last_element(xs)", "returns the last element of the list xs, or None when it is empty",
     "return xs[-1] if xs else None",
     ["last_element([1, 2, 3]) == 3", "last_element([]) is None", "last_element(['a']) == 'a'",
      "last_element([None, 0]) == 0"]),
    ("repeat_string", "repeat_string(s, n)", "returns the string s repeated n times", "return s * n",
     ["repeat_string('ab', 3) == 'ababab'", "repeat_string('x', 0) == ''", "repeat_string('', 5) == ''",
      "repeat_string('z', 1) == 'z'"]),
    ("count_positive", "count_positive(xs)", "returns how many numbers in the list xs are greater than 0",
     "return sum(1 for x in xs if x > 0)",
     ["count_positive([1, -2, 3]) == 2", "count_positive([]) == 0", "count_positive([0, 0]) == 0",
      "count_positive([5, 6]) == 2"]),
    ("sort_descending", "sort_descending(xs)", "returns a new list with the numbers of xs from largest to smallest",
     "return sorted(xs, reverse=True)",
     ["sort_descending([1, 3, 2]) == [3, 2, 1]", "sort_descending([]) == []", "sort_descending([5, 5]) == [5, 5]",
      "sort_descending([-1, 0]) == [0, -1]"]),
    ("power_of_two", "power_of_two(n)", "returns 2 to the power of the integer n >= 0", "return 2 ** n",
     ["power_of_two(0) == 1", "power_of_two(3) == 8", "power_of_two(10) == 1024", "power_of_two(1) == 2"]),
    ("char_frequencies", "char_frequencies(s)", "returns a dict mapping each character of s to how often it occurs",
     "out = {}\n    for c in s:\n        out[c] = out.get(c, 0) + 1\n    return out",
     ["char_frequencies('aab') == {'a': 2, 'b': 1}", "char_frequencies('') == {}", "char_frequencies('x') == {'x': 1}",
      "char_frequencies('abab') == {'a': 2, 'b': 2}"]),
    ("second_largest", "second_largest(xs)", "returns the second largest distinct number of the list xs (it has at "
     "least two distinct numbers)", "return sorted(set(xs))[-2]",
     ["second_largest([1, 2, 3]) == 2", "second_largest([5, 5, 4]) == 4", "second_largest([-1, -2]) == -2",
      "second_largest([10, 20, 20, 15]) == 15"]),
    ("binary_string", "binary_string(n)", "returns the binary digits of the integer n >= 0 as a string, without a "
     "prefix", "return bin(n)[2:]",
     ["binary_string(5) == '101'", "binary_string(0) == '0'", "binary_string(8) == '1000'",
      "binary_string(255) == '11111111'"]),
]

_HARNESS = """\
import json, signal, sys
nonce = sys.stdin.readline().strip()
tests = json.load(open("tests.json"))
passed = 0
def _alarm(*_):
    raise TimeoutError("test took too long")
signal.signal(signal.SIGALRM, _alarm)
namespace = {"__name__": "__solution__"}
try:
    exec(compile(open("solution.py").read(), "solution.py", "exec"), namespace)
    loaded = True
except BaseException as e:
    print(f"the code failed to load: {type(e).__name__}: {e}", file=sys.stderr)
    loaded = False
for test in tests if loaded else []:
    signal.setitimer(signal.ITIMER_REAL, PER_TEST_S)
    try:
        exec(test, dict(namespace))
        passed += 1
    except BaseException as e:
        print(f"failed: {test}: {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
sys.stdout.flush()
print(f"\\n{nonce} {passed} {len(tests)}")
"""


def extract_code(completion: str) -> str:
    """The program in a completion: its last fenced block (```python, ```py or bare ```), the text after an opening
    fence that was never closed, or else the whole completion.

    >>> extract_code("Here:\\n```python\\ndef f():\\n    return 1\\n```\\nDone.")
    'def f():\\n    return 1\\n'
    """
    blocks = _FENCED.findall(completion)
    if blocks:
        return blocks[-1]
    unclosed = _OPEN_FENCE.search(completion)
    return unclosed.group(1) if unclosed else completion


def code_tests(prompt: str, completion: str, tests: list[str] | str | None = None, *, limits: Limits | None = None,
               per_test_s: float = 2.0, **row) -> float | None:
    """The fraction of `tests` (assert statements; a JSON list in a string is read too) that pass on the completion's
    code, run in the sandbox; None when the row has no tests or the sandbox could not start the code.

    limits: the whole run's (default: Limits(wall_s=10, cpu_s=10)); per_test_s: each assert's own time limit.
    """
    if isinstance(tests, str):
        tests = json.loads(tests)
    if not tests:
        return None
    nonce = secrets.token_hex(16)
    harness = _HARNESS.replace("PER_TEST_S", repr(float(per_test_s)))
    result = run(harness, stdin=nonce + "\n", limits=limits,
                 files={"solution.py": extract_code(completion),
                        "tests.json": json.dumps([t if t.lstrip().startswith("assert") else f"assert {t}"
                                                  for t in tests])})
    if result.error is not None:
        return None
    for line in reversed(result.stdout.splitlines()):
        fields = line.split()
        if len(fields) == 3 and fields[0] == nonce:
            return int(fields[1]) / max(1, int(fields[2]))
    return 0.0  # killed before the harness could report (a hang at import, a limit, a crash)


def _split_of(name: str) -> str:
    """One problem in four is "eval" (blake2b of its name mod 4): with 32 problems, arith's 1 in 10 leaves too few."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return "eval" if int.from_bytes(digest, "big") % 4 == 0 else "train"


@dataclass
class CodeTask:
    """The built-in function-writing problems with the code_tests verifier (see the module docstring).

    max_digits, ops, steps: accepted for a uniform task.* config, and ignored: the problems are fixed.

    >>> task = CodeTask()
    >>> task.score(task.prompt_text(PROBLEMS[0]), "def add(a, b):\\n    return a + b", tests=PROBLEMS[0][4])
    1.0
    """

    max_digits: int = 3
    ops: str = "+"
    steps: bool = False

    def problem(self, rng: random.Random) -> tuple:
        return rng.choice(PROBLEMS)

    def prompt_text(self, problem: tuple) -> str:
        name, signature, does, _, _ = problem
        return f"Write a Python function `{signature}` that {does}. Answer with the code in a ```python block."

    def solution_text(self, problem: tuple) -> str:
        _, signature, _, body, _ = problem
        return f"```python\ndef {signature}:\n    {body}\n```"

    def problems(self, split: str, n: int, seed: int = 0) -> list[tuple]:
        """`n` problems of `split`: train samples with replacement, eval gives each problem at most once."""
        if split not in ("train", "eval"):
            raise ConfigError(f"code: split must be 'train' or 'eval', got {split!r}")
        pool = [p for p in PROBLEMS if _split_of(p[0]) == split]
        rng = random.Random(f"code:{seed}:{split}")
        if split == "eval":
            return rng.sample(pool, min(n, len(pool)))
        return [rng.choice(pool) for _ in range(n)]

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Online-RL rows: [{"prompt": "Write a Python function `add(a, b)` …", "tests": ["assert add(1, 2) == 3",
        …]}, …]."""
        return [{"prompt": self.prompt_text(p), "tests": [f"assert {t}" for t in p[4]]}
                for p in self.problems(split, n, seed)]

    def sft_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Chat rows with the reference solution: {"messages": [user, assistant], "tests"}."""
        return [{"messages": [{"role": "user", "content": self.prompt_text(p)},
                              {"role": "assistant", "content": self.solution_text(p)}],
                 "tests": [f"assert {t}" for t in p[4]]}
                for p in self.problems(split, n, seed)]

    def tool_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        """Rows with a run of the reference solution on one call (the left side of the first test) before the
        answer (posttrain.envs.demonstrations): {"prompt", "tests", "calls": [[{"name": "run_python",
        "arguments": {"code": "def add(a, b):\\n    return a + b\\n\\nprint(add(1, 2))"}}]], "final": the
        solution in a ```python block}."""
        out = []
        for row, (_, signature, _, body, tests) in zip(self.rows(split, n, seed), self.problems(split, n, seed)):
            probe = re.split(r" (?:==|is) ", tests[0])[0]
            code = f"def {signature}:\n    {body}\n\nprint({probe})"
            out.append({**row, "calls": [[{"name": "run_python", "arguments": {"code": code}}]],
                        "final": f"It works:\n```python\ndef {signature}:\n    {body}\n```"})
        return out

    def text_rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        return [{"text": self.prompt_text(p) + "\n" + self.solution_text(p)} for p in self.problems(split, n, seed)]

    def extract_answer(self, completion: str) -> str | None:
        return extract_code(completion)

    def score(self, prompt: str, completion: str, tests: list[str] | str | None = None, **row) -> float | None:
        """code_tests: the fraction of the row's tests that pass."""
        return code_tests(prompt, completion, tests)
