"""`posttrain rl` through the real CLI: every preset runs and logs its metrics, `--print-config` and `explain` show
the expansion and the batch arithmetic and refuse configurations that cannot train, resume continues the exact run,
micro-batching and packing do not change the update, LoRA's reference is the base, user rewards fail loudly or are
counted, dynamic sampling refills the step, and the policy learns a reward it can reach.

Runs are in-process (`cli.main`) on the embedded tiny model with short completions; a user reward that the untrained
model gets partly right (the share of lowercase letters in the completion) keeps every group's rewards varied, so
every step has a learning signal."""

import json
import math
import shutil
import textwrap

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import write_jsonl
from posttrain import cli, config as C, presets
from posttrain.train.plan import needs_reference
from posttrain.models.loading import load_model
from posttrain.train import rl

# One torch thread, a small task, 8-token completions, no greedy evaluation at the end.
FAST = ["threads=1", "log.progress=false", "eval.task_accuracy=false", "task.num_train=64", "task.max_digits=1",
        "sampling.max_new_tokens=8", "rl.prompts_per_step=4", "train.micro_batch_size=4",
        "train.lr=1e-5"]  # the tiny model's rate (the rl default is for pretrained models)

LOWERCASE_SHARE = """
    def reward(prompt, completion, **row):
        return sum(c.islower() for c in completion) / max(1, len(completion))
"""

# What every step of every preset logs (the list); kl only with a KL term, the critic's only for PPO.
REQUIRED = ["reward/mean", "reward/std", "reward/min", "reward/max", "entropy", "clip_frac/low", "clip_frac/high",
            "approx_kl", "ratio/max", "advantages/mean", "response_len/mean", "response_len/max", "truncated_frac",
            "rollout/logprob_diff_max"]
TIMING = ("time", "time/rollout", "time/update", "samples_per_s")


def reward_file(tmp_path, source: str = LOWERCASE_SHARE, name: str = "my_reward.py") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return f"{path}:reward"


def run_rl(run_dir, *args, algo: str = "grpo", reward: str | None = None) -> int:
    rewards = ["reward.verifier=false", f"reward.function={reward}"] if reward else []
    return cli.main(["rl", "--algo", algo, f"output_dir={run_dir}", *FAST, *rewards, *args])


def records(run_dir) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


# ---- every preset ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_every_preset_trains_and_logs_its_metrics(tmp_path, name):
    expanded = presets.expand(C.RLConfig(algo=C.AlgoConfig(name=name)))
    group = [] if expanded.rl.generations == 1 else ["rl.generations=4"]  # ppo and remax sample one per prompt
    run_dir = tmp_path / "run"
    assert run_rl(run_dir, "train.max_steps=2", "train.lr=1e-3", *group, algo=name, reward=reward_file(tmp_path)) == 0
    steps = records(run_dir)
    assert sorted(steps) == [1, 2] and (run_dir / "final" / "model.safetensors").is_file()
    expected = REQUIRED + (["kl"] if needs_reference(expanded) else []) + \
        (["rollout/zero_variance_frac"] if expanded.rl.generations > 1 else []) + \
        (["value_loss", "explained_variance"] if expanded.algo.critic == "value" else [])
    for step, m in steps.items():
        assert not [k for k in expected if k not in m], (step, [k for k in expected if k not in m])
        # π_old is the sampler's log-probs; engine and trainer both run fp32, so they agree to rounding
        assert m["rollout/logprob_diff_max"] < 1e-4
        assert 0 <= m["reward/min"] <= m["reward/mean"] <= m["reward/max"] <= 1
        assert m["response_len/max"] <= 8 and 0 <= m["truncated_frac"] <= 1
    if needs_reference(expanded):  # before the first update the policy is the reference
        assert abs(steps[1]["kl"]) < 1e-6
    else:
        assert "kl" not in steps[1]


@pytest.mark.parametrize("name", ["cispo", "sapo", "gmpo"])
def test_policy_loss_presets_run_off_policy_updates(tmp_path, name):
    # two epochs over each step's samples: the second update is off-policy (ratios ≠ 1), where the losses differ
    run_dir = tmp_path / "run"
    assert run_rl(run_dir, "train.max_steps=3", "rl.generations=2", "rl.update_epochs=2", "train.lr=1e-3", algo=name,
                  reward=reward_file(tmp_path)) == 0
    steps = records(run_dir)
    assert sorted(steps) == [1, 2, 3] and all(math.isfinite(m["loss"]) and m["grad_norm"] > 0 for m in steps.values())
    assert any(m["ratio/max"] > 1 for m in steps.values())


