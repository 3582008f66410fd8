"""`posttrain demo --quick` through the real CLI: the model must measurably learn and the table must print."""

import json
import re

import pytest

from conftest import needs_smollm2, run_cli, smollm2_home
from posttrain import demo, tasks
from posttrain.demo import pretrained
from posttrain.eval.metrics import paired_sign_test


def test_quick_demo_learns(tmp_path):
    proc = run_cli("demo", "--quick", f"output_dir={tmp_path}", timeout=300, check=True)
    table = dict(re.findall(r"^(before \(random init\)|after SFT|after (?:DPO|GRPO|PPO) \(\w+\))\s+([0-9.]+)",
                            proc.stdout, re.M))
    assert set(table) == {"before (random init)", "after SFT", f"after DPO ({demo.DEMO_LOSS})",
                          "after GRPO (verifier)", "after PPO (critic)"}, proc.stdout
    before, after = float(table["before (random init)"]), float(table["after SFT"])
    assert before <= 0.05 and after >= before + 0.15, proc.stdout
    assert (tmp_path / "plots" / "sft" / "loss.png").is_file()
    assert (tmp_path / "plots" / "sft" / "eval_accuracy.png").is_file()
    assert (tmp_path / "sft" / "final" / "model.safetensors").is_file()
    # the preference stages: pairs the verifier split, a reward model, and one table row per variant
    summary = json.loads((tmp_path / "summary.json").read_text())
    pairs = [json.loads(line) for line in (tmp_path / "pairs" / "train.jsonl").read_text().splitlines()]
    assert len(pairs) == summary["pairs"]["train"]["pairs"] > 0
    task = tasks.get("arith", max_digits=2, steps=True)
    for pair in pairs[:20]:  # chosen: the verifier's right answer; rejected: a wrong one, for the same problem
        a, b = map(int, pair["prompt"].rstrip("=").split("+"))
        assert task.score(pair["prompt"], pair["chosen"], answer=str(a + b)) == 1.0
        assert task.score(pair["prompt"], pair["rejected"], answer=str(a + b)) == 0.0
    assert 0.0 <= summary["reward_model"]["eval_pair_accuracy"] <= 1.0
    assert "reward model: held-out pair accuracy" in proc.stdout
    assert [row["loss"] for row in summary["variants"]] == [demo.DEMO_LOSS]
    sft_accuracy = next(s["greedy_accuracy"] for s in summary["stages"] if s["stage"] == "after SFT")
    assert all(row["before"] == sft_accuracy for row in summary["variants"])  # each starts from the SFT model
    # the RL stages start from the SFT model too, log their curves, and face more SFT on noisy demonstrations
    for algo in ("grpo", "ppo"):
        records = [json.loads(line) for line in (tmp_path / algo / "metrics.jsonl").read_text().splitlines()]
        assert records[0]["step"] == 0 and records[0]["eval/accuracy"] == sft_accuracy
        assert (tmp_path / "plots" / algo / "reward_mean.png").is_file()
    assert "explained_variance" in records[-1]  # PPO's critic
    demos = [json.loads(line) for line in (tmp_path / "demonstrations" / "noisy.jsonl").read_text().splitlines()]
    wrong = [d for d in demos if task.score(d["messages"][0]["content"], d["messages"][1]["content"],
                                            answer=d["answer"]) == 0.0]
    assert len(demos) == summary["demonstrations"]["demonstrations"] and len(wrong) == len(demos) // 4
    arms = summary["scarce_demonstrations"]
    assert [a["method"].split()[0] for a in arms] == ["more", "GRPO:", "more"], arms
    assert all(0.0 <= a["accuracy"] <= 1.0 and a["seconds"] > 0 for a in arms)


