"""`posttrain distill` end to end on small tiny models: a teacher equal to the student gives KD loss 0, distilling
toward a larger teacher (with a differently padded vocabulary) lowers the KD loss, on-policy steps sample from the
student and resume exactly, a teacher with another tokenizer is refused, and CoT distillation keeps only the
teacher's verified solutions and fine-tunes the student on them."""

import json
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file

from posttrain import cli, tasks
from posttrain.models.tiny import save_tiny

SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
ARGS = ["task.max_digits=2", "task.steps=true", "task.num_train=64", "task.num_eval=8", "eval.num_samples=4",
        "eval.max_new_tokens=8", "train.micro_batch_size=8", "train.lr=1e-2", "log.progress=false", "threads=1"]
TIMING = ("time", "tokens_per_s")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    # the teacher: twice as wide, twice as deep, and its output layer padded to 448 rows where the student has 384
    return {"student": save_tiny(root / "student", seed=1, **SMALL),
            "teacher": save_tiny(root / "teacher", seed=2, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=2, vocab_size=448)}


def distill(out, student, teacher, *args):
    return cli.main(["distill", f"output_dir={out}", f"model.name_or_path={student}", f"distill.teacher={teacher}",
                     *ARGS, *args])


def records(run_dir) -> dict[int, dict]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "step" in record:
            out.setdefault(record["step"], {}).update(record)
    return out


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
def test_a_teacher_equal_to_the_student_gives_zero_kd_loss(tmp_path, models, loss):
    out = tmp_path / "run"
    assert distill(out, models["student"], models["student"], f"distill.loss={loss}", "distill.temperature=2",
                   "train.max_steps=1", "eval.at_start=true") == 0
    logged = records(out)
    assert abs(logged[0]["eval/distill_loss"]) < 1e-6
    assert abs(logged[1]["distill_loss"]) < 1e-6
    assert logged[1]["ce_loss"] > 1.0  # an untrained student: the CE half of the loss is far from 0
    assert logged[1]["loss"] == pytest.approx(0.5 * logged[1]["ce_loss"], abs=1e-6)  # α = 0.5


def test_distilling_toward_a_larger_teacher_lowers_the_kd_loss(tmp_path, models):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    assert distill(out, models["student"], models["teacher"], "distill.alpha=1", "distill.loss=jsd",
                   "train.max_steps=25", "eval.at_start=true", "log.every=1") == 0
    logged = records(out)
    first = sum(logged[s]["distill_loss"] for s in (1, 2, 3)) / 3
    last = sum(logged[s]["distill_loss"] for s in (23, 24, 25)) / 3
    assert last < 0.5 * first, (first, last)
    assert logged[25]["eval/distill_loss"] < 0.5 * logged[0]["eval/distill_loss"]
    assert "ce_loss" in logged[25] and logged[25]["on_policy"] == 0.0
    student = AutoModelForCausalLM.from_pretrained(out / "final")  # plain transformers, no posttrain
    assert student.config.hidden_size == 32 and student.get_output_embeddings().weight.shape[0] == 384


def on_policy_steps(seed, steps, lam):
    return [random.Random(f"distill-on-policy:{seed}:{step}").random() < lam for step in range(steps)]


