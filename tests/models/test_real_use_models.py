"""Real models, real use: architectures the embedded model is not (GPT-2 with dropout, Qwen2), LoRA runs continued by
later commands, reward models exported for plain transformers, and `generate` on chat rows — all through the CLI.

The models are tiny random ones built from a transformers config next to the embedded character tokenizer, so every
test runs offline in seconds and fails for the reason a user with the real model would meet.
"""

import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli, write_jsonl

FAST = ["threads=1", "log.progress=false", "eval.task_accuracy=false", "task.num_train=32", "task.num_eval=8",
        "task.max_digits=1"]


def save_model(directory: Path, config, seed: int = 0) -> Path:
    """A causal LM built from `config` with random weights (`seed`), saved with the embedded tokenizer."""
    from transformers import AutoModelForCausalLM
    from posttrain.models.tiny import build_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return directory


def gpt2_with_dropout(directory: Path, p: float = 0.1, pad: bool = True) -> Path:
    """A 2-layer GPT-2 whose residual, embedding and attention dropout are all p (GPT-2's own default is 0.1);
    pad=False leaves the config's pad_token_id unset, as GPT-2's own is."""
    from transformers import GPT2Config
    from posttrain.models.tiny import build_tokenizer

    tok = build_tokenizer()
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=256, vocab_size=384, resid_pdrop=p,
                        embd_pdrop=p, attn_pdrop=p, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id if pad else None)
    return save_model(directory, config)


def qwen2(directory: Path, pad: bool = True) -> Path:
    """A 2-layer Qwen2 (grouped-query attention, untied output head); pad=False: no pad_token_id in its config."""
    from transformers import Qwen2Config
    from posttrain.models.tiny import build_tokenizer

    tok = build_tokenizer()
    config = Qwen2Config(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=384, max_position_embeddings=256, tie_word_embeddings=False,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id if pad else None)
    return save_model(directory, config)


