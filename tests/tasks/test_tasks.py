"""Built-in tasks: the arith generator (determinism, disjoint splits, sampling), step texts, verifier, registry."""

import random
from collections import Counter

import pytest

from posttrain import tasks
from posttrain.errors import ConfigError
from posttrain.tasks.arith import ArithTask, split_of


def test_rows_are_deterministic_and_depend_on_seed():
    task = ArithTask(max_digits=3, ops="+-")
    assert task.rows("train", 50, seed=7) == task.rows("train", 50, seed=7)
    assert task.rows("train", 50, seed=7) != task.rows("train", 50, seed=8)
    assert task.rows("train", 50) != task.rows("eval", 50)


def test_train_and_eval_are_disjoint():
    task = ArithTask(max_digits=2)
    train = {row["prompt"] for row in task.rows("train", 5000)}
    evals = [row["prompt"] for row in task.rows("eval", 5000)]
    assert len(evals) == len(set(evals)) > 500      # eval is unique problems, and plenty of them
    assert not train & set(evals)
    assert all(split_of(*p) == "train" for p in task.problems("train", 500))


def test_split_assignment_is_a_stable_hash_not_pythons_salted_one():
    # Pinned values (blake2b of "6+7" is 0 mod 10): the same in every process and on every machine.
    assert [split_of(a, "+", b) for a, b in [(47, 85), (6, 7), (1, 4), (0, 0), (3, 3)]] == \
        ["train", "eval", "eval", "train", "eval"]
    assert sum(split_of(a, "+", b) == "eval" for a in range(100) for b in range(100)) in range(900, 1100)


def test_small_eval_split_stops_when_exhausted():
    rows = ArithTask(max_digits=1).rows("eval", 100)
    prompts = [row["prompt"] for row in rows]
    every_eval = {f"{a}+{b}=" for a in range(10) for b in range(10) if split_of(a, "+", b) == "eval"}
    assert len(prompts) == len(set(prompts)) and set(prompts) == every_eval


def test_digit_counts_are_uniform_not_values():
    task, rng = ArithTask(max_digits=3), random.Random(0)
    operands = [task.operand(rng) for _ in range(30_000)]
    counts = Counter(len(str(x)) for x in operands)
    # Uniform values would give 1% / 9% / 90%; uniform digit counts give a third each.
    for n_digits in (1, 2, 3):
        assert abs(counts[n_digits] / len(operands) - 1 / 3) < 0.02
    assert 0 in operands and max(operands) == 999


def test_subtraction_can_go_negative_and_rows_carry_the_answer():
    rows = ArithTask(max_digits=2, ops="-").rows("train", 200)
    assert any(row["answer"].startswith("-") for row in rows)
    for row in rows:
        a, b = map(int, row["prompt"].rstrip("=").split("-"))
        assert int(row["answer"]) == a - b


@pytest.mark.parametrize("problem, expected", [
    ((47, "+", 85), "7+5=12 carry 1\n4+8+1=13 carry 1\nanswer: 132"),
    ((52, "-", 17), "12-7=5 borrow 1\n5-1-1=3\nanswer: 35"),
    ((5, "+", 7), "5+7=12 carry 1\nanswer: 12"),
    ((100, "-", 1), "10-1=9 borrow 1\n10-0-1=9 borrow 1\n1-0-1=0\nanswer: 99"),
    ((17, "-", 52), "17-52=-(52-17)\n12-7=5 borrow 1\n5-1-1=3\nanswer: -35"),
    ((5, "+", 123), "5+3=8\n0+2=2\n0+1=1\nanswer: 128"),
])
def test_steps_text_for_hand_worked_examples(problem, expected):
    assert ArithTask(steps=True).solution_text(*problem) == expected


def test_steps_end_in_the_true_answer_for_many_problems():
    task, rng = ArithTask(max_digits=4, ops="+-", steps=True), random.Random(1)
    for _ in range(500):
        a, op, b = task.problem(rng)
        text = task.solution_text(a, op, b)
        assert task.score(task.prompt_text(a, op, b), text) == 1.0


