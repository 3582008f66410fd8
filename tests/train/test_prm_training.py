"""`posttrain rm reward.mode=prm`, the process reward model: step tokenization checked by hand, the task's
step-labelled solutions, bad rows, and through the real CLI: it learns, saves a plain transformers token
classifier whose step scores reproduce the logged metrics, and is exact under accumulation and resume."""

import json
import math
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import losses, run_cli, write_jsonl
from posttrain import cli
from posttrain.data.process import build_step_examples
from posttrain.errors import ConfigError, DataError
from posttrain.models.loading import load_tokenizer
from posttrain.tasks.arith import ArithTask

ARGS = ["reward.mode=prm", "train.micro_batch_size=8", "train.grad_accum=2", "train.lr=3e-3", "log.every=1",
        "log.progress=false", "threads=1"]


def solutions(n, seed):
    """Step-labelled solutions a 1M-parameter model learns in a few dozen steps: a wrong step says "oops", and
    (first-error convention) every step from it on is labelled false, so the head must also look back."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(2, 5)
        steps, labels = [f"add {rng.randint(1, 99)}" for _ in range(length)], [True] * length
        if rng.random() < 0.5:
            k = rng.randrange(length)
            steps[k] = f"oops {rng.randint(1, 99)}"
            labels = [True] * k + [False] * (length - k)
        out.append({"prompt": f"{rng.randint(1, 99)}+{rng.randint(1, 99)}=", "completions": steps,
                    "labels": labels})
    return out


# ---- data ------------------------------------------------------------------------------------------------------------

def test_three_step_row_is_tokenized_with_each_score_at_its_separator():
    tok = load_tokenizer("tiny")
    newline = tok.convert_tokens_to_ids("\n")
    row = {"prompt": "2+2=", "completions": ["2+2=4", "4+1=5", "answer: 5"], "labels": [True, False, 0]}
    (plain,), _ = build_step_examples([row], tok, max_length=64, use_chat_template=False)
    # <s> 2 + 2 = | 2 + 2 = 4 \n | 4 + 1 = 5 \n | a n s w e r : _ 5 \n   (one token per character)
    assert plain["input_ids"] == [tok.bos_token_id] + tok.encode("2+2=2+2=4\n4+1=5\nanswer: 5\n")
    assert plain["step_positions"] == [10, 16, 26]
    assert [plain["input_ids"][p] for p in plain["step_positions"]] == [newline] * 3
    assert plain["step_labels"] == [1.0, 0.0, 0.0]
    # with the chat template: "<s><|user|>\n2+2=</s>\n<|assistant|>\n" is 11 tokens, then the same steps
    (chat,), _ = build_step_examples([row], tok, max_length=64)
    assert tok.decode(chat["input_ids"]) == "<s><|user|>\n2+2=</s>\n<|assistant|>\n2+2=4\n4+1=5\nanswer: 5\n"
    assert chat["step_positions"] == [16, 22, 32]
    assert [chat["input_ids"][p] for p in chat["step_positions"]] == [newline] * 3


def test_soft_labels_and_truncation_to_whole_steps():
    tok = load_tokenizer("tiny")
    row = {"prompt": "2+2=", "completions": ["2+2=4", "4+1=5", "answer: 5"], "labels": [1, 0.25, 0.0]}
    (example,), _ = build_step_examples([row], tok, max_length=20, policy="truncate", use_chat_template=False)
    assert example["step_positions"] == [10, 16] and example["step_labels"] == [1.0, 0.25]
    assert len(example["input_ids"]) == 17  # cut right after the second step's separator
    with pytest.raises(DataError, match="no usable row"):  # not one whole step fits: dropped as no_steps
        build_step_examples([row], tok, max_length=8, policy="truncate", use_chat_template=False)


def test_bad_rows_error_with_row_and_field_or_are_dropped_with_counts(tmp_path, capsys):
    tok = load_tokenizer("tiny")
    rows = [{"prompt": "1+1=", "completions": ["1+1=2", "answer: 2"], "labels": [True, True]},
            {"prompt": "2+2=", "completions": ["2+2=4", "answer: 4"], "labels": [True]},          # 2 steps, 1 label
            {"prompt": "3+3=", "labels": [True]},                                                # no completions
            {"prompt": "4+4=", "completions": ["4+4=8"], "labels": ["yes"]},                     # not a label
            {"prompt": "5+5=", "completions": [], "labels": []},                                 # no steps
            {"prompt": "6+6=", "completions": ["6+6=12"], "labels": [False]}]
    path = write_jsonl(tmp_path / "steps.jsonl", rows)
    with pytest.raises(DataError) as error:
        build_step_examples(str(path), tok, max_length=64)
    assert "steps.jsonl, row 2, field 'labels'" in str(error.value) and "fix:" in str(error.value)
    missing = write_jsonl(tmp_path / "missing.jsonl", [rows[0], rows[2]])
    with pytest.raises(DataError, match="missing.jsonl, row 2, field 'completions': missing field"):
        build_step_examples(str(missing), tok, max_length=64)
    examples, report = build_step_examples(str(path), tok, max_length=64, policy="drop")
    assert len(examples) == 2 and report.dropped == {"invalid_field": 2, "missing_field": 1, "no_steps": 1}
    # through the CLI: exit code 2, the located message, and no run directory left behind
    out = tmp_path / "run"
    assert cli.main(["rm", "reward.mode=prm", f"output_dir={out}", f"data.train_path={path}"]) == 2
    assert "steps.jsonl, row 2, field 'labels'" in capsys.readouterr().err and not out.exists()


def test_task_process_rows_follow_the_first_error_convention_and_corrupted_answers_are_wrong():
    task = ArithTask(max_digits=3, ops="+-", steps=True)
    rows = task.process_rows("train", 400, seed=3)
    assert rows == task.process_rows("train", 400, seed=3) and rows != task.process_rows("train", 400, seed=4)
    corrupted = 0
    for row in rows:
        correct = task.solution_text(*_problem(row["prompt"])).split("\n")
        labels, lines = row["labels"], row["completions"]
        assert len(labels) == len(lines) == len(correct)
        k = labels.index(False) if False in labels else len(labels)
        assert labels == [True] * k + [False] * (len(labels) - k)  # after the first error, everything is false
        assert lines[:k] == correct[:k]
        score = task.score(row["prompt"], "\n".join(lines), answer=row["answer"])
        if k < len(labels):
            corrupted += 1
            assert lines[k] != correct[k] and score == 0.0, row
        else:
            assert lines == correct and score == 1.0
    assert 0.4 < corrupted / len(rows) < 0.6
    with pytest.raises(ConfigError, match="task.steps=true"):
        ArithTask().process_rows("train", 4)


def _problem(prompt):
    op = "+" if "+" in prompt else "-"
    a, b = prompt.rstrip("=").split(op)
    return int(a), op, int(b)


# ---- the loop, through the CLI ---------------------------------------------------------------------------------------

def test_prm_learns_beyond_the_majority_baseline_and_final_scores_reproduce_the_metrics(tmp_path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer
    from posttrain.rewards import step_scores

    train = write_jsonl(tmp_path / "train.jsonl", solutions(256, seed=0))
    held_rows = solutions(64, seed=1)
    held = write_jsonl(tmp_path / "eval.jsonl", held_rows)
    out = tmp_path / "prm"
    run_cli("rm", f"output_dir={out}", f"data.train_path={train}", f"data.eval_path={held}", *ARGS,
            "train.max_steps=40", check=True)
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    labels = [y for row in held_rows for y in row["labels"]]
    majority = max(sum(labels), len(labels) - sum(labels)) / len(labels)  # always answer the commoner label
    assert last["eval/step_accuracy"] > majority + 0.1, (last, majority)

    model = AutoModelForTokenClassification.from_pretrained(out / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    right, found, loss = 0, 0, 0.0
    for row in held_rows:
        p = step_scores(model, tokenizer, row["prompt"], row["completions"])
        right += sum((q > 0.5) == y for q, y in zip(p, row["labels"]))
        loss -= sum(math.log(q) if y else math.log(1 - q) for q, y in zip(p, row["labels"]))
        predicted = next((k for k, q in enumerate(p) if q <= 0.5), len(p))
        found += predicted == (row["labels"].index(False) if False in row["labels"] else len(p))
    assert right / len(labels) == pytest.approx(last["eval/step_accuracy"], abs=1e-9)
    assert found / len(held_rows) == pytest.approx(last["eval/first_error_accuracy"], abs=1e-9)
    assert loss / len(labels) == pytest.approx(last["eval/loss"], abs=1e-4)


def test_micro_batch_times_accumulation_is_invariant_and_resume_reproduces_the_run(tmp_path):
    # solutions of 2 to 5 steps: a per-micro-batch mean would weigh them differently from the step mean
    train = write_jsonl(tmp_path / "train.jsonl", solutions(64, seed=2))
    base = [a for a in ARGS if not a.startswith(("train.micro_batch_size", "train.grad_accum"))]
    args = [f"data.train_path={train}", *base, "train.max_steps=6", "checkpoint.every=3", "checkpoint.keep_last=3"]
    straight, split, resumed = tmp_path / "straight", tmp_path / "split", tmp_path / "resumed"
    run_cli("rm", f"output_dir={straight}", *args, "train.micro_batch_size=8", "train.grad_accum=1", check=True)
    run_cli("rm", f"output_dir={split}", *args, "train.micro_batch_size=2", "train.grad_accum=4", check=True)
    expected, got = losses(straight), losses(split)
    assert sorted(got) == list(range(1, 7)) and all(abs(got[s] - expected[s]) < 1e-5 for s in expected)

    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step_000006")
    (resumed / "checkpoints" / "latest").write_text("step_000003\n")
    run_cli("rm", f"output_dir={resumed}", *args, "train.micro_batch_size=8", "train.grad_accum=1",
            "checkpoint.resume=true", check=True)
    got = losses(resumed)
    assert sorted(got) == list(range(1, 7)) and all(abs(got[s] - expected[s]) <= 1e-6 for s in expected)
    a, b = (load_file(str(d / "final" / "model.safetensors")) for d in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_first_errors_worked_example_and_the_token_head_with_lora():
    from posttrain.config import LoraConfig, ModelConfig
    from posttrain.models.loading import load_model
    from posttrain.train.process_reward import first_errors

    bad, solution = torch.tensor([False, True, True, False, False]), torch.tensor([0, 0, 0, 1, 1])
    assert first_errors(bad, solution, 2) == [1, 2]
    model = load_model(ModelConfig(), LoraConfig(r=4), head="token")  # PEFT would put LoRA on the head itself
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("score" in name and "lora" not in name for name in trainable)
    assert not any("score" in name and "lora" in name for name in trainable)
    assert model(input_ids=torch.tensor([[1, 8, 102]])).logits.shape == (1, 3, 1)
