"""`posttrain rm` through the real CLI: it learns a clear preference, saves a plain transformers reward model
whose scores reproduce the logged metrics, and resumes exactly."""

import json
import shutil

import torch
from safetensors.torch import load_file

from conftest import losses, run_cli, write_jsonl

ARGS = ["train.micro_batch_size=4", "train.grad_accum=2", "train.lr=3e-3", "log.every=1", "log.progress=false",
        "threads=1"]


def pairs(n, offset=0):
    # chosen answers politely, rejected rudely: a preference a 1M-parameter scorer learns in a few steps
    return [{"prompt": f"{i}+{i}=", "chosen": f"thanks, it is {2 * i}", "rejected": f"go away {2 * i + 1}",
             "margin": 0.5} for i in range(offset, offset + n)]


def test_rm_learns_saves_a_plain_reward_model_and_its_scores_reproduce_the_metrics(tmp_path):
    from transformers import AutoModelForSequenceClassification
    from posttrain.models.loading import load_tokenizer
    from posttrain.data.preference import build_preference_pairs

    train = write_jsonl(tmp_path / "train.jsonl", pairs(64))
    held = write_jsonl(tmp_path / "eval.jsonl", pairs(16, offset=100))
    out = tmp_path / "rm"
    run_cli("rm", f"output_dir={out}", f"data.train_path={train}", f"data.eval_path={held}", *ARGS,
            "train.max_steps=20", "reward.center_rewards_coefficient=0.01", check=True)
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["eval/accuracy"] == 1.0 and last["eval/margin"] > 1.0
    model = AutoModelForSequenceClassification.from_pretrained(out / "final").eval()
    tokenizer = load_tokenizer(str(out / "final"))
    examples, _ = build_preference_pairs(str(held), tokenizer, max_length=256)
    with torch.no_grad():
        def score(ex):
            return model(torch.tensor([ex["input_ids"]])).logits[0, 0].item()
        chosen = [score(p["chosen"]) for p in examples]
        rejected = [score(p["rejected"]) for p in examples]
    assert abs(sum(chosen) / len(chosen) - last["eval/rewards/chosen"]) < 1e-4
    assert abs(sum(c - r for c, r in zip(chosen, rejected)) / len(chosen) - last["eval/margin"]) < 1e-4


def test_rm_resume_reproduces_the_uninterrupted_run(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", pairs(48))
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = [f"data.train_path={train}", *ARGS, "train.max_steps=8", "checkpoint.every=4", "checkpoint.keep_last=3"]
    run_cli("rm", f"output_dir={straight}", *args, check=True)
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step_000008")
    (resumed / "checkpoints" / "latest").write_text("step_000004\n")
    run_cli("rm", f"output_dir={resumed}", *args, "checkpoint.resume=true", check=True)
    expected, got = losses(straight), losses(resumed)
    assert sorted(got) == list(range(1, 9)) and all(abs(got[s] - expected[s]) <= 1e-6 for s in expected)
    a, b = (load_file(str(d / "final" / "model.safetensors")) for d in (straight, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
