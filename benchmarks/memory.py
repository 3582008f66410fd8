#!/usr/bin/env python
"""Peak memory of one GRPO update and one SFT step: posttrain with and without the chunked output layer, and TRL.

    python benchmarks/memory.py                        # the SmolLM2-135M shape, random weights
    python benchmarks/memory.py --model DIR            # a real model directory (e.g. the converted SmolLM2)
    python benchmarks/memory.py --quick                # 2 layers, short sequences: checks that every row runs
    python benchmarks/memory.py --rows ours-grpo,ours-grpo-full

What is measured. Each row runs in a fresh Python process (so one row's peak cannot hide in another's), builds the
model and its inputs, and then does ONE forward and backward — no optimizer step (its state is the same for every
row, 2 × the trainable parameters for AdamW). The process reports:

    before    resident memory (RSS, /proc/self/statm) once the model, the inputs and the trainer are built
    peak      resource.getrusage(RUSAGE_SELF).ru_maxrss after the step: the largest RSS the process ever had
    step      peak − before: what the step added at its peak (model weights, gradients, activations, logits …).
              Where Linux allows it (writing 5 to /proc/self/clear_refs) the peak is reset just before the step
              and read from VmHWM, so a higher peak while building the model cannot mask the step's own
    cuda      with --device cuda: torch.cuda.max_memory_allocated during the step (reset before it)

Rows (--rows; default all that can run):

    ours-grpo       posttrain.train.rl.policy_micro_step — the RL loop's own update code, preset grpo (PPO-clip, ε
                    0.2, seq_mean_token_mean, no KL): --sequences samples of --prompt-len prompt + --completion-len
                    completion tokens in one micro-batch, log-probs and entropy (entropy_coef 0.01, so the entropy
                    carries a gradient), advantages ±1, π_old = the current log-probs; train.logits_chunk default
    ours-grpo-full  the same with train.logits_chunk=0: the full logits [rows, completion positions, V]
    trl-grpo        trl.GRPOTrainer._compute_loss on the same ids (prompt and completion masks all ones, the same
                    advantages, loss_type grpo, β 0) + backward: TRL's fused LM head (log-probs and entropy)
    ours-sft        posttrain.train.sft.accumulate_gradients on one micro-batch of --sft-rows examples of lengths
                    spread evenly up to --sft-max-len (the first third prompt, the rest completion: the loss), packed
                    (data.packing default), train.logits_chunk default
    ours-sft-full   the same with train.logits_chunk=0
    trl-sft         trl.SFTTrainer.training_step on the same examples (input_ids + completion_mask with
                    completion_only_loss, the trainer's own collator: padded to the longest), TRL's defaults
                    otherwise (its fused LM head for the loss)

The model is the SmolLM2-135M-Instruct architecture (LlamaForCausalLM: hidden 576, 30 layers, 9 heads, 3 KV heads,
MLP 1536, vocabulary 49,152, tied embeddings) with random weights — the same memory behaviour as the real one — in
fp32 (--precision bf16: autocast, fp32 weights); --model DIR loads a real one instead. Token ids are random.
--quick: 2 layers, 4 sequences of 32 + 32 tokens, 4 SFT rows up to 96 tokens; the vocabulary stays full.

The allocator. glibc serves a large allocation from mmap (returned to the system when freed) only above a threshold
that it raises, up to 32 MiB, each time such a block is freed; below it, freed tensors stay in the heap, counted in
RSS, and how much stays depends on the order of allocations — a 2-layer run was seen to differ by ±90 MB between
two rows whose live tensors peak equally. Each row's process therefore runs with MALLOC_MMAP_THRESHOLD_=65536
(fixed: every tensor above 64 KiB is mmapped and given back when freed), so RSS follows the live tensors;
--glibc-default measures with glibc's defaults instead. Run it on a quiet machine. TRL rows are skipped when trl is
not installed.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = ["ours-grpo", "ours-grpo-full", "trl-grpo", "ours-sft", "ours-sft-full", "trl-sft"]
SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
               rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu", bos_token_id=1, eos_token_id=2,
               pad_token_id=2, rope_parameters={"rope_type": "default", "rope_theta": 100000.0})


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a Hugging Face model directory (default: the SmolLM2-135M shape, random weights)")
    p.add_argument("--quick", action="store_true", help="2 layers and short sequences: a smoke run")
    p.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated rows (default all: {','.join(ROWS)})")
    p.add_argument("--sequences", type=int, default=16, help="GRPO: samples in the update")
    p.add_argument("--prompt-len", type=int, default=128, help="GRPO: prompt tokens per sample")
    p.add_argument("--completion-len", type=int, default=128, help="GRPO: completion tokens per sample")
    p.add_argument("--sft-rows", type=int, default=16, help="SFT: examples in the step")
    p.add_argument("--sft-max-len", type=int, default=512, help="SFT: the longest example (lengths spread up to it)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--glibc-default", action="store_true",
                   help="keep glibc's dynamic mmap threshold (default: a fixed 64 KiB one; see the docstring)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.sequences, args.prompt_len, args.completion_len = 4, 32, 32
        args.sft_rows, args.sft_max_len = 4, 96
    unknown = set(args.rows.split(",")) - set(ROWS)
    if unknown:
        p.error(f"unknown rows {', '.join(sorted(unknown))} — valid: {', '.join(ROWS)}")
    return args


# ---------------------------------------------------------------------------------------------------------------------
# Memory readings
# ---------------------------------------------------------------------------------------------------------------------

def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak() -> bool:
    """Give freed memory back to the system and reset the kernel's peak RSS (VmHWM) where Linux allows it."""
    import gc
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def hwm_mb() -> float | None:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Model and inputs (the same in every row)
# ---------------------------------------------------------------------------------------------------------------------