@needs_smollm2
def test_quick_real_model_demo_runs_every_stage_and_its_table_adds_up(tmp_path, monkeypatch):
    """`posttrain demo model=smollm2-135m-instruct quick=true`: zero-shot → GRPO (LoRA) → RFT, each evaluated on
    the same held-out problems; every number of the table is recomputed from the evaluations' completions."""
    monkeypatch.setenv("POSTTRAIN_HOME", str(smollm2_home()))
    proc = run_cli("demo", "model=smollm2-135m-instruct", "quick=true", f"output_dir={tmp_path}", timeout=600,
                   check=True)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["zero-shot", "GRPO", "RFT"]

    def scores(name: str) -> list[float]:
        lines = (tmp_path / "eval" / name / "completions.jsonl").read_text().splitlines()
        return [json.loads(line)["score"] for line in lines]

    zero = scores("zero_shot")
    assert len(zero) == summary["held_out"] == 16
    for stage, name in zip(summary["stages"], ("zero_shot", "grpo", "rft")):
        assert stage["accuracy"] == sum(scores(name)) / len(zero)
        if stage["stage"] != "zero-shot":
            assert stage["p_value"] == paired_sign_test(zero, scores(name))
            assert stage["won"] == sum(b > a for a, b in zip(zero, scores(name)))
            assert f"{stage['stage']} (" in proc.stdout
    assert (tmp_path / "grpo" / "final" / "adapter_config.json").is_file()  # GRPO trained a LoRA adapter
    assert (tmp_path / "rft" / "final" / "config.json").is_file()  # RFT merges its rounds into full models
    records = [json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    logged = {k for r in records for k in r} & set(pretrained.RL_CURVES)  # entropy only when a sample was updated
    assert {"reward/mean", "response_len/mean", "eval/accuracy", "kl"} <= logged  # kl: the monitor, no KL term
    assert all(r["kl_coef"] == 0.0 for r in records if "kl_coef" in r)
    for name in logged:
        assert (tmp_path / "plots" / "grpo" / f"{name.replace('/', '_')}.png").is_file(), name


@pytest.mark.parametrize("args", [["env=calculator"], ["model=smollm2-135m-instruct", "env=browser"]])
def test_the_tool_use_demo_needs_a_model_and_a_known_environment(tmp_path, args):
    proc = run_cli("demo", *args, f"output_dir={tmp_path / 'demo'}")
    assert proc.returncode == 2 and "fix: posttrain demo model=smollm2-135m-instruct env=calculator" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "demo").exists()


def test_the_tool_use_demo_runs_every_stage(tmp_path):
    """`posttrain demo model=DIR env=calculator --quick` on a tiny chat model (2,048 positions: room for the tool
    descriptions): zero-shot, SFT on demonstrations and the two GRPO arms each run and are evaluated by greedy
    episodes on the same held-out problems; summary.json holds the stages with their sign tests, and the GRPO
    arms differ only in the credit rule (their config.yaml: the same env.progress_reward)."""
    import yaml

    from posttrain.models.tiny import save_tiny
    model_dir = save_tiny(tmp_path / "tiny2k", max_position_embeddings=2048)
    out = tmp_path / "demo"
    proc = run_cli("demo", f"model={model_dir}", "env=calculator", "--quick", f"output_dir={out}", timeout=600,
                   check=True)
    summary = json.loads((out / "summary.json").read_text())
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["zero-shot", "SFT", "GRPO (grpo)", "GRPO (turn_grpo)"] and summary["held_out"] == 8
    for name, stage in stages.items():
        assert 0 <= stage["accuracy"] <= 1 and 0 <= stage["tool_call_rate"] <= 1 and stage["turns"] >= 1
        assert name == "zero-shot" or ("vs_zero_shot" in stage and stage["training_seconds"] > 0)
        assert name in proc.stdout
    for name in ["zero-shot", "sft", "grpo", "turn_grpo"]:
        assert len((out / "eval" / name / "completions.jsonl").read_text().splitlines()) == 8
    configs = {a: yaml.safe_load((out / a / "config.yaml").read_text()) for a in ["grpo", "turn_grpo"]}
    assert [c["algo"]["advantage"] for c in configs.values()] == ["grpo", "turn_grpo"]
    assert [c["env"]["progress_reward"] for c in configs.values()] == [summary["progress_reward"]] * 2 == [0.25] * 2
    def scores(name):
        return [json.loads(line)["score"] for line in (out / "eval" / name / "completions.jsonl").open()]

    for arm in ["grpo", "turn_grpo"]:  # the sign test against SFT is the one of the two arms' own verdicts
        assert stages[f"GRPO ({arm})"]["vs_sft"]["p_value"] == pytest.approx(paired_sign_test(scores("sft"),
                                                                                             scores(arm)))
