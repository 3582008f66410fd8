"""Monte-Carlo step labels (rewards/step_labels.py): the module's worked example by hand, hard vs soft, a 0 not
carried forward, shared prefixes rolled out once; a scripted policy that continues correctly exactly from correct
prefixes reproduces the task's exact labels; the model-backed completer is seeded, batch-invariant and continues a
prefix exactly; and `posttrain rm reward.mode=prm reward.labels=mc` end to end on a small trained policy."""

import json
import re

import pytest

from conftest import run_cli
from posttrain import cli
from posttrain.config import RewardConfig, RMConfig
from posttrain.models.inference import load_for_inference
from posttrain.rewards.step_labels import (PolicyCompleter, agreement, arith_exact_labels, mc_labels, rows_for_run,
                                           split_steps, step_prefixes)
from posttrain.tasks.arith import ArithTask

TASK = ArithTask(max_digits=2, ops="+-", steps=True)


class Scripted:
    """complete() that answers from a table, prefix text → continuations, and records what it was asked."""

    def __init__(self, table):
        self.table, self.asked = table, []

    def __call__(self, prefixes):
        self.asked.append(list(prefixes))
        return [list(self.table[text]) for _, text in prefixes]


def test_split_steps_and_prefixes():
    assert split_steps("7+5=12 carry 1\n\nanswer: 12\n") == ["7+5=12 carry 1", "answer: 12"]
    assert step_prefixes(["a", "b", "answer: 3"]) == ["a\n", "a\nb\n"]
    assert step_prefixes(["answer: 3"]) == []


def test_worked_example_hard_and_soft():
    """The module docstring: 47+85=, second line wrong, m = 4."""
    s1, s2 = "7+5=12 carry 1", "4+8+1=14 carry 1"
    policy = Scripted({
        s1 + "\n": ["4+8+1=13 carry 1\nanswer: 132", "4+8+1=13 carry 1\nanswer: 132", "4+8+1=14 carry 1\nanswer: 142",
                    "4+8+1=13 carry 1\nanswer: 132"],
        s1 + "\n" + s2 + "\n": ["answer: 142"] * 4})
    solution = {"prompt": "47+85=", "completions": [s1, s2, "answer: 142"], "answer": "132"}
    (hard,), stats = mc_labels([solution], policy, TASK.score, target="hard")
    (soft,), _ = mc_labels([solution], policy, TASK.score, target="soft")
    assert hard["labels"] == [True, False, False]
    assert soft["labels"] == [0.75, 0.0, 0.0] == hard["mc_values"]
    assert policy.asked[0] == [("47+85=", s1 + "\n"), ("47+85=", s1 + "\n" + s2 + "\n")]  # one call, no last step
    assert stats == {"prefixes": 2, "prefix_steps": 2, "rollouts": 8}
    assert arith_exact_labels(TASK, "47+85=", solution["completions"]) == [True, False, False]


def test_a_zero_is_not_carried_forward():
    """Each step stands on its own rollouts (Math-Shepherd): an unlucky 0 of 2 at step 1 leaves step 2's 1 of 2."""
    policy = Scripted({"5+2=7\n": ["answer: 6", "answer: 8"], "5+2=7\nok\n": ["answer: 7", "answer: 9"]})
    solution = {"prompt": "5+2=", "completions": ["5+2=7", "ok", "answer: 7"], "answer": "7"}
    (row,), _ = mc_labels([solution], policy, TASK.score)
    assert row["labels"] == [False, True, True] and row["mc_values"] == [0.0, 0.5, 1.0]


def test_shared_prefixes_are_rolled_out_once():
    table = {"x\n": ["answer: 1"], "x\ny\n": ["answer: 2"], "x\nz\n": ["answer: 1"]}
    policy = Scripted(table)
    rows = [{"prompt": "0+1=", "completions": ["x", "y", "answer: 2"], "answer": "1"},
            {"prompt": "0+1=", "completions": ["x", "z", "answer: 1"], "answer": "1"},
            {"prompt": "1+0=", "completions": ["x", "answer: 1"], "answer": "1"}]   # same text, other problem
    labelled, stats = mc_labels(rows, policy, TASK.score)
    assert [text for _, text in policy.asked[0]] == ["x\n", "x\ny\n", "x\nz\n", "x\n"]
    assert stats["prefixes"] == 4 and stats["prefix_steps"] == 5
    assert [r["labels"] for r in labelled] == [[True, False, False], [True, True, True], [True, True]]


def faithful_policy(m):
    """Continues a prefix with the rest of the task's worked solution when every line so far is right, else with the
    rest of it and a wrong answer: a policy whose MC labels must equal the exact labels, whatever m."""
    def complete(prefixes):
        out = []
        for prompt, text in prefixes:
            a, op, b = re.fullmatch(r"(\d+)([+-])(\d+)=", prompt).groups()
            reference = TASK.solution_text(int(a), op, int(b)).split("\n")
            done = text.split("\n")[:-1]
            rest = reference[len(done):]
            if done != reference[:len(done)]:
                rest = rest[:-1] + [f"answer: {int(reference[-1].split()[-1]) + 1}"]
            out.append(["\n".join(rest)] * m)
        return out
    return complete