def test_on_policy_steps_sample_from_the_student_and_resume_exactly(tmp_path, models):
    assert on_policy_steps(2, 4, 0.5) == [False, True, False, True]  # both kinds before and after the rewind
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ["seed=2", "distill.mode=on_policy", "distill.lam=0.5", "distill.max_new_tokens=12",
            "distill.loss=reverse_kl", "train.max_steps=4", "checkpoint.every=2", "checkpoint.keep_last=3",
            "log.every=1"]
    assert distill(straight, models["student"], models["teacher"], *args) == 0
    expected = records(straight)
    assert [expected[s]["on_policy"] for s in (1, 2, 3, 4)] == [0.0, 1.0, 0.0, 1.0]
    assert 1 <= expected[2]["response_len/mean"] <= 12 and "ce_loss" not in expected[2]
    assert expected[1]["loss"] == pytest.approx(expected[1]["distill_loss"])  # GKD: the divergence alone

    shutil.copytree(straight, resumed)  # as if killed right after the step-2 checkpoint
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step_000004")
    (resumed / "checkpoints" / "latest").write_text("step_000002\n")
    assert distill(resumed, models["student"], models["teacher"], *args, "checkpoint.resume=true") == 0
    got = records(resumed)
    assert sorted(got) == [1, 2, 3, 4]
    for step in (3, 4):
        assert got[step].keys() == expected[step].keys()
        assert all(got[step][k] == expected[step][k] for k in expected[step] if k not in TIMING), step
    a, b = (load_file(str(d / "final" / "model.safetensors")) for d in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_teacher_with_another_tokenizer_is_refused(tmp_path, models, capsys):
    from transformers import AutoTokenizer

    other = tmp_path / "other"
    shutil.copytree(models["teacher"], other)
    tokenizer = AutoTokenizer.from_pretrained(other)
    tokenizer.add_tokens(["<think>"])
    tokenizer.save_pretrained(other)
    out = tmp_path / "run"
    assert distill(out, models["student"], other, "train.max_steps=1") == 2
    err = capsys.readouterr().err
    assert "different tokenizer" in err and "'<think>'" in err and "distill.mode=cot" in err, err
    assert not out.exists()
    assert distill(out, models["student"], "", "train.max_steps=1") == 2
    assert "distill.teacher is required" in capsys.readouterr().err
    assert distill(out, models["student"], other, "distill.loss=jsd", "distill.beta=1") == 2
    assert "distill.beta" in capsys.readouterr().err


COT = ["task.max_digits=1", "task.steps=false", "task.num_train=200", "eval.max_new_tokens=4"]


@pytest.fixture(scope="module")
def one_digit_teacher(tmp_path_factory, models):
    """A teacher that knows 1-digit addition (mostly): the larger model fine-tuned on it for a few seconds."""
    out = tmp_path_factory.mktemp("teacher") / "sft"
    assert cli.main(["sft", f"output_dir={out}", f"model.name_or_path={models['teacher']}", *ARGS, *COT,
                     "train.max_steps=60", "train.lr=1e-2", "train.micro_batch_size=16"]) == 0
    return out


def test_cot_keeps_the_teachers_verified_solutions_and_fine_tunes_the_student(tmp_path, models, one_digit_teacher):
    out = tmp_path / "run"
    assert distill(out, models["student"], one_digit_teacher, "distill.mode=cot", "distill.filter=verified",
                   "distill.samples_per_prompt=2", "distill.max_new_tokens=4", "train.max_steps=5", *COT) == 0
    summary = json.loads((out / "rationales_summary.json").read_text())
    assert summary["sampled"] == 400 and 0 < summary["kept"] == summary["verified"] < 400
    task = tasks.get("arith", max_digits=1, ops="+")
    kept = [json.loads(line) for line in (out / "rationales.jsonl").read_text().splitlines()]
    assert len(kept) == summary["kept"] and all(task.score(r["prompt"], r["completion"]) == 1.0 for r in kept)
    student = records(out / "student")
    assert sorted(student)[-1] == 5 and "eval/accuracy" in student[5]  # task accuracy, though trained on a file
    assert (out / "student" / "final" / "model.safetensors").is_file()

    everything = tmp_path / "all"
    assert distill(everything, models["student"], one_digit_teacher, "distill.mode=cot", "distill.filter=none",
                   "distill.samples_per_prompt=2", "distill.max_new_tokens=4", "train.max_steps=1", *COT) == 0
    summary = json.loads((everything / "rationales_summary.json").read_text())
    assert summary["kept"] == summary["sampled"] - summary["truncated"] > summary["verified"]


def test_cot_follows_the_run_directory_rules(tmp_path, models, one_digit_teacher, capsys):
    """A cot run directory is a run directory: overwrite=true never deletes a folder that is not a run (it used to
    rmtree it), and it replaces a cot run, rationales and student included."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    args = ("distill.mode=cot", "distill.filter=none", "distill.samples_per_prompt=1", "distill.max_new_tokens=4",
            "train.max_steps=1", *COT)
    assert distill(mine, models["student"], one_digit_teacher, "overwrite=true", *args) == 2
    assert "is not a posttrain run" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"

    out = tmp_path / "run"
    assert distill(out, models["student"], one_digit_teacher, *args) == 0
    first = (out / "rationales.jsonl").stat().st_mtime_ns
    assert distill(out, models["student"], one_digit_teacher, *args) == 2  # occupied: needs overwrite or resume
    assert distill(out, models["student"], one_digit_teacher, "overwrite=true", *args) == 0
    assert (out / "rationales.jsonl").stat().st_mtime_ns != first and (out / ".posttrain-run").is_file()
    assert sorted(records(out / "student"))[-1] == 1