def records(run_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


# ---- 1. dropout is off wherever log-probs are compared -------------------------------------------------------------

def test_dpo_on_a_model_with_dropout_starts_at_exactly_zero_rewards(tmp_path):
    # Step 1: the policy IS the reference, so every implicit reward is 0 — unless dropout makes the two passes differ.
    model = gpt2_with_dropout(tmp_path / "gpt2")
    run_cli("dpo", f"model.name_or_path={model}", f"output_dir={tmp_path / 'run'}", *FAST, "train.max_steps=1",
            "train.micro_batch_size=8", check=True)
    first = records(tmp_path / "run")[1]
    assert first["rewards/chosen"] == 0 and first["rewards/rejected"] == 0
    assert first["rewards/margins"] == 0 and first["rewards/accuracies"] == 0


def test_grpo_on_a_model_with_dropout_updates_on_policy(tmp_path):
    # The sampler's log-probs are π_old; the first update's ratios are exactly 1 when training runs without dropout.
    model = gpt2_with_dropout(tmp_path / "gpt2")
    run_cli("rl", "--algo", "grpo", f"model.name_or_path={model}", f"output_dir={tmp_path / 'run'}", *FAST,
            "train.max_steps=1", "rl.prompts_per_step=4", "rl.generations=4", "train.micro_batch_size=16",
            "sampling.max_new_tokens=8", check=True)
    first = records(tmp_path / "run")[1]
    assert first["rollout/logprob_diff_max"] <= 1e-5
    assert abs(first["ratio/min"] - 1) < 1e-5 and abs(first["ratio/max"] - 1) < 1e-5
    assert abs(first["kl"]) < 1e-6


# ---- 2. continuing a LoRA run ----------------------------------------------------------------------------------------

DPO = [*FAST, "train.max_steps=2", "train.micro_batch_size=8", "train.lr=1e-2"]


@pytest.fixture(scope="module")
def sft_lora(tmp_path_factory) -> Path:
    """A finished SFT run whose final/ is a rank-4 LoRA adapter on the tiny model, trained enough to matter."""
    run_dir = tmp_path_factory.mktemp("sft") / "run"
    run_cli("sft", f"output_dir={run_dir}", *FAST, "lora.r=4", "train.max_steps=4", "train.lr=3e-2",
            "train.micro_batch_size=8", check=True)
    assert (run_dir / "final" / "adapter_config.json").is_file()
    return run_dir


@pytest.fixture(scope="module")
def sft_merged(sft_lora) -> Path:
    """The SFT run exported: the adapter merged into a plain model directory (what `lora.r=0` starts from)."""
    out = sft_lora.parent / "merged"
    run_cli("export", str(sft_lora), str(out), check=True)
    return out


def reference_logps(run_dir: Path) -> torch.Tensor:
    """DPO's cached log π_ref of every train/eval response: the policy as loaded, before the first step."""
    from safetensors.torch import load_file
    from posttrain.train.preference import REFERENCE_FILE
    flat = load_file(str(run_dir / REFERENCE_FILE))
    return torch.cat([flat[k] for k in sorted(flat)])


def adapter_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(str(directory / "adapter_model.safetensors"))


def test_dpo_continues_the_sft_adapter_when_lora_r_is_unset(tmp_path, sft_lora, sft_merged):
    run_cli("dpo", f"model.name_or_path={sft_lora}", f"output_dir={tmp_path / 'run'}", *DPO, check=True)
    run_cli("dpo", f"model.name_or_path={sft_merged}", f"output_dir={tmp_path / 'merged'}", *DPO, check=True)
    run_cli("dpo", f"output_dir={tmp_path / 'base'}", *DPO, check=True)
    # step 0's policy (and so the reference) is the SFT model — not the raw base the adapter was trained on
    start = reference_logps(tmp_path / "run")
    torch.testing.assert_close(start, reference_logps(tmp_path / "merged"), atol=1e-5, rtol=0)
    assert (start - reference_logps(tmp_path / "base")).abs().max() > 1e-2
    assert records(tmp_path / "run")[1]["rewards/margins"] == 0
    # the same adapter (rank, targets, base) kept training
    before, after = adapter_weights(sft_lora / "final"), adapter_weights(tmp_path / "run" / "final")
    assert sorted(before) == sorted(after)
    assert max((after[k] - before[k]).abs().max().item() for k in before) > 1e-4
    config = json.loads((tmp_path / "run" / "final" / "adapter_config.json").read_text())
    original = json.loads((sft_lora / "final" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == original["base_model_name_or_path"]


def test_dpo_with_lora_r_0_merges_the_adapter_and_trains_in_full(tmp_path, sft_lora, sft_merged):
    run_cli("dpo", f"model.name_or_path={sft_lora}", f"output_dir={tmp_path / 'run'}", *DPO, "lora.r=0", check=True)
    run_cli("dpo", f"model.name_or_path={sft_merged}", f"output_dir={tmp_path / 'merged'}", *DPO, check=True)
    torch.testing.assert_close(reference_logps(tmp_path / "run"), reference_logps(tmp_path / "merged"), atol=1e-5,
                               rtol=0)
    final = tmp_path / "run" / "final"
    assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()
    assert records(tmp_path / "run")[2]["loss"] == pytest.approx(records(tmp_path / "merged")[2]["loss"], abs=1e-4)


def test_dpo_with_lora_r_8_trains_new_adapters_on_the_merged_sft_model(tmp_path, sft_lora, sft_merged):
    run_cli("dpo", f"model.name_or_path={sft_lora}", f"output_dir={tmp_path / 'run'}", *DPO, "lora.r=8", check=True)
    run_cli("dpo", f"model.name_or_path={sft_merged}", f"output_dir={tmp_path / 'merged'}", *DPO, check=True)
    torch.testing.assert_close(reference_logps(tmp_path / "run"), reference_logps(tmp_path / "merged"), atol=1e-5,
                               rtol=0)
    config = json.loads((tmp_path / "run" / "final" / "adapter_config.json").read_text())
    assert config["r"] == 8 and Path(config["base_model_name_or_path"]) == (sft_lora / "final").resolve()
    # generate and export rebuild the chain: the SFT adapter merged, then the new adapter on it
    run_cli("export", str(tmp_path / "run"), str(tmp_path / "exported"), check=True)
    outputs = {}
    for name, model in (("chain", tmp_path / "run"), ("exported", tmp_path / "exported")):
        outputs[name] = tmp_path / f"{name}.jsonl"
        run_cli("generate", f"model={model}", f"output={outputs[name]}", "num_prompts=4", "sampling.temperature=0",
                "sampling.max_new_tokens=8", "task.max_digits=1", check=True)
    chain, exported = ([json.loads(line) for line in outputs[n].read_text().splitlines()] for n in outputs)
    assert [r["completion"] for r in chain] == [r["completion"] for r in exported]
    assert [r["logprob"] for r in chain] == pytest.approx([r["logprob"] for r in exported], abs=1e-4)


@pytest.mark.parametrize("mode", ["outcome", "prm"])
def test_a_reward_model_continues_the_sft_adapter_under_a_new_head(tmp_path, sft_lora, mode):
    # The SFT adapter's LoRA weights carry over (a tiny learning rate barely moves them); the new head trains too.
    run_cli("rm", f"reward.mode={mode}", f"model.name_or_path={sft_lora}", f"output_dir={tmp_path / 'rm'}", *FAST,
            "train.max_steps=1", "train.micro_batch_size=8", "train.lr=1e-9", check=True)
    before, after = adapter_weights(sft_lora / "final"), adapter_weights(tmp_path / "rm" / "final")
    lora = [k for k in before if "lora_" in k]
    assert lora and all(torch.allclose(before[k], after[k], atol=1e-6) for k in lora)
    assert any(k.startswith("base_model.model.score") for k in after)
    config = json.loads((tmp_path / "rm" / "final" / "adapter_config.json").read_text())
    assert config["task_type"] == {"outcome": "SEQ_CLS", "prm": "TOKEN_CLS"}[mode]


def test_rft_from_a_lora_run_directory_ends_with_a_model_not_the_run(tmp_path, sft_lora):
    # no round keeps a sample (the tiny SFT model solves nothing), so final/ is the start: the run's adapter
    run_cli("rft", f"model.name_or_path={sft_lora}", f"output_dir={tmp_path / 'rft'}", "task.max_digits=1",
            "task.num_train=8", "task.num_eval=4", "eval.num_samples=4", "sampling.n=2", "sampling.max_new_tokens=8",
            "rft.rounds=1", "log.progress=false", "threads=1", check=True)
    final = tmp_path / "rft" / "final"
    assert (final / "adapter_config.json").is_file() and not (final / "checkpoints").exists()


@pytest.mark.parametrize("lora", ["unset", "lora.r=8"])
def test_a_resumed_continuation_reads_its_checkpoints_adapter(tmp_path, sft_lora, lora):
    import shutil
    args = [*DPO, "checkpoint.every=1", "checkpoint.keep_last=5"] + ([] if lora == "unset" else [lora])
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_cli("dpo", f"model.name_or_path={sft_lora}", f"output_dir={straight}", *args, check=True)
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoints" / "step_000002")
    (resumed / "checkpoints" / "latest").write_text("step_000001\n")
    run_cli("dpo", f"model.name_or_path={sft_lora}", f"output_dir={resumed}", *args, "checkpoint.resume=true",
            check=True)
    assert records(resumed)[2]["loss"] == pytest.approx(records(straight)[2]["loss"], abs=1e-6)
    a, b = adapter_weights(straight / "final"), adapter_weights(resumed / "final")
    assert sorted(a) == sorted(b) and all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


@pytest.mark.parametrize("lora", ["unset", "lora.r=4"])
def test_grpo_from_an_sft_adapter_starts_at_zero_kl_to_the_sft_model(tmp_path, sft_lora, lora):
    # The reference is the starting policy (the SFT model), with the adapter continued or new adapters on top.
    args = [] if lora == "unset" else [lora]
    run_cli("rl", "--algo", "grpo", f"model.name_or_path={sft_lora}", f"output_dir={tmp_path / 'run'}", *FAST,
            "train.max_steps=1", "rl.prompts_per_step=4", "rl.generations=4", "train.micro_batch_size=16",
            "sampling.max_new_tokens=8", "kl.coef=0.1", *args, check=True)
    first = records(tmp_path / "run")[1]
    assert abs(first["kl"]) < 1e-6 and abs(first["ratio/max"] - 1) < 1e-5


# ---- 3. exported reward models keep their heads ---------------------------------------------------------------------

PAIRS = [("12+30=", "42"), ("12+30=", "43"), ("7+8=", "15"), ("7+8=", "15 because seven and eight"), ("1+1=", "")]


def plain_scores(model, tokenizer) -> list[float]:
    """An outcome RM's scores of PAIRS in one right-padded batch, by plain transformers (no posttrain model code):
    the config must name the pad token, or transformers refuses a batch of more than one."""
    from posttrain.data.preference import response_example

    ids = [response_example(p, c, tokenizer)["input_ids"] for p, c in PAIRS]
    width = max(map(len, ids))
    input_ids = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in ids])
    mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    with torch.no_grad():
        return model.eval()(input_ids=input_ids, attention_mask=mask).logits[:, 0].tolist()


@pytest.mark.parametrize("arch,lora", [("gpt2", "full"), ("gpt2", "lora.r=4"), ("qwen2", "lora.r=4")])
def test_an_exported_reward_model_loads_in_transformers_and_gives_the_runs_scores(tmp_path, arch, lora):
    from transformers import AutoModelForSequenceClassification
    from posttrain.rewards import load_reward_model

    build = gpt2_with_dropout if arch == "gpt2" else qwen2
    base = build(tmp_path / arch, pad=False)  # GPT-2's config names no pad token
    args = [] if lora == "full" else [lora, "train.lr=3e-2"]
    run_cli("rm", f"model.name_or_path={base}", f"output_dir={tmp_path / 'rm'}", *FAST, "train.max_steps=2",
            "train.micro_batch_size=8", *args, check=True)
    run_cli("export", str(tmp_path / "rm"), str(tmp_path / "out"), check=True)
    reward = load_reward_model(tmp_path / "rm")
    expected = reward.score([p for p, _ in PAIRS], [c for _, c in PAIRS], [{}] * len(PAIRS))
    assert max(expected) - min(expected) > 1e-3  # a trained head, not a constant
    exported = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    assert plain_scores(exported, reward.tokenizer) == pytest.approx(expected, abs=1e-5)


def test_a_lora_reward_model_reloaded_with_peft_scores_batches(tmp_path):
    # README's recipe for a LoRA RM's final/: PEFT on its base, which is given the tokenizer's pad token
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from posttrain.rewards import load_reward_model

    base = gpt2_with_dropout(tmp_path / "gpt2", pad=False)
    run_cli("rm", f"model.name_or_path={base}", f"output_dir={tmp_path / 'rm'}", *FAST, "train.max_steps=2",
            "train.micro_batch_size=8", "lora.r=4", "train.lr=3e-2", check=True)
    final = tmp_path / "rm" / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, pad_token_id=tokenizer.pad_token_id)
    model = PeftModel.from_pretrained(model, final)
    expected = load_reward_model(tmp_path / "rm").score([p for p, _ in PAIRS], [c for _, c in PAIRS], [{}] * len(PAIRS))
    assert plain_scores(model, tokenizer) == pytest.approx(expected, abs=1e-5)