def test_the_built_in_task_with_its_verifier_and_evaluation(tmp_path):
    # the defaults: task prompts, the task's verifier as the reward, greedy accuracy on held-out problems at the end
    run_dir = tmp_path / "run"
    assert cli.main(["rl", "--algo", "grpo", f"output_dir={run_dir}", "train.max_steps=2", "rl.prompts_per_step=4",
                     "rl.generations=4", "train.micro_batch_size=8", "eval.num_samples=8", "task.num_train=64",
                     "task.max_digits=1", "sampling.max_new_tokens=8", "threads=1", "log.progress=false",
                     "train.lr=1e-5"]) == 0
    m = records(run_dir)
    assert all("reward/verifier/mean" in r and 0 <= r["reward/mean"] <= 1 for r in m.values())
    assert "eval/accuracy" in m[2] and "eval/accuracy" not in m[1]


@pytest.mark.parametrize("sampling", ["sampling.temperature=0.7", "sampling.top_k=20", "sampling.top_p=0.9"])
def test_pi_old_is_the_policy_at_the_sampling_temperature(tmp_path, sampling):
    # The policy is softmax(logits / T). At step 1 (one on-policy update) every ratio π/π_old is 1 and the policy is
    # the reference — also when top-k/top-p make the engine sample, and report log-probs of, a truncated
    # distribution: those log-probs are not π_old and must not be reused as if they were.
    assert run_rl(tmp_path / "run", "train.max_steps=1", "rl.generations=4", sampling,
                  reward=reward_file(tmp_path)) == 0
    m = records(tmp_path / "run")[1]
    assert abs(m["ratio/min"] - 1) < 1e-5 and abs(m["ratio/max"] - 1) < 1e-5
    assert m["clip_frac"] == 0 and abs(m["kl"]) < 1e-6 and m["rollout/logprob_diff_max"] < 1e-4


# ---- presets and --print-config ----------------------------------------------------------------------------------

