"""The `word` task: stable disjoint splits, balanced and selectable levels, answers and worked solutions that check
out, the final-number verifier on a table of hand-written completions, chat rows, and per-level accuracy through the
real CLI on the embedded tiny model (untrained: it solves nothing, so one test swaps in a verifier that knows the
level to make the per-level numbers non-trivial)."""

import json
import re
from collections import Counter

import pytest

from conftest import run_cli
from posttrain import cli, tasks
from posttrain.config import TaskConfig
from posttrain.errors import ConfigError
from posttrain.tasks.arith import ArithTask
from posttrain.tasks.word import INSTRUCTION, TEMPLATES, WordProblem, WordTask, final_number, split_of

CAST = ("Maya", "Ben", "stickers", "boxes")

# The arithmetic of each kind, written out again here (the task computes it in tasks.word.evaluate).
FORMULA = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
           "add_sub": lambda a, b, c: a + b - c, "sub_add": lambda a, b, c: a - b + c,
           "mul_add": lambda a, b, c: a * b + c, "mul_sub": lambda a, b, c: a * b - c}


# ---- splits and levels ---------------------------------------------------------------------------------------------

def test_rows_are_deterministic_and_depend_on_seed_and_split():
    task = WordTask()
    assert task.rows("train", 40, seed=3) == task.rows("train", 40, seed=3)
    assert task.rows("train", 40, seed=3) != task.rows("train", 40, seed=4)
    assert task.rows("train", 40) != task.rows("eval", 40)


def test_split_is_a_stable_hash_of_the_arithmetic_not_of_the_names():
    # Pinned (blake2b of "level:kind:template:numbers"): the same in every process and on every machine.
    keys = [(1, "add", 0, (47, 85)), (1, "add", 0, (10, 19)), (5, "mul_sub", 0, (12, 6, 9)), (3, "mul", 1, (23, 7))]
    assert [split_of(WordProblem(*k, CAST)) for k in keys] == ["train", "eval", "eval", "train"]
    other_cast = ("Tom", "Uma", "coins", "jars")
    assert all(split_of(WordProblem(*k, CAST)) == split_of(WordProblem(*k, other_cast)) for k in keys)
    assert WordProblem(*keys[0], CAST) == WordProblem(*keys[0], other_cast)  # one problem, told with other names


def test_train_and_eval_are_disjoint_and_eval_is_unique():
    task = WordTask()
    train = {p.key for p in task.problems("train", 3000)}
    evals = [p.key for p in task.problems("eval", 1000)]
    assert len(evals) == len(set(evals)) == 1000
    assert not train & set(evals)
    assert all(split_of(p) == "eval" for p in task.problems("eval", 200))


def test_levels_are_taken_in_turn_so_every_prefix_is_balanced():
    rows = WordTask().rows("eval", 500)
    assert [r["level"] for r in rows[:7]] == [1, 2, 3, 4, 5, 1, 2]
    assert Counter(r["level"] for r in rows) == {level: 100 for level in range(1, 6)}
    assert WordTask().rows("eval", 7) == rows[:7]  # a shorter data set is a prefix of a longer one


def test_levels_are_selectable_and_each_level_keeps_its_own_problems():
    every, some = WordTask().rows("train", 100), WordTask(levels=[4, 2]).rows("train", 40)
    assert [r["level"] for r in some[:4]] == [2, 4, 2, 4]
    assert Counter(r["level"] for r in some) == {2: 20, 4: 20}
    for level in (2, 4):  # level 2's problems do not depend on which other levels are drawn
        assert [r for r in some if r["level"] == level] == [r for r in every if r["level"] == level]


@pytest.mark.parametrize("levels", [[], [0], [6], [1, 1], [2, 7]])
def test_bad_levels_are_refused(levels):
    with pytest.raises(ConfigError, match="task.levels"):
        WordTask(levels=levels)


def test_bad_levels_on_the_command_line_exit_2_with_the_fix(tmp_path):
    proc = run_cli("eval", "task.name=word", "task.levels=1,6", f"output_dir={tmp_path / 'out'}", "num_problems=2")
    assert proc.returncode == 2
    assert "task.levels" in proc.stderr and "task.levels=1,2,3" in proc.stderr
    assert not (tmp_path / "out" / "results.json").exists()