def test_an_exported_lora_process_reward_model_loads_as_token_classification(tmp_path):
    from transformers import AutoModelForTokenClassification
    from posttrain.rewards import load_head_model, step_scores

    run_cli("rm", "reward.mode=prm", f"output_dir={tmp_path / 'prm'}", *FAST, "train.max_steps=2",
            "train.micro_batch_size=8", "lora.r=4", "train.lr=3e-2", check=True)
    run_cli("export", str(tmp_path / "prm"), str(tmp_path / "out"), check=True)
    model, tokenizer = load_head_model(tmp_path / "prm", "token", "a PRM")
    plain = AutoModelForTokenClassification.from_pretrained(tmp_path / "out").eval()
    steps = ["7+5=12 carry 1", "4+8+1=14 carry 1", "answer: 142"]
    expected = step_scores(model.eval(), tokenizer, "47+95=", steps)
    assert step_scores(plain, tokenizer, "47+95=", steps) == pytest.approx(expected, abs=1e-5)


# ---- 4. generate takes conversations --------------------------------------------------------------------------------

def test_generate_continues_messages_rows_through_the_chat_template(tmp_path):
    conversation = [{"role": "system", "content": "Add."}, {"role": "user", "content": "2+3="}]
    data = write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": conversation},
        {"messages": [*conversation, {"role": "assistant", "content": "5"}]},  # the reference reply is dropped
        {"prompt": conversation},
    ])
    out = tmp_path / "out.jsonl"
    run_cli("generate", f"data_path={data}", f"output={out}", "sampling.temperature=0", "sampling.max_new_tokens=6",
            check=True)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in got] == [conversation] * 3
    assert got[0]["completion"] == got[1]["completion"] == got[2]["completion"]
    assert got[0]["logprob"] == pytest.approx(got[2]["logprob"], abs=1e-5)