def printed_config(capsys, *args) -> dict:
    assert cli.main(["rl", *args, "--print-config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_print_config_shows_the_expansion_and_explicit_fields_win(capsys):
    grpo = printed_config(capsys, "--algo", "grpo")
    assert (grpo["algo"]["advantage"], grpo["algo"]["policy_loss"], grpo["algo"]["aggregate"]) == \
        ("grpo", "ppo_clip", "seq_mean_token_mean")
    assert (grpo["kl"]["where"], grpo["kl"]["estimator"], grpo["kl"]["coef"]) == ("loss", "k3", 0.04)
    assert grpo["algo"]["critic"] == "none" and grpo["rl"]["generations"] == 8

    overridden = printed_config(capsys, "--algo", "grpo", "algo.aggregate=token_mean", "kl.coef=0.1")
    assert overridden["algo"]["aggregate"] == "token_mean" and overridden["kl"]["coef"] == 0.1
    assert overridden["algo"]["advantage"] == "grpo"  # the rest is still the preset's

    ppo = printed_config(capsys, "--algo", "ppo")
    assert (ppo["algo"]["advantage"], ppo["algo"]["critic"], ppo["kl"]["where"], ppo["rl"]["generations"]) == \
        ("gae", "value", "reward", 1)
    dapo = printed_config(capsys, "--algo", "dapo", "rl.dynamic_sampling=false")
    assert dapo["algo"]["eps_high"] == 0.28 and dapo["rl"]["dynamic_sampling"] is False  # an explicit false wins


def test_unknown_preset_exits_2_with_a_suggestion(tmp_path, capsys):
    assert cli.main(["rl", "--algo", "grpp", f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'grpo'" in err and "dapo" in err
    assert not (tmp_path / "run").exists()


# ---- posttrain explain and the refusals --------------------------------------------------------------------------

def write_config(path, overrides: dict):
    """A YAML config from dotted keys: {"rl.generations": 4} → rl: {generations: 4}."""
    nested: dict = {}
    for key, value in overrides.items():
        section, name = key.split(".")
        nested.setdefault(section, {})[name] = value
    path.write_text(yaml.safe_dump(nested))
    return path


GOOD = {"algo.name": "grpo", "rl.prompts_per_step": 4, "rl.generations": 4, "rl.mini_batch_size": 8,
        "rl.update_epochs": 2, "train.micro_batch_size": 2, "train.max_steps": 5}


def test_explain_prints_the_batch_arithmetic(tmp_path, capsys):
    assert cli.main(["explain", str(write_config(tmp_path / "good.yaml", GOOD))]) == 0
    out = capsys.readouterr().out
    assert "advantage grpo" in out and "aggregate seq_mean_token_mean" in out and "KL k3 in the loss" in out
    assert "4 prompts × 4 generations = 16" in out                    # samples per step
    assert "16 / 8 = 2 per epoch" in out                               # mini-batches
    assert "= 4 gradient-accumulation steps per update" in out         # 8 / (2 × 1 process)
    assert "2 mini-batches × 2 epoch(s) = 4" in out                    # updates per step
    assert "5 → 20 optimizer updates, 80 samples generated" in out
    # rollout.engine=auto is decided when the run starts; the built-in engine's log-probs are the trainer's
    assert "rollout correction tis (cap 2) if rollout.engine=auto chooses vLLM, else none" in out


def test_explain_shows_the_rollout_correction_vllm_gets_by_default(tmp_path, capsys):
    assert cli.main(["explain", str(write_config(tmp_path / "v.yaml", {**GOOD, "rollout.engine": "vllm"}))]) == 0
    assert "rollout correction tis (cap 2)" in capsys.readouterr().out
    assert cli.main(["explain", str(write_config(tmp_path / "m.yaml", {**GOOD, "rollout.engine": "vllm",
                                                                       "rl.correction": "geo_mask"}))]) == 0
    assert "rollout correction geo_mask (cap 1.1)" in capsys.readouterr().out
    assert cli.main(["explain", str(write_config(tmp_path / "h.yaml", {**GOOD, "rollout.engine": "hf"}))]) == 0
    assert "rollout correction none\n" in capsys.readouterr().out


def test_explain_derives_the_steps_from_epochs_over_a_prompt_file(tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"say {i}"} for i in range(10)])
    config = write_config(tmp_path / "epochs.yaml", {**GOOD, "train.max_steps": 0, "train.epochs": 2.0,
                                                     "data.train_path": str(prompts)})
    assert cli.main(["explain", str(config)]) == 0
    assert "steps                 5 → 20 optimizer updates" in capsys.readouterr().out  # 2 × 10 prompts / 4 a step


def bad_configs(tmp_path) -> dict[str, tuple[dict, list[str]]]:
    """name → (config overrides, what the message must name)."""
    prompts = write_jsonl(tmp_path / "three.jsonl", [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}])
    return {
        "mini_batch": ({"rl.mini_batch_size": 6}, ["rl.mini_batch_size", "16 samples"]),
        "micro_batch": ({"train.micro_batch_size": 3}, ["train.micro_batch_size", "mini-batch of 8"]),
        "one_generation": ({"rl.generations": 1, "rl.mini_batch_size": 0}, ["rl.generations"]),
        "gae_without_critic": ({"algo.advantage": "gae"}, ["algo.critic"]),
        "zero_steps": ({"train.max_steps": 0, "rl.prompts_per_step": 8, "data.train_path": str(prompts)},
                       ["zero RL steps", "train.max_steps", "rl.prompts_per_step"]),
        "greedy": ({"sampling.temperature": 0.0}, ["sampling.temperature"]),
    }


@pytest.mark.parametrize("case", ["mini_batch", "micro_batch", "one_generation", "gae_without_critic", "zero_steps",
                                  "greedy"])
def test_explain_and_rl_refuse_configs_that_cannot_train(tmp_path, capsys, case):
    overrides, named = bad_configs(tmp_path)[case]
    config = write_config(tmp_path / f"{case}.yaml", {**GOOD, **overrides})
    assert cli.main(["explain", str(config)]) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in named), err
    assert "Traceback" not in err

    # `posttrain rl` runs the same checks before anything is written
    run_dir = tmp_path / "run"
    assert cli.main(["rl", "-c", str(config), f"output_dir={run_dir}", "threads=1", "log.progress=false"]) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in named), err
    assert not run_dir.exists()