# ---- the problems, their answers and worked solutions ----------------------------------------------------------------

RANGES = {1: [(10, 99), (10, 99)], 2: [(100, 999), (100, 999)], 3: [(10, 99), (2, 9)], 4: [(11, 99), (11, 99)]}


def test_answers_are_the_arithmetic_of_the_numbers_in_the_story():
    task = WordTask()
    for p in task.problems("train", 1000) + task.problems("eval", 500):
        answer = FORMULA[p.kind](*p.numbers)
        assert p.answer == answer >= 1
        story = task.prompt_text(p)
        assert Counter(map(int, re.findall(r"\d+", story))) == Counter(p.numbers)
        for value, (low, high) in zip(p.numbers, RANGES.get(p.level, [])):
            assert low <= value <= high
        if p.level == 5:  # the first step leaves something to give away
            assert FORMULA[p.kind.split("_")[0]](*p.numbers[:2]) >= 1
        if p.kind == "sub":
            assert p.numbers[0] > p.numbers[1]


def test_worked_solutions_are_true_equations_ending_in_the_answer():
    task = WordTask()
    equation = re.compile(r"(\d+) ([-+×]) (\d+) = (\d+)")
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "×": lambda a, b: a * b}
    for row in task.sft_rows("train", 500):
        solution = row["messages"][1]["content"]
        found = equation.findall(solution)
        assert len(found) == (2 if row["level"] == 5 else 1), solution
        assert all(ops[op](int(a), int(b)) == int(c) for a, op, b, c in found), solution
        assert solution.endswith(f"The answer is {row['answer']}.")
        assert task.score(row["messages"][0]["content"], solution, answer=row["answer"]) == 1.0


def test_hand_worked_examples():
    task = WordTask()
    p = WordProblem(5, "mul_sub", 0, (12, 6, 9), CAST)
    assert task.prompt_text(p) == ("Maya buys 6 boxes of stickers with 12 in each and gives 9 of them to Ben. How "
                                   "many stickers does Maya keep?\nGive the final answer as a number.")
    assert task.solution_text(p) == "First, 6 × 12 = 72. Then 72 - 9 = 63. The answer is 63."
    p = WordProblem(1, "sub", 0, (85, 47), CAST)
    assert task.solution_text(p) == "Maya gives away 47 of 85: 85 - 47 = 38. The answer is 38."


def test_stories_vary_in_template_name_and_object():
    problems = WordTask().problems("train", 2000)
    for kind, templates in TEMPLATES.items():
        assert {p.template for p in problems if p.kind == kind} == set(range(len(templates)))
    assert len({p.cast[0] for p in problems}) >= 20 and len({p.cast[2] for p in problems}) >= 15
    assert all(p.cast[0] != p.cast[1] for p in problems)  # nobody gives things to themselves


def test_chat_rows_and_their_rendering_through_the_chat_template():
    from posttrain.models.loading import load_tokenizer
    from posttrain.rollout.text import format_prompt

    task = WordTask()
    rows, sft = task.rows("eval", 10), task.sft_rows("eval", 10)
    for row, chat in zip(rows, sft):
        assert set(row) == {"prompt", "answer", "level", "values"} and set(chat) == {"messages", "answer", "level"}
        assert row["values"][-1] == row["answer"]
        assert row["prompt"].endswith("\n" + INSTRUCTION)
        assert [m["role"] for m in chat["messages"]] == ["user", "assistant"]
        assert chat["messages"][0]["content"] == row["prompt"] and (chat["answer"], chat["level"]) == \
            (row["answer"], row["level"])
    tokenizer = load_tokenizer("tiny")
    text = tokenizer.decode(format_prompt(tokenizer, rows[0]["prompt"], use_chat_template=True))
    assert rows[0]["prompt"] in text and text.index(rows[0]["prompt"]) > 0  # inside a user turn
    assert task.text_rows("eval", 1)[0]["text"] == rows[0]["prompt"] + "\n" + sft[0]["messages"][1]["content"]


def test_preference_rows_reject_a_wrong_final_result():
    task = WordTask()
    for row in task.preference_rows("train", 100):
        assert task.score(row["prompt"], row["chosen"], answer=row["answer"]) == 1.0
        assert task.score(row["prompt"], row["rejected"], answer=row["answer"]) == 0.0
        wrong = int(final_number(row["rejected"]))
        assert wrong >= 0 and abs(wrong - int(row["answer"])) in (1, 10)


