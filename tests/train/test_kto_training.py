"""`posttrain dpo preference.loss=kto`: unpaired data, the step-global reference point z0, exact accumulation."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import losses, run_cli, write_jsonl
from posttrain import cli, config as C
from posttrain.algos import preference as algos
from posttrain.data.preference import build_unpaired_examples
from posttrain.models.loading import load_model, load_tokenizer
from posttrain.train import preference
from posttrain.train.common import batch_indices

ARGS = ["preference.loss=kto", "train.lr=1e-3", "log.every=1", "log.progress=false", "eval.num_samples=8",
        "task.num_train=96", "task.num_eval=16", "task.max_digits=2", "threads=1"]


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_unpaired_rows_and_pairs_become_labelled_items_with_a_mismatched_partner():
    tokenizer = load_tokenizer("tiny")
    rows = [{"prompt": "1+1=", "completion": "2", "label": True},
            {"prompt": "2+2=", "chosen": "4", "rejected": "5"},  # a pair: one desirable, one undesirable item
            {"prompt": "3+3=", "completion": "7", "label": "false"}]
    items, report = build_unpaired_examples(rows, tokenizer, max_length=64)
    assert [item["desirable"] for item in items] == [True, True, False, False] and not report.dropped
    decode = tokenizer.decode
    # item 1's next item (2) has the same prompt "2+2=", so its partner is item 3: prompt 2+2= with completion 7
    mismatched = decode(items[1]["mismatched"]["input_ids"])
    assert "2+2=" in mismatched and "7" in mismatched and "4" not in mismatched.split("2+2=")[1]
    assert "1+1=" in decode(items[0]["mismatched"]["input_ids"])
    assert decode(items[3]["mismatched"]["input_ids"]).count("1+1=") == 0  # wraps around to item 0's "2"
    # the mismatched example's labels mark the partner's completion, like any response
    labelled = [t for t, label in zip(items[1]["mismatched"]["input_ids"], items[1]["mismatched"]["labels"])
                if label != -100]
    assert "7" in decode(labelled)


def test_bad_unpaired_rows_error_with_row_and_field_or_are_dropped(tmp_path, capsys):
    rows = [{"prompt": "1+1=", "completion": "2", "label": True},
            {"prompt": "2+2=", "completion": "4", "label": "maybe"},   # not a boolean
            {"prompt": "3+3=", "completion": " ", "label": True},       # empty completion
            {"prompt": "4+4=", "completion": "8", "label": False}]
    path = write_jsonl(tmp_path / "kto.jsonl", rows)
    out = tmp_path / "run"
    assert cli.main(["dpo", "preference.loss=kto", f"output_dir={out}", f"data.train_path={path}",
                     "train.max_steps=1"]) == 2
    err = capsys.readouterr().err
    assert "kto.jsonl, row 2" in err and "label" in err and not out.exists()
    proc = run_cli("dpo", "preference.loss=kto", f"output_dir={out}", f"data.train_path={path}",
                   "data.truncation=drop", "train.max_steps=2", "train.micro_batch_size=2", "log.progress=false",
                   check=True)
    assert "2 training examples (dropped 2 of 4 rows" in proc.stdout and "invalid_field: 2" in proc.stdout


def test_first_step_is_half_with_zero_kl_then_desirable_rewards_lead(tmp_path):
    # Step 1: π = π_ref, so every r_i = 0 and z0 = 0: each loss is w·(1 − σ(0)) = w/2.
    run_cli("dpo", f"output_dir={tmp_path}", *ARGS, "train.micro_batch_size=4", "train.grad_accum=2",
            "train.max_steps=30", check=True)
    first, last = records(tmp_path)[0], records(tmp_path)[-1]
    assert first["loss"] == pytest.approx(0.5, abs=1e-6) and first["kl"] == pytest.approx(0.0, abs=1e-6)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert last["eval/rewards/margins"] > 0.02 and last["eval/loss"] < 0.5 - 1e-3
    assert any(r["kl"] > 0 for r in records(tmp_path)[1:])  # the policy moves away from the reference
    ref = load_file(str(tmp_path / preference.REFERENCE_FILE))
    assert set(ref) == {"train/completion", "train/mismatched", "eval/completion", "eval/mismatched"}
    assert ref["train/completion"].shape == (192,)  # 96 pairs → 96 desirable + 96 undesirable examples


def test_weights_scale_the_first_step_loss(tmp_path):
    # Step 1 (π = π_ref): each loss is w/2, so with w_d = 3, w_u = 1 the mean over the step's 8 examples is
    # (3·n_d + n_u)/16. The task's pairs become items chosen, rejected, chosen, …: even items are desirable.
    run_cli("dpo", f"output_dir={tmp_path}", *ARGS, "train.micro_batch_size=8", "train.max_steps=1",
            "preference.desirable_weight=3.0", check=True)
    step = batch_indices(0, 8, 192, seed=0)
    n_desirable = sum(i % 2 == 0 for i in step)
    assert 0 < n_desirable < 8  # the check below tells the two weights apart
    assert records(tmp_path)[0]["loss"] == pytest.approx((3 * n_desirable + (8 - n_desirable)) / 16, abs=1e-6)


def test_micro_batch_times_accumulation_is_invariant(tmp_path):
    # z0 is computed over the whole step before any backward, so the split cannot change the step.
    run_cli("dpo", f"output_dir={tmp_path / 'a'}", *ARGS, "train.max_steps=4", "train.micro_batch_size=8",
            "train.grad_accum=1", check=True)
    run_cli("dpo", f"output_dir={tmp_path / 'b'}", *ARGS, "train.max_steps=4", "train.micro_batch_size=2",
            "train.grad_accum=4", check=True)
    a, b = records(tmp_path / "a"), records(tmp_path / "b")
    assert all(abs(x["loss"] - y["loss"]) < 1e-5 and abs(x["kl"] - y["kl"]) < 1e-5 for x, y in zip(a, b))
    assert losses(tmp_path / "a").keys() == losses(tmp_path / "b").keys() == {1, 2, 3, 4}


def test_step_reference_point_equals_the_formula_on_the_whole_batch():
    tokenizer = load_tokenizer("tiny")
    model = load_model(C.ModelConfig(), C.LoraConfig(), seed=0)
    rows = [{"prompt": f"{i}+{i}=", "completion": str(2 * i + (i % 2)), "label": i % 2 == 0} for i in range(6)]
    items, _ = build_unpaired_examples(rows, tokenizer, max_length=64)
    cfg = C.DPOConfig()
    reference = {"mismatched": torch.tensor([-30.0, -1.0, -25.0, -40.0, -2.0, -28.0])}
    z0 = preference.kto_reference_point(model, items, [[0, 1], [2, 3, 4], [5]], reference, tokenizer, cfg)
    with torch.no_grad():
        policy, _ = preference.response_logps(model, [item["mismatched"] for item in items],
                                              tokenizer.pad_token_id, packing=True)
    assert z0.item() == pytest.approx(algos.kto_reference_point(policy, reference["mismatched"]).item(), abs=1e-5)
    assert z0.item() > 0  # the made-up reference is far below the policy on some examples
    low = {"mismatched": torch.zeros(6)}  # log π < 0 = log π_ref everywhere: the mean is negative, z0 clamps to 0
    assert preference.kto_reference_point(model, items, [[0, 1, 2, 3, 4, 5]], low, tokenizer, cfg).item() == 0.0
    assert not math.isnan(z0.item())