def test_rl_runs_the_steps_that_epochs_give(tmp_path):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"say {i}"} for i in range(8)])
    assert run_rl(tmp_path / "run", "train.max_steps=0", f"data.train_path={prompts}", "rl.generations=2",
                  reward=reward_file(tmp_path)) == 0
    assert sorted(records(tmp_path / "run")) == [1, 2]  # 8 prompts / 4 per step, one epoch


# ---- resume ------------------------------------------------------------------------------------------------------

def rewind_to_step_2(run_dir, copy):
    """A copy of a 4-step run as if it had been killed right after its step-2 checkpoint."""
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "final")
    shutil.rmtree(copy / "checkpoints" / "step_000004")
    (copy / "checkpoints" / "latest").write_text("step_000002\n")


def assert_same_tail(straight, resumed):
    expected, got = records(straight), records(resumed)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4]
    for step in (3, 4):
        assert expected[step].keys() == got[step].keys()
        for key in expected[step]:
            if key not in TIMING:
                assert got[step][key] == expected[step][key], (step, key, got[step][key], expected[step][key])
    a, b = weights(straight / "final"), weights(resumed / "final")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


RESUME = ["train.max_steps=4", "checkpoint.every=2", "train.lr=3e-3"]


def test_grpo_with_dynamic_sampling_and_kl_resumes_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = [*RESUME, "rl.generations=2", "rl.dynamic_sampling=true"]
    reward = reward_file(tmp_path)
    assert run_rl(straight, *args, reward=reward) == 0
    # the prompt stream ran ahead of steps × prompts_per_step (groups with equal rewards were redrawn), so a
    # resume that restarted the stream from steps × prompts_per_step would see other prompts
    state = json.loads((straight / "checkpoints" / "step_000002" / "trainer_state.json").read_text())
    assert state["cursor"] > 2 * 4
    rewind_to_step_2(straight, resumed)
    assert run_rl(resumed, *args, "checkpoint.resume=true", reward=reward) == 0
    assert_same_tail(straight, resumed)
    assert records(resumed)[3]["kl"] > 0


def test_ppo_critic_warmup_trains_only_the_critic_first(tmp_path):
    run_dir = tmp_path / "run"
    args = ["train.max_steps=3", "algo.critic_warmup=2", "train.lr=1e-3", "algo.critic_lr=1e-3"]
    assert run_rl(run_dir, *args, algo="ppo", reward=reward_file(tmp_path)) == 0
    m = records(run_dir)
    for step in (1, 2):  # the critic learns, the policy waits: no policy update, every sample skipped
        assert "value_loss" in m[step] and "loss" not in m[step] and m[step]["skipped_samples"] == 4, m[step]
    assert "loss" in m[3] and m[3]["skipped_samples"] < 4
    waited = tmp_path / "waited"  # stopped at the end of the warmup: the policy is the initial model, exactly
    assert run_rl(waited, *args, "train.max_steps=2", algo="ppo", reward=reward_file(tmp_path)) == 0
    initial = load_model(C.ModelConfig(), C.LoraConfig()).state_dict()
    assert all(torch.equal(w, initial[k]) for k, w in weights(waited / "final").items())
    assert not all(torch.equal(w, initial[k]) for k, w in weights(run_dir / "final").items())
    assert cli.main(["explain", "--algo", "grpo", "algo.critic_warmup=2"]) == 2  # no critic to warm up


def test_ppo_with_critic_and_adaptive_kl_resumes_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # two shuffled mini-batches × two epochs per step: the critic, its optimizer and the KL controller all move
    args = [*RESUME, "kl.target=0.1", "kl.horizon=100", "rl.prompts_per_step=8", "rl.mini_batch_size=4",
            "rl.update_epochs=2", "train.micro_batch_size=2"]
    reward = reward_file(tmp_path)
    assert run_rl(straight, *args, algo="ppo", reward=reward) == 0
    m = records(straight)
    assert m[2]["kl_coef"] != 0.05 and m[2]["kl_coef"] != m[1]["kl_coef"]  # the controller's state matters
    rewind_to_step_2(straight, resumed)
    assert run_rl(resumed, *args, "checkpoint.resume=true", algo="ppo", reward=reward) == 0
    assert_same_tail(straight, resumed)
    critic = [weights(d / "checkpoints" / "step_000004" / "critic") for d in (straight, resumed)]
    assert all(torch.equal(critic[0][k], critic[1][k]) for k in critic[0])