def build_model(args):
    import torch
    import transformers
    if args.model:
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32,
                                                                  attn_implementation="sdpa")
    else:
        config = transformers.LlamaConfig(**{**SMOLLM2, "num_hidden_layers": 2 if args.quick else 30})
        config._attn_implementation = "sdpa"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = transformers.LlamaForCausalLM(config)
    return model.to(args.device).train()


def tokenizer_for(args):
    """A tokenizer for the TRL trainers' constructors (they only use its special tokens here: ids are given)."""
    import transformers
    if args.model:
        return transformers.AutoTokenizer.from_pretrained(args.model)
    from posttrain.models.tiny import build_tokenizer
    return build_tokenizer()


def grpo_ids(args, vocab: int):
    import torch
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(3, vocab, (args.sequences, args.prompt_len), generator=g)
    completions = torch.randint(3, vocab, (args.sequences, args.completion_len), generator=g)
    advantages = torch.tensor([1.0, -1.0] * (args.sequences // 2) + [1.0] * (args.sequences % 2))
    return prompts, completions, advantages


def sft_examples(args, vocab: int) -> list[dict]:
    """--sft-rows examples, lengths spread evenly from a quarter of --sft-max-len up to it; first third prompt."""
    import torch
    g = torch.Generator().manual_seed(2)
    low = max(4, args.sft_max_len // 4)
    lengths = [low + (args.sft_max_len - low) * i // max(1, args.sft_rows - 1) for i in range(args.sft_rows)]
    examples = []
    for n in lengths:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        examples.append({"input_ids": ids, "prompt_len": n // 3})
    return examples


# ---------------------------------------------------------------------------------------------------------------------
# The rows: each returns a function that runs one forward + backward
# ---------------------------------------------------------------------------------------------------------------------

def ours_grpo(args, model, chunk: int | None):
    from types import SimpleNamespace

    import torch
    from posttrain import presets
    from posttrain.config import RLConfig
    from posttrain.algos import policy as policy_losses
    from posttrain.train import rl, rl_diagnostics
    from posttrain.train.plan import loss_arguments

    cfg = RLConfig()
    cfg.algo.name, cfg.algo.entropy_coef, cfg.kl.coef = "grpo", 0.01, 0.0
    cfg.train.precision = args.precision
    if chunk is not None:
        cfg.train.logits_chunk = chunk
    cfg = presets.expand(cfg)
    prompts, completions, advantages = grpo_ids(args, model.config.vocab_size)
    b, width = args.sequences, args.completion_len
    mask = torch.ones(b, width)
    with torch.no_grad():
        old, _ = rl.forward_tokens(model, prompts.tolist(), completions.tolist(), width, cfg)
    batch = SimpleNamespace(prompt_ids=prompts.tolist(), completion_ids=completions.tolist(), width=width,
                            loss_mask=mask, old_logps=old.cpu(), advantages=advantages[:, None] * mask, ref_logps=None)
    norm = {"num_tokens": float(mask.sum()), "num_seqs": b, "max_len": width}
    loss_fn, kwargs = policy_losses.get(cfg.algo.policy_loss), loss_arguments(cfg.algo)

    def step():
        rl.policy_micro_step(cfg, model, batch, list(range(b)), norm, loss_fn, kwargs, rl_diagnostics.UpdateTotals(),
                             1, 0.0, first=True)
    return step


def ours_sft(args, model, chunk: int | None):
    from posttrain.algos.logprobs import LOGITS_CHUNK
    from posttrain.data import collate
    from posttrain.train import sft

    examples = [{"input_ids": e["input_ids"], "labels": [-100] * e["prompt_len"] + e["input_ids"][e["prompt_len"]:]}
                for e in sft_examples(args, model.config.vocab_size)]
    micro = collate(examples, pad_id=0, packing=True)
    return lambda: sft.accumulate_gradients(model, [micro], args.precision, LOGITS_CHUNK if chunk is None else chunk)


def trl_grpo(args, model, out_dir: Path):
    import datasets
    import torch
    import trl

    config = trl.GRPOConfig(output_dir=str(out_dir), per_device_train_batch_size=args.sequences,
                            num_generations=args.sequences, max_completion_length=args.completion_len, beta=0.0,
                            loss_type="grpo", epsilon=0.2, report_to=[], use_cpu=args.device == "cpu",
                            bf16=args.precision == "bf16", logging_steps=1, disable_dropout=True)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                              args=config, train_dataset=datasets.Dataset.from_list([{"prompt": "x"}] * args.sequences),
                              processing_class=tokenizer_for(args))
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's training loop sets: one micro-batch per step
    prompts, completions, advantages = grpo_ids(args, model.config.vocab_size)
    device = next(model.parameters()).device
    inputs = {"prompt_ids": prompts.to(device), "prompt_mask": torch.ones_like(prompts).to(device),
              "completion_ids": completions.to(device), "completion_mask": torch.ones_like(completions).to(device),
              "advantages": advantages.to(device), "num_items_in_batch": torch.tensor(float(completions.numel()))}

    def step():
        trainer.model.train()
        trainer._compute_loss(trainer.model, inputs).backward()
    return step


def trl_sft(args, model, out_dir: Path):
    import datasets
    import trl

    rows = [{"input_ids": e["input_ids"],
             "completion_mask": [0] * e["prompt_len"] + [1] * (len(e["input_ids"]) - e["prompt_len"])}
            for e in sft_examples(args, model.config.vocab_size)]
    config = trl.SFTConfig(output_dir=str(out_dir), per_device_train_batch_size=args.sft_rows, max_length=None,
                           completion_only_loss=True, report_to=[], use_cpu=args.device == "cpu",
                           bf16=args.precision == "bf16", dataset_num_proc=None)
    trainer = trl.SFTTrainer(model=model, args=config, train_dataset=datasets.Dataset.from_list(rows),
                             processing_class=tokenizer_for(args))
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's training loop sets: one micro-batch per step
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(args.sft_rows)])
    trained = sum(sum(row["completion_mask"]) for row in rows)
    if int((batch["labels"] != -100).sum()) != trained:  # the same loss tokens as ours-sft, or the rows differ
        raise SystemExit(f"trl-sft: {int((batch['labels'] != -100).sum())} loss tokens, expected {trained}")
    return lambda: trainer.training_step(trainer.model, batch, int((batch["labels"] != -100).sum()))


def child(args) -> dict:
    """One row in this process: build, reset the peak, one forward + backward, read the peak."""
    import tempfile

    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.child
    model = build_model(args)
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as tmp:
        if name.startswith("trl-"):
            step = (trl_grpo if name == "trl-grpo" else trl_sft)(args, model, Path(tmp))
        else:
            build = ours_grpo if "grpo" in name else ours_sft
            step = build(args, model, 0 if name.endswith("-full") else None)
        cuda = args.device.startswith("cuda")
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        reset = reset_peak()
        before = rss_mb()
        step()
        if cuda:
            torch.cuda.synchronize()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        hwm = hwm_mb() if reset else None
        grads = sum(p.grad is not None for p in model.parameters())
    return {"row": name, "before": before, "peak": peak, "step": (hwm if hwm is not None else peak) - before,
            "reset": reset, "cuda": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "grads": grads}


def run_row(args, name: str, argv: list[str]) -> dict | str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "TQDM_DISABLE": "1"}
    if not args.glibc_default:
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    proc = subprocess.run([sys.executable, __file__, *argv, "--child", name], capture_output=True, text=True,
                          env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return f"failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1] if proc.stderr else ''}"
    return json.loads(lines[-1])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child:
        import warnings
        warnings.simplefilter("ignore")
        print(json.dumps(child(args)), flush=True)
        return 0
    try:
        import trl  # noqa: F401
        has_trl = True
    except ImportError:
        has_trl = False
    model = args.model or ("SmolLM2-135M shape, random weights" + (", 2 layers (--quick)" if args.quick else ""))
    print(f"model: {model}; {args.precision} on {args.device}; GRPO {args.sequences} × ({args.prompt_len} + "
          f"{args.completion_len}) tokens; SFT {args.sft_rows} rows up to {args.sft_max_len} tokens")
    print(f"{'row':<16} {'before MB':>10} {'peak MB':>10} {'step MB':>10}" + (" cuda MB" if args.device != "cpu"
                                                                              else ""))
    results = {}
    for name in args.rows.split(","):
        if name.startswith("trl-") and not has_trl:
            print(f"{name:<16} skipped: trl is not installed")
            continue
        out = run_row(args, name, argv)
        if isinstance(out, str):
            print(f"{name:<16} {out}")
            continue
        results[name] = out
        cuda = f" {out['cuda']:>7.0f}" if out["cuda"] is not None else ""
        print(f"{name:<16} {out['before']:>10.0f} {out['peak']:>10.0f} {out['step']:>10.0f}{cuda}", flush=True)
    for ours, full in (("ours-grpo", "ours-grpo-full"), ("ours-sft", "ours-sft-full")):
        if ours in results and full in results:
            saved = results[full]["step"] - results[ours]["step"]
            print(f"{ours}: the chunked output layer saves {saved:.0f} MB of the step's peak "
                  f"({results[full]['step']:.0f} → {results[ours]['step']:.0f} MB)")
    if any(not r["reset"] for r in results.values()):
        print("note: the peak RSS could not be reset before the step (no /proc/self/clear_refs): 'step' is "
              "ru_maxrss − before, which includes any higher peak while building")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