def test_row_schemas():
    task = ArithTask(max_digits=2)
    row = task.rows("train", 1)[0]
    sft = task.sft_rows("train", 1)[0]
    text = task.text_rows("train", 1)[0]
    assert sft == {"messages": [{"role": "user", "content": row["prompt"]},
                                {"role": "assistant", "content": row["answer"]}], "answer": row["answer"]}
    assert text == {"text": row["prompt"] + row["answer"]}


@pytest.mark.parametrize("completion, expected", [
    ("132", "132"), ("  132</s>", "132"), ("-35\n", "-35"), ("the sum is 132", "132"), ("no digits", None),
])
def test_extract_answer_plain(completion, expected):
    assert ArithTask().extract_answer(completion) == expected


def test_extract_answer_steps_reads_the_answer_line_only():
    task = ArithTask(steps=True)
    assert task.extract_answer("7+5=12 carry 1\n4+8+1=13 carry 1\nanswer: 132") == "132"
    assert task.extract_answer("12-7=5 borrow 1\nanswer: -35\nanswer: 7") == "-35"
    assert task.extract_answer("7+5=12 carry 1") is None  # numbers in steps are not the answer


def test_score_cases():
    task = ArithTask(ops="+-")
    assert task.score("47+85=", "132", answer="132") == 1.0
    assert task.score("47+85=", "131", answer="132") == 0.0
    assert task.score("47+85=", "I don't know", answer="132") == 0.0
    assert task.score("17-52=", "-35", answer="-35") == 1.0
    assert task.score("17-52=", "35", answer="-35") == 0.0
    # Missing answer: recomputed from the (possibly chat-rendered) prompt.
    assert task.score("<s><|user|>\n17-52=</s>\n<|assistant|>\n", "-35") == 1.0
    assert task.score("what is this?", "3") is None
    # Extra row fields are accepted, as the reward contract fn(prompt, completion, **row) demands.
    assert task.score("47+85=", "132", answer="132", id=3, source="arith") == 1.0
    assert ArithTask(steps=True).score("47+85=", "7+5=12 carry 1\n4+8+1=13 carry 1\nanswer: 131") == 0.0


def test_registry_and_option_errors():
    assert tasks.names() == ["arith", "code", "lookup", "sums", "word"]
    task = tasks.get("arith", max_digits=2, ops="+-", steps=True)
    assert (task.max_digits, task.ops, task.steps) == (2, "+-", True)
    with pytest.raises(ConfigError, match=r"Did you mean 'arith'.*Valid tasks: arith"):
        tasks.get("arth")
    with pytest.raises(ConfigError, match="max_digit"):
        tasks.get("arith", max_digit=2)
    with pytest.raises(ConfigError, match="ops"):
        tasks.get("arith", ops="*")
    with pytest.raises(ConfigError, match="max_digits"):
        tasks.get("arith", max_digits=0)
    with pytest.raises(ConfigError, match="split"):
        ArithTask().rows("test", 3)


# ---- sums: many correct solutions per problem ----------------------------------------------------------------------

def _check_running_totals(terms, lines):
    """A steps solution is right iff it adds every term exactly once, each line's sum is right, and the answer
    line repeats the last total."""
    *steps, answer_line = lines
    used, total = [], None
    for line in steps:
        left, result = line.split("=")
        a, b = map(int, left.split("+"))
        if total is None:
            used += [a, b]
        else:
            assert a == total
            used.append(b)
        assert int(result) == a + b
        total = a + b
    assert sorted(used) == sorted(terms)
    assert answer_line == f"answer: {total}" and total == sum(terms)


def test_sums_solutions_take_many_orders_and_are_all_correct():
    from posttrain.tasks.sums import SumsTask

    task = SumsTask(max_digits=1, steps=True)
    rows = task.sft_rows("train", 400, seed=3)
    for row in rows:
        terms = [int(t) for t in row["messages"][0]["content"].rstrip("=").split("+")]
        solution = row["messages"][1]["content"]
        assert 3 <= len(terms) <= 6
        _check_running_totals(terms, solution.split("\n"))
        assert task.score(row["messages"][0]["content"], solution) == 1.0
        assert int(row["answer"]) == sum(terms)
    # Orders vary: among 4+ term problems, the first line is often not the first two terms in order.
    firsts = [r["messages"][1]["content"].split("\n")[0] for r in rows]
    prompts = [r["messages"][0]["content"].split("+") for r in rows]
    assert sum(f.split("=")[0] != "+".join(p[:2]) for f, p in zip(firsts, prompts)) > len(rows) // 2
    assert task.sft_rows("train", 400, seed=3) == rows  # deterministic, orders included