# ---- invariance --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("aggregate", ["seq_mean_token_mean", "token_mean"])
def test_micro_batch_size_and_packing_do_not_change_the_update(tmp_path, aggregate):
    # 32 samples in two mini-batches of 16: the second update is off-policy (ratios ≠ 1, some clipped)
    args = ["train.max_steps=1", "train.lr=3e-4", "rl.generations=8", "rl.mini_batch_size=16",
            "sampling.max_new_tokens=12", f"algo.aggregate={aggregate}"]
    reward = reward_file(tmp_path)
    runs = {"16 packed": ["train.micro_batch_size=16"], "4 packed": ["train.micro_batch_size=4"],
            "4 padded": ["train.micro_batch_size=4", "data.packing=false"]}
    for name, extra in runs.items():
        assert run_rl(tmp_path / name, *args, *extra, reward=reward) == 0
    reference, ref_weights = records(tmp_path / "16 packed")[1], weights(tmp_path / "16 packed" / "final")
    assert reference["ratio/max"] > 1.01  # the test covers off-policy ratios, not only ratio = 1
    initial = load_model(C.ModelConfig(), C.LoraConfig()).state_dict()
    assert max((ref_weights[k] - initial[k]).abs().max().item() for k in ref_weights) > 1e-4  # it did train
    for name in ("4 packed", "4 padded"):
        m = records(tmp_path / name)[1]
        for key in ("loss", "grad_norm", "entropy", "approx_kl", "kl"):
            assert m[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-8), (name, key)
        got = weights(tmp_path / name / "final")
        for k in ref_weights:
            torch.testing.assert_close(got[k], ref_weights[k], atol=1e-5, rtol=0, msg=f"{name}: {k}")


# ---- LoRA ----------------------------------------------------------------------------------------------------------

def test_lora_reference_is_the_base_with_adapters_disabled(tmp_path):
    run_dir = tmp_path / "run"
    assert run_rl(run_dir, "lora.r=4", "train.max_steps=3", "train.lr=3e-3", "rl.generations=4",
                  reward=reward_file(tmp_path)) == 0
    m = records(run_dir)
    assert abs(m[1]["kl"]) < 1e-6      # LoRA's B starts at 0: the adapted policy is the base
    assert m[3]["kl"] > 1e-4           # and the reference stays the base while the adapters train
    assert (run_dir / "final" / "adapter_config.json").is_file()


# ---- the KL monitor: the KL logged without a KL term ---------------------------------------------------------------

def test_kl_monitor_rows_are_evenly_spaced():
    assert rl.monitored(64, 8) == [0, 8, 16, 24, 32, 40, 48, 56]  # 8 prompts × 8: the first of each group
    assert rl.monitored(8, 3) == [0, 2, 5]
    assert rl.monitored(4, 10) == [0, 1, 2, 3]                     # at most every sample


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_kl_monitor_logs_the_kl_of_its_samples_and_changes_nothing_else(tmp_path, monkeypatch, lora):
    """dr_grpo has no KL term. With kl.monitor=2 of 8 samples the logged kl is the k3 mean over the tokens of samples
    0 and 4, recomputed here from an independent reference pass (the start: adapters off, or the initial weights);
    the trained weights equal those of the same run without the monitor."""
    args = ["train.max_steps=3", "rl.generations=2", "train.lr=3e-3" if lora else "train.lr=3e-4",
            *(["lora.r=4"] if lora else [])]
    start = load_model(C.ModelConfig(name_or_path="tiny"), C.LoraConfig(r=0), seed=0).eval()
    expected = []
    prepare = rl.prepare

    def checking_prepare(cfg, model, reference, critic, tokenizer, rollout, beta):
        batch = prepare(cfg, model, reference, critic, tokenizer, rollout, beta)
        rows = [0, 4]
        ref = rl.forward_tokens(start, [batch.prompt_ids[i] for i in rows], [batch.completion_ids[i] for i in rows],
                                batch.width, cfg)[0]
        old, mask = batch.old_logps[rows], batch.mask[rows]
        k3 = (torch.exp(ref - old) - 1 - (ref - old)) * mask
        expected.append((k3.sum() / mask.sum()).item())
        return batch

    monkeypatch.setattr(rl, "prepare", checking_prepare)
    watched, plain = tmp_path / "watched", tmp_path / "plain"
    assert run_rl(watched, *args, "kl.monitor=2", algo="dr_grpo", reward=reward_file(tmp_path)) == 0
    m = records(watched)
    assert [m[s]["kl"] for s in (1, 2, 3)] == pytest.approx(expected, abs=1e-6)
    assert abs(m[1]["kl"]) < 1e-6 and m[3]["kl"] > 1e-5  # the first step samples the start; then the policy moves
    assert m[3]["kl_coef"] == 0.0
    monkeypatch.setattr(rl, "prepare", prepare)
    assert run_rl(plain, *args, algo="dr_grpo", reward=reward_file(tmp_path)) == 0
    assert "kl" not in records(plain)[3]
    name = "adapter_model.safetensors" if lora else "model.safetensors"
    a, b = load_file(str(watched / "final" / name)), load_file(str(plain / "final" / name))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