def test_generate_refuses_a_conversation_that_is_only_an_assistant_message(tmp_path):
    data = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": "hi"}]},
                                                  {"messages": [{"role": "assistant", "content": "5"}]}])
    proc = run_cli("generate", f"data_path={data}", f"output={tmp_path / 'out.jsonl'}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "row 2" in proc.stderr and "messages" in proc.stderr and not (tmp_path / "out.jsonl").exists()


def test_new_lora_adapters_start_from_the_seed_alone():
    """LoRA's A matrices are random at creation: they come from load_model's seed, not from whatever the process
    drew before — a run started in a fresh process and the same run after others in one process (the demo's
    stages, the library API) begin from the same adapters."""
    from posttrain.config import LoraConfig, ModelConfig
    from posttrain.models.loading import load_model

    def adapters(noise_seed: int, seed: int = 0) -> dict:
        torch.manual_seed(noise_seed)
        torch.rand(7)  # the process's history
        model = load_model(ModelConfig(name_or_path="tiny"), LoraConfig(r=4), seed=seed)
        return {k: v.detach().clone() for k, v in model.named_parameters() if "lora_A" in k}

    first, second = adapters(1), adapters(2)
    assert first and all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(*(next(iter(a.values())) for a in (first, adapters(1, seed=1))))  # another seed: others