# ---- the verifier --------------------------------------------------------------------------------------------------

VERIFIER_TABLE = [
    # plain and formatted answers
    ("The answer is 47.", "47"),
    ("47", "47"),
    ("**47**", "47"),
    ("\\boxed{47}", "47"),
    ("So the total is $\\boxed{47}$.", "47"),
    ("47.0", "47"),
    ("47.5", "47.5"),
    ("The answer is 47.50", "47.5"),
    ("= 47", "47"),
    ("$1,234", "1234"),
    ("They have 1,234 stamps.", "1234"),
    ("1,234,567 people", "1234567"),
    ("The total is 1{,}234.", "1234"),
    ("-35", "-35"),
    ("The result is \u221212.", "-12"),
    ("The answer is 47!", "47"),
    ("It's 47%.", "47"),
    ("(47)", "47"),
    ("Answer: 47", "47"),
    ("**Answer:** 1,234 apples", "1234"),
    ("The answer is:\n\n**47**", "47"),
    ("#### 72", "72"),
    ("Final answer = 1,000,000", "1000000"),
    ("0.5", "0.5"),
    # worked solutions: the result of the last equation
    ("First, 6 × 12 = 72. Then 72 - 9 = 63.", "63"),
    ("Maya has 47 + 85 = 132 stickers.", "132"),
    ("72-9=63", "63"),
    ("Step 1: 12 + 5 = 17\nStep 2: 17 - 3 = 14", "14"),
    ("\\(47 \\times 3 = 141\\)", "141"),
    ("47 + 0 = 47", "47"),
    ("\\boxed{12 + 5 = 17}", "17"),
    # the marker and the last sentence
    ("The answer is 47. I used 12 and 35 to get it.", "47"),
    ("The answer is 47. The answer is 48.", "48"),
    ("\\boxed{47} or maybe 48", "47"),
    ("Tom has 47 apples.\n\nI hope this helps!", "47"),
    ("What is 6 × 12? It is 72.", "72"),
    ("Is it 47? Maybe 52.", "52"),
    ("The H2O costs 5 dollars.", "5"),
    # conflicting numbers at the end
    ("It is 47 or 48.", None),
    ("47? Maybe 52.", None),
    ("The answer is 47? Maybe 52.", None),
    ("3, 4", None),
    ("12,34", None),
    ("The answer: 3, 4", None),
    ("The answer is 47 apples and 3 oranges.", None),
    ("So Tom has 63 apples left after giving 9 away.", None),
    # no number at all
    ("", None),
    ("I don't know.", None),
    ("The answer is unclear.", None),
    ("The answer island is 5 miles away. It has 3 huts.", "3"),  # "answer is…" inside a word is no marker
]


@pytest.mark.parametrize("completion, expected", VERIFIER_TABLE)
def test_final_number_table(completion, expected):
    assert WordTask().extract_answer(completion) == expected


@pytest.mark.parametrize("completion, answer, expected", [
    ("The answer is 132.", "132", 1.0),
    ("132.0", "132", 1.0),
    ("The answer is 1,034.", "1034", 1.0),
    ("The answer is 132.", 132, 1.0),           # an integer answer column
    ("47.5", "47", 0.0),                        # not an integer result
    ("It is 132 or 133.", "132", 0.0),          # a conflict scores 0, not None: the model answered badly
    ("no idea", "132", 0.0),
    ("The answer is 132.", None, None),         # no reference: unscorable
    ("The answer is 132.", "n/a", None),
    ("The answer is 132.", "NaN", None),
])
def test_score_follows_the_reward_contract(completion, answer, expected):
    assert WordTask().score("prompt", completion, answer=answer, level=1) == expected


# ---- the registry and the config -----------------------------------------------------------------------------------

def test_registry_and_from_config_pass_the_options_the_task_declares():
    assert "word" in tasks.names()
    assert tasks.from_config(TaskConfig(name="word", levels=[3, 1])).levels == [1, 3]
    arith = tasks.from_config(TaskConfig(name="arith", max_digits=2, levels=[3]))
    assert isinstance(arith, ArithTask) and arith.max_digits == 2
    with pytest.raises(ConfigError, match="no option"):
        tasks.get("word", max_digits=2)