# ---- rollout correction ----------------------------------------------------------------------------------------------

def test_rollout_correction_on_the_built_in_engine_weighs_by_about_one(tmp_path):
    """The built-in engine's log-probs are the trainer's to ~1e-6, so tis weighs every token by ~1 and truncates
    none: the trained weights equal an uncorrected run's to float noise, and the metrics say so."""
    args = ["train.max_steps=2", "rl.generations=2"]
    assert run_rl(tmp_path / "tis", *args, "rl.correction=tis", reward=reward_file(tmp_path)) == 0
    assert run_rl(tmp_path / "none", *args, reward=reward_file(tmp_path)) == 0
    m = records(tmp_path / "tis")[2]
    assert m["rollout/correction_truncated_frac"] == 0 and m["rollout/correction_masked_frac"] == 0
    assert m["rollout/correction_weight_mean"] == pytest.approx(1.0, abs=1e-4)
    assert m["rollout/logprob_diff_max"] < 1e-4
    assert "rollout/correction_weight_mean" not in records(tmp_path / "none")[2]
    a, b = weights(tmp_path / "tis" / "final"), weights(tmp_path / "none" / "final")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=k)


def test_old_logprobs_only_for_the_samples_that_train(tmp_path, monkeypatch):
    """With a rollout correction, no KL term and no whitening, π_old is recomputed only for samples whose
    advantage is not 0 (here the prompts with an odd character sum get a constant reward: their groups have none).
    The trained weights and losses equal those of a run that recomputes every sample; the forward passes fewer."""
    reward = reward_file(tmp_path, """
        def reward(prompt, completion, **row):
            if sum(map(ord, prompt)) % 2:
                return 0.5
            return sum(c.islower() for c in completion) / max(1, len(completion))
    """)
    scored = []
    forward = rl.forward_tokens

    def counting_forward(model, prompts, *args, **kwargs):
        if not torch.is_grad_enabled():  # prepare's no-grad passes
            scored.append(len(prompts))
        return forward(model, prompts, *args, **kwargs)

    monkeypatch.setattr(rl, "forward_tokens", counting_forward)
    # A sampler 0.5 nats below the trainer: a sample trained with the sampler's log-probs as π_old would have the
    # ratio e^0.5, clipped (ε 0.2), where with its own π_old the ratio is 1 and tis weighs it by e^0.5.
    sampler = rl._sampler_logps
    monkeypatch.setattr(rl, "_sampler_logps", lambda *a: sampler(*a) - 0.5)
    args = ["train.max_steps=3", "rl.generations=4", "rl.correction=tis", "kl.coef=0", "train.lr=3e-3"]
    assert run_rl(tmp_path / "subset", *args, reward=reward) == 0
    subset, scored[:] = sum(scored), []
    monkeypatch.setattr(rl, "trains_only_nonzero_advantages", lambda *a: False)
    assert run_rl(tmp_path / "all", *args, reward=reward) == 0
    assert sum(scored) == 3 * 16 and 0 < subset < 3 * 16, (subset, scored)
    a, b = records(tmp_path / "subset"), records(tmp_path / "all")
    for step in (1, 2, 3):
        assert a[step]["loss"] == pytest.approx(b[step]["loss"], abs=1e-6)
        assert a[step]["rollout/correction_weight_mean"] == pytest.approx(math.exp(0.5), abs=1e-4)
        assert a[step]["skipped_samples"] == b[step]["skipped_samples"] > 0
    wa, wb = weights(tmp_path / "subset" / "final"), weights(tmp_path / "all" / "final")
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0, msg=k)


