"""`posttrain rft` (posttrain/train/rft.py): the keep rule and the per-round step count by hand, then through the CLI
on a tiny model SFT'd for a few seconds: every kept row verifies, round r + 1 starts from round r's model (or from
the base with rft.restart_from_base, on the union of kept rows), a run resumed after round 1 ends exactly like the
uninterrupted one, LoRA rounds are merged, and bad input exits 2."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import write_jsonl
from posttrain import cli
from posttrain.config import RFTConfig, TrainConfig
from posttrain.tasks.arith import ArithTask
from posttrain.train.rft import keep_correct, round_sft_config


# ---- the algorithm by hand -------------------------------------------------------------------------------------------

def test_keep_correct_worked_example():
    """The module docstring: "a" ✓, "a" ✓, "b" ✗, "c" ✓ with keep_per_prompt 2 → "a", "c"; an unfinished
    sample is dropped even when its answer is right."""
    def sample(text, score, finished=True):
        return {"prompt": "1+1=", "answer": "2", "completion": text, "score": score, "finished": finished,
                "kept": False}

    group = [sample("a", 1.0), sample(" a\n", 1.0), sample("b", 0.0), sample("c", 1.0), sample("d", 1.0)]
    again = [sample("e", 1.0)]  # the same prompt again: its quota is already full
    wrong = [{**sample("x", 0.0), "prompt": "2+2="}, {**sample("y", None), "prompt": "2+2="},
             {**sample("z", 1.0, finished=False), "prompt": "2+2="}]
    kept = keep_correct([group, again, wrong], keep_per_prompt=2)
    assert [k["completion"] for k in kept] == ["a", "c"]
    assert kept[0] == {"prompt": "1+1=", "completion": "a", "answer": "2"}
    assert [s["kept"] for s in group] == [True, False, False, True, False]
    assert not any(s["kept"] for s in again + wrong)


def test_round_sft_takes_epochs_rounded_up():
    cfg = RFTConfig(train=TrainConfig(micro_batch_size=8, epochs=1.0))
    assert round_sft_config(cfg, Path("/r/round_1"), Path("/m"), num_rows=20).train.max_steps == 3
    assert round_sft_config(cfg, Path("/r/round_1"), Path("/m"), num_rows=5).train.max_steps == 1
    fixed = RFTConfig(train=TrainConfig(max_steps=7))
    sft_cfg = round_sft_config(fixed, Path("/r/round_1"), Path("/m"), num_rows=5)
    assert sft_cfg.train.max_steps == 7 and sft_cfg.data.train_path == "/r/round_1/train.jsonl"
    assert sft_cfg.model.name_or_path == "/m" and sft_cfg.output_dir == "/r/round_1/sft"


# ---- through the CLI -------------------------------------------------------------------------------------------------

ARGS = ["task.max_digits=1", "task.num_train=16", "task.num_eval=20", "eval.num_samples=8", "eval.max_new_tokens=24",
        "sampling.n=4", "sampling.max_new_tokens=24", "rft.keep_per_prompt=2",
        "train.micro_batch_size=4", "train.max_steps=2", "train.lr=3e-4", "log.progress=false", "threads=1"]
TASK = ArithTask(max_digits=1, steps=True)


def rft(out: Path, policy: Path, *extra: str) -> int:
    return cli.main(["rft", *ARGS, f"model.name_or_path={policy}", f"output_dir={out}", *extra])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def started_from(round_dir: Path) -> str:
    return yaml.safe_load((round_dir / "sft" / "config.yaml").read_text())["model"]["name_or_path"]


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def comparable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("time", "round_s")}


@pytest.fixture(scope="module")
def two_rounds(small_policy, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rft") / "run"
    assert rft(out, small_policy, "rft.rounds=2") == 0
    return out


def test_rounds_keep_only_verified_samples_and_chain_models(two_rounds, small_policy):
    out = two_rounds
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == [0, 1, 2] and "eval/accuracy" in metrics[0]
    for r in (1, 2):
        samples = read_jsonl(out / f"round_{r}" / "samples.jsonl")
        kept = read_jsonl(out / f"round_{r}" / "kept.jsonl")
        assert len(samples) == 16 * 4
        assert kept == [{k: s[k] for k in ("prompt", "completion", "answer")} for s in samples if s["kept"]]
        for row in kept:  # every kept row verifies
            assert TASK.score(row["prompt"], row["completion"], answer=row["answer"]) == 1.0
        per_prompt = {}
        for row in kept:
            per_prompt.setdefault(row["prompt"], []).append(row["completion"].strip())
        assert all(len(v) == len(set(v)) <= 2 for v in per_prompt.values())
        m = metrics[r]
        assert m["rft/kept"] == len(kept) == m["rft/train_rows"] and m["rft/generated_tokens"] > 0
        correct = [any(s["score"] == 1.0 for s in samples[4 * i:4 * i + 4]) for i in range(16)]
        assert m["rft/yield"] == sum(correct) / 16
        assert m["rft/sample_accuracy"] == sum(s["score"] == 1.0 for s in samples) / len(samples)
    assert metrics[1]["rft/kept"] > 0, "the policy should solve some 1-digit sums"
    assert started_from(out / "round_1") == str(small_policy)
    assert started_from(out / "round_2") == str(out / "round_1" / "sft" / "final")  # round 2 continues round 1
    assert same_weights(out / "final", out / "round_2" / "sft" / "final")
    assert metrics[2]["rft/generated_tokens_total"] == metrics[1]["rft/generated_tokens"] + \
        metrics[2]["rft/generated_tokens"]


def test_resume_after_round_1_equals_the_uninterrupted_run(two_rounds, small_policy, tmp_path):
    out = tmp_path / "run"
    assert rft(out, small_policy, "rft.rounds=1") == 0
    assert rft(out, small_policy, "rft.rounds=2", "checkpoint.resume=true") == 0
    resumed, whole = read_jsonl(out / "metrics.jsonl"), read_jsonl(two_rounds / "metrics.jsonl")
    assert [comparable(m) for m in resumed] == [comparable(m) for m in whole]
    assert (out / "round_2" / "kept.jsonl").read_text() == (two_rounds / "round_2" / "kept.jsonl").read_text()
    assert same_weights(out / "final", two_rounds / "final")


def test_restart_from_base_trains_the_base_on_all_kept_rows(small_policy, tmp_path):
    out = tmp_path / "run"
    assert rft(out, small_policy, "rft.rounds=2", "rft.restart_from_base=true") == 0
    assert started_from(out / "round_1") == started_from(out / "round_2") == str(small_policy)
    union = []
    for r in (1, 2):
        for row in read_jsonl(out / f"round_{r}" / "kept.jsonl"):
            if all((row["prompt"], row["completion"].strip()) != (u["prompt"], u["completion"].strip())
                   for u in union):
                union.append(row)
    assert read_jsonl(out / "round_2" / "train.jsonl") == union
    assert read_jsonl(out / "metrics.jsonl")[2]["rft/train_rows"] == len(union)


def test_lora_rounds_are_merged_into_full_models(small_policy, tmp_path):
    out = tmp_path / "run"
    assert rft(out, small_policy, "rft.rounds=1", "lora.r=4", "train.lr=1e-2") == 0
    assert (out / "round_1" / "sft" / "final" / "adapter_config.json").is_file()
    assert (out / "final" / "config.json").is_file() and not (out / "final" / "adapter_config.json").exists()
    assert same_weights(out / "final", out / "round_1" / "model")
    assert not same_weights(out / "final", small_policy)


def test_max_seconds_stops_before_a_round_that_would_pass_it(small_policy, tmp_path, capsys):
    out = tmp_path / "run"  # any budget shorter than a round: round 1 always runs, round 2 would pass the budget
    assert rft(out, small_policy, "rft.rounds=3", "rft.max_seconds=0.001") == 0
    assert [m["step"] for m in read_jsonl(out / "metrics.jsonl")] == [0, 1]
    assert "stopping before round 2" in capsys.readouterr().out
    assert not (out / "round_2").exists()
    assert same_weights(out / "final", out / "round_1" / "sft" / "final")


@pytest.mark.parametrize("extra, fragment", [
    (["sampling.n=0"], "sampling.n"),
    (["rft.max_seconds=-1"], "rft.max_seconds"),
    (["rft.rounds=0"], "rft.rounds"),
    (["rft.keep_per_prompt=0"], "rft.keep_per_prompt"),
    pytest.param(["rollout.engine=vllm"], "rollout.engine=hf", marks=pytest.mark.skipif(
        importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")),
])
def test_bad_config_exits_2(extra, fragment, tmp_path, capsys):
    code = cli.main(["rft", *ARGS, f"output_dir={tmp_path / 'run'}", *extra])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_user_prompts_without_answer_exit_2(tmp_path, capsys):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "1+2=", "answer": "3"}, {"prompt": "2+2="}])
    code = cli.main(["rft", *ARGS, f"data.train_path={path}", f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2 and "row 2" in err and "'answer'" in err and "data.columns" in err
    assert not (tmp_path / "run").exists()