def test_sums_worked_example_splits_and_verifier():
    from posttrain.tasks.sums import SumsTask, running_totals, split_of

    task = SumsTask(max_digits=1, steps=True)
    assert running_totals((4, 9, 7, 2), [2, 3, 1, 0]) == ["7+2=9", "9+9=18", "18+4=22"]
    assert task.solution_text((4, 9, 7, 2)) == "4+9=13\n13+7=20\n20+2=22\nanswer: 22"
    assert SumsTask(max_digits=1).solution_text((4, 9, 7, 2)) == "22"
    # The verifier reads the answer line whatever the order; without a reference it recomputes from the prompt,
    # also when the prompt is chat-rendered.
    assert task.score("4+9+7+2=", "7+2=9\n9+9=18\n18+4=22\nanswer: 22") == 1.0
    assert task.score("<user>4+9+7+2=</user>", "answer: 21") == 0.0
    assert task.score("hello", "answer: 3") is None
    train = {r["prompt"] for r in task.rows("train", 3000)}
    evals = [r["prompt"] for r in task.rows("eval", 300)]
    assert len(set(evals)) == 300 and not train & set(evals)
    assert all(split_of(tuple(map(int, p.rstrip("=").split("+")))) == "eval" for p in evals)
    with pytest.raises(ConfigError, match="task.ops"):
        SumsTask(ops="-")
    with pytest.raises(ConfigError, match="max_digits"):
        tasks.get("sums", max_digits=5)


def test_sums_process_rows_label_the_first_wrong_line_on():
    from posttrain.tasks.sums import SumsTask

    task = SumsTask(max_digits=1, steps=True)
    rows = task.process_rows("train", 600, seed=1)
    corrupted = 0
    for row in rows:
        terms = [int(t) for t in row["prompt"].rstrip("=").split("+")]
        lines, labels = row["completions"], row["labels"]
        assert len(lines) == len(labels) == len(terms)  # len - 1 running totals and the answer line
        if all(labels):
            _check_running_totals(terms, lines)
            continue
        corrupted += 1
        k = labels.index(False)
        assert labels == [True] * k + [False] * (len(lines) - k)
        assert task.score(row["prompt"], "\n".join(lines)) == 0.0  # the error reaches the answer
        with pytest.raises(AssertionError):
            _check_running_totals(terms, lines)
    assert 0.4 < corrupted / len(rows) < 0.6
    with pytest.raises(ConfigError, match="steps"):
        SumsTask().process_rows("train", 1)


def test_sums_preference_rows_reject_a_swapped_term():
    """rejected: every line adds correctly, but the terms used are the problem's with one replaced by another of
    its values; chosen: a correct solution."""
    import random

    from posttrain.tasks.sums import SumsTask, swap_a_term

    task = SumsTask(max_digits=1, steps=True)
    rows = task.preference_rows("train", 300, seed=2)
    swapped = 0
    for row in rows:
        terms = [int(t) for t in row["prompt"].rstrip("=").split("+")]
        assert task.score(row["prompt"], row["chosen"]) == 1.0 and task.score(row["prompt"], row["rejected"]) == 0.0
        _check_running_totals(terms, row["chosen"].split("\n"))
        if len(set(terms)) == 1:  # nothing to swap: the answer line is off instead
            continue
        lines = row["rejected"].split("\n")
        used = [int(lines[0].split("+")[0])] + [int(line.split("+")[1].split("=")[0]) for line in lines[:-1]]
        _check_running_totals(used, lines)
        missing = [t for t in set(terms) if terms.count(t) > used.count(t)]
        extra = [t for t in set(used) if used.count(t) > terms.count(t)]
        assert len(missing) == len(extra) == 1 and extra[0] in terms and len(used) == len(terms)
        swapped += 1
    assert swapped > 0.95 * len(rows)
    assert task.preference_rows("train", 300, seed=2) == rows
    assert swap_a_term((3, 3, 3), random.Random(0)) is None
    assert sorted(swap_a_term((4, 9), random.Random(0))) in ([4, 4], [9, 9])
