"""`posttrain dpo` through the real CLI: the first step's numbers, resume, bad rows, reference handling."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import losses, run_cli, write_jsonl
from posttrain import cli, config as C
from posttrain.train import preference

ARGS = ["train.micro_batch_size=4", "train.grad_accum=2", "train.lr=1e-3", "log.every=1", "log.progress=false",
        "eval.num_samples=8", "task.num_train=96", "task.num_eval=16", "task.max_digits=2", "threads=1"]


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_first_step_is_ln2_with_zero_rewards_then_the_margin_grows(tmp_path):
    # At step 1 the policy IS the reference: every implicit reward is 0 and the DPO loss is ln 2 exactly.
    run_cli("dpo", f"output_dir={tmp_path}", *ARGS, "train.max_steps=30", check=True)
    first, last = records(tmp_path)[0], records(tmp_path)[-1]
    assert first["step"] == 1 and first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-6)
    assert first["rewards/margins"] == pytest.approx(0, abs=1e-6)
    # 30 small steps from the untrained tiny model: held-out pairs already lean the right way
    assert last["eval/rewards/margins"] > 0.02 and last["eval/rewards/accuracies"] > 0.55
    assert last["eval/loss"] < math.log(2) - 0.01
    # the cache holds log π_ref of every response (train and eval) under the initial model
    ref = load_file(str(tmp_path / preference.REFERENCE_FILE))
    assert ref["train/chosen"].shape == (96,) and ref["eval/rejected"].shape == (16,)
    assert (ref["train/chosen"] < 0).all()


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = [*ARGS, "train.max_steps=12", "checkpoint.every=4", "checkpoint.keep_last=5"]
    run_cli("dpo", f"output_dir={straight}", *args, check=True)
    # Rewind a copy to its step-4 checkpoint, as if it had been killed there, then resume it.
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "final")
    for step in (8, 12):
        shutil.rmtree(resumed / "checkpoints" / f"step_{step:06d}")
    (resumed / "checkpoints" / "latest").write_text("step_000004\n")
    run_cli("dpo", f"output_dir={resumed}", *args, "checkpoint.resume=true", check=True)
    expected, got = losses(straight), losses(resumed)
    assert sorted(got) == list(range(1, 13))
    for step in expected:
        assert abs(got[step] - expected[step]) <= 1e-6, (step, got[step], expected[step])
    a, b = (load_file(str(d / "final" / "model.safetensors")) for d in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_micro_batch_times_accumulation_is_invariant(tmp_path):
    base = [a for a in ARGS if not a.startswith(("train.micro_batch_size", "train.grad_accum"))]
    run_cli("dpo", f"output_dir={tmp_path / 'a'}", *base, "train.max_steps=4", "train.micro_batch_size=8",
            "train.grad_accum=1", check=True)
    run_cli("dpo", f"output_dir={tmp_path / 'b'}", *base, "train.max_steps=4", "train.micro_batch_size=2",
            "train.grad_accum=4", check=True)
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert all(abs(a[s] - b[s]) < 1e-5 for s in a)


def test_bad_preference_rows_error_or_are_dropped_with_counts(tmp_path, capsys):
    rows = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"},
            {"prompt": "2+2=", "chosen": "4"},                                # missing rejected
            {"prompt": "3+3=", "chosen": "6", "rejected": "6"},               # identical
            {"prompt": "4+4=", "chosen": " ", "rejected": "9"},               # empty completion
            {"prompt": "5+5=", "chosen": "10", "rejected": "11"}]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    out = tmp_path / "run"
    assert cli.main(["dpo", f"output_dir={out}", f"data.train_path={path}", "train.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert "pairs.jsonl, row 2" in err and "rejected" in err and not out.exists()
    proc = run_cli("dpo", f"output_dir={out}", f"data.train_path={path}", "data.truncation=drop",
                   "train.max_steps=2", "train.micro_batch_size=2", "log.progress=false", check=True)
    assert "2 training pairs (dropped 3 of 5 rows" in proc.stdout
    assert all(f"{reason}: 1" in proc.stdout for reason in ("missing_field", "identical_responses", "invalid_field"))


def test_reference_free_and_tr_dpo_losses_run_and_unknown_loss_exits_2(tmp_path, capsys):
    for loss in ("simpo", "orpo"):
        run_cli("dpo", f"output_dir={tmp_path / loss}", *ARGS, "train.max_steps=2", f"preference.loss={loss}",
                check=True)
        assert not (tmp_path / loss / preference.REFERENCE_FILE).exists()  # no reference pass at all
    run_cli("dpo", f"output_dir={tmp_path / 'tr'}", *ARGS, "train.max_steps=4", "preference.loss=tr_dpo",
            "preference.ref_sync_steps=2", "preference.ref_mixup_alpha=1.0", check=True)
    assert cli.main(["dpo", f"output_dir={tmp_path / 'x'}", "preference.loss=dpp"]) == 2
    assert "dpo" in capsys.readouterr().err


def test_tr_dpo_reference_update_is_a_convex_mix():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = [0.25 * pa.detach() + 0.75 * pb.detach() for pa, pb in zip(a.parameters(), b.parameters())]
    preference.update_reference(b, a, alpha=0.25)
    assert all(torch.allclose(p, e) for p, e in zip(b.parameters(), expected))
    assert C.DPOConfig().preference.loss == "dpo"