# ---- per-level accuracy through the CLI ------------------------------------------------------------------------------

def levelled_verifier(self, prompt, completion, answer=None, level=None, **row):
    """Right on levels 1 and 3, wrong elsewhere: per-level accuracy 1, 0, 1, 0, 0 whatever the model writes."""
    return 1.0 if level in (1, 3) else 0.0


def test_eval_reports_accuracy_per_level_through_the_cli(tmp_path):
    out = tmp_path / "eval"
    run_cli("eval", "task.name=word", f"output_dir={out}", "num_problems=10", "strategies=greedy,sampling,maj@k",
            "search.n=2", "search.pass_k=1", "search.max_new_tokens=12", check=True)
    results = json.loads((out / "results.json").read_text())
    levels = [f"level_{k}" for k in range(1, 6)]
    for row in results["rows"]:
        assert list(row["accuracy_by_level"]) == levels
        # 2 problems per level: the overall accuracy is the mean of the levels'
        assert row["accuracy"] == pytest.approx(sum(row["accuracy_by_level"].values()) / 5)
    table = (out / "results.md").read_text()
    assert "Accuracy per level" in table and "| level 1 | level 2 | level 3 | level 4 | level 5 |" in table


def test_eval_per_level_numbers_come_from_each_problems_verdict(tmp_path, monkeypatch):
    monkeypatch.setattr(WordTask, "score", levelled_verifier)
    out = tmp_path / "eval"
    assert cli.main(["eval", "task.name=word", "task.levels=1,2,3,4,5", f"output_dir={out}", "num_problems=10",
                     "strategies=greedy", "search.max_new_tokens=4"]) == 0
    (greedy,) = json.loads((out / "results.json").read_text())["rows"]
    assert greedy["accuracy"] == pytest.approx(0.4)
    assert greedy["accuracy_by_level"] == {"level_1": 1.0, "level_2": 0.0, "level_3": 1.0, "level_4": 0.0,
                                           "level_5": 0.0}
    assert "| greedy | — | 1.000 | 0.000 | 1.000 | 0.000 | 0.000 |" in (out / "results.md").read_text()


def test_a_task_without_levels_reports_no_levels(tmp_path):
    out = tmp_path / "eval"
    assert cli.main(["eval", "task.max_digits=1", f"output_dir={out}", "num_problems=3", "strategies=greedy",
                     "search.max_new_tokens=4"]) == 0
    assert "accuracy_by_level" not in json.loads((out / "results.json").read_text())["rows"][0]
    assert "level" not in (out / "results.md").read_text()


def test_rl_on_the_word_task_logs_accuracy_per_level(tmp_path, monkeypatch):
    monkeypatch.setattr(WordTask, "score", levelled_verifier)  # the reward and the held-out accuracy both use it
    run_dir = tmp_path / "rl"
    assert cli.main(["rl", "--algo", "grpo", "task.name=word", f"output_dir={run_dir}", "train.max_steps=2",
                     "rl.prompts_per_step=2", "rl.generations=2", "train.micro_batch_size=4", "task.num_train=16",
                     "eval.num_samples=10", "eval.max_new_tokens=4", "sampling.max_new_tokens=8", "threads=1",
                     "log.progress=false", "train.lr=1e-5"]) == 0
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["eval/accuracy"] == pytest.approx(0.4)
    assert {k: v for k, v in last.items() if k.startswith("eval/accuracy/")} == {
        "eval/accuracy/level_1": 1.0, "eval/accuracy/level_2": 0.0, "eval/accuracy/level_3": 1.0,
        "eval/accuracy/level_4": 0.0, "eval/accuracy/level_5": 0.0}


def test_sft_on_the_word_task_runs_through_the_cli_and_logs_each_level(tmp_path):
    run_dir = tmp_path / "sft"
    run_cli("sft", "task.name=word", "task.levels=1,5", f"output_dir={run_dir}", "train.max_steps=2",
            "task.num_train=16", "task.num_eval=4", "eval.num_samples=4", "eval.max_new_tokens=4", "threads=1",
            "log.progress=false", "train.micro_batch_size=4", check=True)
    last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    assert sorted(k for k in last if k.startswith("eval/accuracy")) == [
        "eval/accuracy", "eval/accuracy/level_1", "eval/accuracy/level_5"]