@pytest.mark.parametrize("target", ["hard", "soft"])
def test_faithful_policy_reproduces_the_exact_labels(target):
    rows = TASK.process_rows("train", 60, seed=3)  # half with one injected error, labelled false from it on
    assert any(not all(r["labels"]) for r in rows) and any(all(r["labels"]) for r in rows)
    solutions = [{k: r[k] for k in ("prompt", "completions", "answer")} for r in rows]
    labelled, _ = mc_labels(solutions, faithful_policy(3), TASK.score, target=target)
    for row, exact in zip(labelled, rows):
        assert [float(y) for y in row["labels"]] == [float(y) for y in exact["labels"]], row
        assert arith_exact_labels(TASK, row["prompt"], row["completions"]) == exact["labels"]
    assert agreement(labelled, [r["labels"] for r in rows])["agreement"] == 1.0


def test_agreement_worked_example():
    stats = agreement([{"labels": [1.0, 1.0, 0.0]}, {"labels": [True]}], [[True, False, False], None])
    assert stats["agreement"] == pytest.approx(2 / 3) and stats["false_good"] == 0.5 and stats["false_bad"] == 0.0
    assert stats["steps"] == 3


def test_completer_is_seeded_batch_invariant_and_continues_a_prefix_exactly(small_policy):
    model, tok, _ = load_for_inference("tiny")
    prefixes = [("3+4=", ""), ("12+5=", "2+5=7\n"), ("3+4=", "3+4=7\n")]

    def run(batch_size, seed=0, temperature=1.0):
        completer = PolicyCompleter(model, tok, temperature=temperature, max_new_tokens=12, seed=seed,
                                    batch_size=batch_size)
        return completer(prefixes, n=3), completer.generated_tokens

    first, tokens = run(64)
    assert run(2) == (first, tokens)  # per-sample seeds: batching does not matter
    assert run(64, seed=1)[0] != first
    assert 0 < tokens <= 3 * 3 * 12
    # greedy: continuing a greedy solution from its first line (or any cut: one token per character) gives the rest
    model, tok, _ = load_for_inference(str(small_policy))
    greedy = PolicyCompleter(model, tok, temperature=0, max_new_tokens=24)
    (whole,), = greedy([("3+4=", "")], n=1)
    for cut in (whole.index("\n") + 1, 3):
        (rest,), = greedy([("3+4=", whole[:cut])], n=1)
        assert whole[:cut] + rest == whole, (whole, cut, rest)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


ARGS = ["reward.mode=prm", "reward.labels=mc", "task.max_digits=1", "task.num_train=12", "task.num_eval=20",
        "reward.mc_solutions=2", "reward.mc_rollouts=3", "reward.mc_max_new_tokens=24", "train.max_steps=3",
        "train.micro_batch_size=4", "train.lr=1e-4", "log.progress=false", "threads=1"]


@pytest.mark.parametrize("target", ["hard", "soft"])
def test_rm_prm_with_mc_labels_end_to_end(small_policy, tmp_path, target):
    out = tmp_path / "prm"
    code = cli.main(["rm", *ARGS, f"reward.label_policy={small_policy}", f"reward.mc_target={target}",
                     f"output_dir={out}"])
    assert code == 0
    rows = read_jsonl(out / "prm_data.jsonl")
    stats = json.loads((out / "prm_data_stats.json").read_text())
    assert len(rows) == stats["solutions"] == 12 * 2 - stats["empty_solutions"]
    assert stats["generated_tokens"] > 0 and stats["rollouts"] == 3 * stats["prefixes"]
    task = ArithTask(max_digits=1, steps=True)
    for row in rows:
        values = row["mc_values"]
        assert len(row["labels"]) == len(row["completions"]) == len(values)
        whole = task.score(row["prompt"], "\n".join(row["completions"]), answer=row["answer"])
        assert values[-1] == whole  # the last step is the solution's own verdict
        assert all(v * 3 == round(v * 3) for v in values[:-1])  # c of m = 3
        assert row["labels"] == ([v > 0 for v in values] if target == "hard" else values)
    assert any(v > 0 for r in rows for v in r["mc_values"])  # the policy reaches some answers
    assert 0 <= stats["exact"]["agreement"] <= 1 and stats["exact"]["steps"] == sum(len(r["labels"]) for r in rows)
    metrics = read_jsonl(out / "metrics.jsonl")
    assert "eval/step_accuracy" in metrics[-1] and (out / "final" / "config.json").is_file()


def test_mc_labels_without_a_policy_exit_2(tmp_path):
    proc = run_cli("rm", *ARGS, f"output_dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and "reward.label_policy" in proc.stderr and "fix:" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_a_resumed_run_reads_its_labelled_rows_instead_of_sampling_again(tmp_path):
    row = {"prompt": "1+1=", "completions": ["1+1=2", "answer: 2"], "labels": [True, True], "answer": "2"}
    (tmp_path / "prm_data.jsonl").write_text(json.dumps(row) + "\n")
    cfg = RMConfig(reward=RewardConfig(mode="prm", labels="mc", label_policy=str(tmp_path / "no_such_model")))
    assert rows_for_run(cfg, tmp_path, "cpu") == [row]