@pytest.mark.parametrize("extra, fragment", [
    (["rl.correction=nope"], "valid: geo_mask, mis, none"),
    (["rl.correction=tis", "sampling.top_k=5"], "rl.correction=none"),
    (["rl.correction=mis", "rl.correction_cap=0.5"], "rl.correction_cap=2"),
])
def test_bad_rollout_correction_exits_2(tmp_path, capsys, extra, fragment):
    assert run_rl(tmp_path / "run", "train.max_steps=1", *extra) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and not (tmp_path / "run").exists()


# ---- rewards through the loop --------------------------------------------------------------------------------------

def test_a_reward_that_always_raises_stops_the_run(tmp_path, capsys):
    reward = reward_file(tmp_path, """
        def reward(prompt, completion, **row):
            raise KeyError("answer")
    """)
    assert run_rl(tmp_path / "run", "train.max_steps=2", "rl.generations=4", reward=reward) == 2
    err = capsys.readouterr().err
    assert "reward.max_unscored_fraction" in err and "KeyError" in err and "16 of 16" in err
    assert not (tmp_path / "run" / "final").exists()


def test_unscorable_completions_are_counted_and_the_run_goes_on(tmp_path):
    reward = reward_file(tmp_path, """
        def reward(prompt, completion, **row):
            if any(c.isdigit() for c in completion):
                return None  # e.g. "no answer found"
            return sum(c.islower() for c in completion) / max(1, len(completion))
    """)
    assert run_rl(tmp_path / "run", "train.max_steps=3", "rl.generations=4", reward=reward) == 0
    m = records(tmp_path / "run")
    assert any(r["reward/unscored_frac"] > 0 for r in m.values())
    for r in m.values():
        assert r["reward/failures/none"] == pytest.approx(r["reward/unscored_frac"] * 16)  # 16 samples a step
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_a_batched_reward_of_the_wrong_length_stops_the_run(tmp_path, capsys):
    reward = reward_file(tmp_path, """
        def reward(prompts, completions, **columns):
            return [1.0] * (len(completions) - 1)
    """)
    assert run_rl(tmp_path / "run", "train.max_steps=2", "rl.generations=4", "reward.function_batched=true",
                  reward=reward) == 2
    err = capsys.readouterr().err
    assert "a list of 15 values for a batch of 16 completions" in err
    assert not (tmp_path / "run" / "final").exists()


# ---- dynamic sampling ------------------------------------------------------------------------------------------------

def test_dynamic_sampling_redraws_equal_groups_and_keeps_the_batch_size(tmp_path, monkeypatch):
    seen = []
    prepare = rl.prepare

    def recording_prepare(cfg, model, reference, critic, tokenizer, rollout, beta):
        seen.append((rollout.rewards.clone(), rollout.group_index.clone()))
        return prepare(cfg, model, reference, critic, tokenizer, rollout, beta)

    monkeypatch.setattr(rl, "prepare", recording_prepare)
    assert run_rl(tmp_path / "run", "train.max_steps=3", "rl.generations=2", "rl.dynamic_sampling=true",
                  reward=reward_file(tmp_path)) == 0
    m = records(tmp_path / "run")
    assert all(r["rollout/sampling_rounds"] >= 1 for r in m.values())
    assert any(r["rollout/sampling_rounds"] > 1 for r in m.values())  # some groups had to be redrawn
    assert any(r["rollout/filled_groups"] == 0 for r in m.values())
    for (rewards, groups), r in zip(seen, m.values()):
        assert len(rewards) == 4 * 2 and groups.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
        if r["rollout/filled_groups"] == 0:  # a full step: every group it trains on has a learning signal
            assert all(rewards[2 * g] != rewards[2 * g + 1] for g in range(4))


# ---- the outcome: RL learns ------------------------------------------------------------------------------------------

def test_grpo_raises_a_reachable_reward(tmp_path):
    assert run_rl(tmp_path / "run", "train.max_steps=20", "train.lr=3e-3", "rl.generations=8",
                  "train.micro_batch_size=32", reward=reward_file(tmp_path)) == 0
    rewards = [r["reward/mean"] for r in records(tmp_path / "run").values()]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    # from about 0.12 (random characters) to about 0.75; a wrong gradient sign would push it towards 0
    assert last > first + 0.3, rewards
