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


def gpt2_with_dropout(directory: Path, p: float = 0.1) -> Path:
    """A 2-layer GPT-2 whose residual, embedding and attention dropout are all p (GPT-2's own default is 0.1)."""
    from transformers import GPT2Config
    from posttrain.models.tiny import build_tokenizer

    tok = build_tokenizer()
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=256, vocab_size=384, resid_pdrop=p,
                        embd_pdrop=p, attn_pdrop=p, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    return save_model(directory, config)


def qwen2(directory: Path) -> Path:
    """A 2-layer Qwen2 (grouped-query attention, untied output head)."""
    from transformers import Qwen2Config
    from posttrain.models.tiny import build_tokenizer

    tok = build_tokenizer()
    config = Qwen2Config(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=384, max_position_embeddings=256, tie_word_embeddings=False,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
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
