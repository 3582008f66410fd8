"""The SFT loop end to end: accumulation and packing invariance, saved models that load in plain
transformers/PEFT with the same numbers, LoRA export, pretraining, bf16 and gradient checkpointing."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import losses, run_cli, write_jsonl
from posttrain import config as C
from posttrain.data import build_sft_examples, collate, load_rows, normalize
from posttrain.algos.sft import token_cross_entropy
from posttrain.train import sft


def sft_config(out, train_path=None, **train):
    return C.SFTConfig(
        output_dir=str(out), seed=3, threads=1,
        data=C.DataConfig(train_path=str(train_path) if train_path else None, max_length=64),
        task=C.TaskConfig(num_train=200, num_eval=16),
        train=C.TrainConfig(**{"lr": 5e-3, "max_steps": 3, "micro_batch_size": 8, "grad_accum": 1, **train}),
        eval=C.EvalConfig(num_samples=8, max_new_tokens=6),
        log=C.LogConfig(progress=False),
    )


def weights(run_dir):
    return load_file(str(run_dir / "final" / "model.safetensors"))


def assert_same_run(a, b, loss_tol=1e-5, weight_tol=1e-4):
    """Per-step losses within loss_tol; final weights within weight_tol. (Adam divides each update by √v, so
    float summation-order noise on near-zero gradients shows up ~10× larger in the weights than in the loss.)"""
    la, lb = losses(a), losses(b)
    assert la.keys() == lb.keys() and len(la) == 3
    for step in la:
        assert abs(la[step] - lb[step]) <= loss_tol, (step, la[step], lb[step])
    wa, wb = weights(a), weights(b)
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=weight_tol, rtol=0), name


def tiny_examples(rows, n=8):
    from posttrain.models.loading import load_tokenizer
    tokenizer = load_tokenizer("tiny")
    examples, _ = build_sft_examples(normalize(load_rows(rows[:n]), kind="sft"), tokenizer, max_length=64)
    return examples


def step_gradients(examples, micro_batch_size, packing=True):
    """Loss and gradients of one accumulated step of the tiny model, split into micro-batches."""
    from posttrain.models.tiny import build_model, build_tokenizer
    model = build_model(build_tokenizer(), seed=0)
    micro = [collate(examples[i:i + micro_batch_size], pad_id=0, packing=packing)
             for i in range(0, len(examples), micro_batch_size)]
    loss = sft.accumulate_gradients(model, micro)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_grad_accumulation_gives_the_same_gradients(varied_rows):
    examples = tiny_examples(varied_rows)
    assert len({sum(t != -100 for t in e["labels"]) for e in examples}) > 1, "lengths must vary"
    loss8, grads8 = step_gradients(examples, 8)
    for mb in (1, 2, 3):
        loss, grads = step_gradients(examples, mb)
        assert abs(loss - loss8) <= 1e-5
        for name in grads8:
            assert torch.allclose(grads[name], grads8[name], atol=1e-5, rtol=0), (mb, name)


def test_averaging_micro_batch_means_would_be_caught(varied_rows):
    """Control: the classic bug (mean per micro-batch, then mean of means) differs from the token mean,
    so the test above can fail for the right reason."""
    examples = tiny_examples(varied_rows)
    from posttrain.models.tiny import build_model, build_tokenizer
    model = build_model(build_tokenizer(), seed=0)
    with torch.no_grad():
        means = []
        for e in examples:
            b = collate([e], pad_id=0, packing=False)
            loss, mask = token_cross_entropy(model(input_ids=b["input_ids"]).logits, b["targets"])
            means.append((loss.sum() / mask.sum()).item())
    token_mean, _ = step_gradients(examples, 1)
    assert abs(sum(means) / len(means) - token_mean) > 1e-3


def test_grad_accumulation_invariance_through_the_loop(tmp_path, varied_rows):
    data = write_jsonl(tmp_path / "d.jsonl", varied_rows)
    sft.run(sft_config(tmp_path / "mb8", data, micro_batch_size=8, grad_accum=1))
    sft.run(sft_config(tmp_path / "mb1", data, micro_batch_size=1, grad_accum=8))
    assert_same_run(tmp_path / "mb8", tmp_path / "mb1")


def test_packing_invariance_through_the_loop(tmp_path, varied_rows):
    data = write_jsonl(tmp_path / "d.jsonl", varied_rows)
    packed = sft_config(tmp_path / "packed", data)
    padded = sft_config(tmp_path / "padded", data)
    padded.data.packing = False
    sft.run(packed)
    sft.run(padded)
    assert_same_run(tmp_path / "packed", tmp_path / "padded")


def test_saved_model_loads_in_plain_transformers_with_identical_numbers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out = tmp_path / "run"
    metrics = sft.run(sft_config(out))
    model = AutoModelForCausalLM.from_pretrained(out / "final", dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    # the run's own eval loss, recomputed from the exported directory by plain transformers
    assert abs(plain_eval_loss(model, tokenizer, out) - metrics["eval/loss"]) < 1e-5
    ckpt = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step_000003" / "model",
                                                dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer("12+34=")["input_ids"]])
    assert torch.equal(model(ids).logits, ckpt(ids).logits)


def plain_eval_loss(model, tokenizer, run_dir) -> float:
    """Eval loss with only transformers + the data layer: sum of token NLLs / token count, no packing."""
    from posttrain import tasks
    task = tasks.get("arith", max_digits=3, ops="+")
    rows = normalize(load_rows(task.sft_rows("eval", 16, 3)), kind="sft")
    examples, _ = build_sft_examples(rows, tokenizer, max_length=64)
    batch = collate(examples, pad_id=tokenizer.pad_token_id, packing=False)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss, mask = token_cross_entropy(logits, batch["targets"])
    return (loss.sum() / mask.sum()).item()


def test_lora_adapter_loads_with_peft_and_export_merges_it(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from posttrain.models.tiny import tiny_path
    out = tmp_path / "lora"
    cfg = sft_config(out, lr=2e-2)
    cfg.lora = C.LoraConfig(r=4, alpha=8)
    metrics = sft.run(cfg)
    adapter_config = json.loads((out / "final" / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4 and (out / "final" / "adapter_model.safetensors").is_file()
    assert not (out / "final" / "model.safetensors").exists()

    base = AutoModelForCausalLM.from_pretrained(tiny_path(), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(out / "final")).eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "final")
    assert abs(plain_eval_loss(peft_model, tokenizer, out) - metrics["eval/loss"]) < 1e-5
    untouched = AutoModelForCausalLM.from_pretrained(tiny_path(), dtype=torch.float32).eval()
    assert abs(plain_eval_loss(untouched, tokenizer, out) - metrics["eval/loss"]) > 1e-3, "the adapter did nothing"

    run_cli("export", str(out), str(tmp_path / "merged"), check=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    ids = torch.tensor([tokenizer("123+45=")["input_ids"]])
    assert torch.allclose(merged(ids).logits, peft_model(ids).logits, atol=1e-5)
    assert not any("lora" in k for k in merged.state_dict())


def test_pretraining_puts_every_token_in_the_loss(tmp_path):
    cfg = C.PretrainConfig(output_dir=str(tmp_path / "pre"), threads=1, log=C.LogConfig(progress=False),
                           task=C.TaskConfig(format="text", num_train=64, num_eval=8),
                           train=C.TrainConfig(max_steps=2, micro_batch_size=4),
                           eval=C.EvalConfig(num_samples=4, max_new_tokens=5))
    metrics = sft.run(cfg)
    assert metrics["eval/loss"] > 0 and "eval/accuracy" in metrics
    from posttrain import tasks
    from posttrain.models.loading import load_tokenizer
    rows = normalize(load_rows(tasks.get("arith").text_rows("train", 4, 0)), kind="sft")
    examples, _ = build_sft_examples(rows, load_tokenizer("tiny"), max_length=64)
    for e in examples:  # every token but the leading bos is a target
        assert e["labels"][0] == -100 and e["labels"][1:] == e["input_ids"][1:]
    saved = C.load_yaml(tmp_path / "pre" / "config.yaml", C.PretrainConfig)
    assert saved == cfg


@pytest.mark.parametrize("option", ["bf16", "gradient_checkpointing"])
def test_bf16_and_gradient_checkpointing_track_fp32(tmp_path, option):
    reference = sft_config(tmp_path / "fp32")
    variant = sft_config(tmp_path / option)
    if option == "bf16":
        variant.train.precision = "bf16"
    else:
        variant.model.gradient_checkpointing = True
    sft.run(reference)
    sft.run(variant)
    la, lb = losses(tmp_path / "fp32"), losses(tmp_path / option)
    tol = 5e-2 if option == "bf16" else 1e-5
    for step in la:
        assert abs(la[step] - lb[step]) <= tol * max(1.0, la[step]), (step, la[step], lb[step])


def test_non_finite_steps_are_skipped_then_abort():
    from posttrain.train.common import NonFiniteGuard
    guard = NonFiniteGuard(limit=3)
    assert guard.ok(torch.tensor(1.0), 2.0)
    assert not guard.ok(torch.tensor(float("nan")), 1.0) and not guard.ok(1.0, float("inf"))
    assert guard.ok(1.0, 1.0) and guard.skipped == 2 and guard.in_a_row == 0
    guard.ok(float("nan"), 1.0), guard.ok(float("nan"), 1.0)
    with pytest.raises(RuntimeError, match="last good checkpoint is intact"):
        guard.ok(float("nan"), 1.0)
