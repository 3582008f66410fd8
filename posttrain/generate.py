"""`posttrain generate` (a prompt file in, JSONL out) and `posttrain chat` (a terminal conversation).

Both run on the rollout engine; both load a plain model directory, a LoRA adapter directory (its base is read
from adapter_config.json), a run directory (its final/) or the embedded tiny model.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from posttrain import tasks
from posttrain.errors import ConfigError, UserError
from posttrain.rollout import generate_text


def load_for_inference(name_or_path: str):
    """(model in eval mode, tokenizer) from 'tiny', a model dir, an adapter dir or a run dir."""
    import torch
    from transformers import AutoModelForCausalLM
    from posttrain.export import find_model_dir
    from posttrain.models.loading import load_tokenizer, resolve_model_path

    path = Path(resolve_model_path(name_or_path))
    if not path.exists():
        raise UserError(f"model '{name_or_path}' not found — fix: pass a model, adapter or run directory, or 'tiny'")
    path = find_model_dir(path)
    adapter = path / "adapter_config.json"
    base = json.loads(adapter.read_text())["base_model_name_or_path"] if adapter.is_file() else str(path)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter.is_file():
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(path))
    tokenizer = load_tokenizer(str(path) if (path / "tokenizer_config.json").is_file() else base)
    return model.eval(), tokenizer


def use_template(tokenizer, choice: str) -> bool:
    if choice == "on" and tokenizer.chat_template is None:
        raise ConfigError("chat_template=on but this tokenizer has no chat template — use auto or off")
    return choice == "on" or (choice == "auto" and tokenizer.chat_template is not None)


def run_generate(cfg) -> Path:
    from posttrain.data import load_rows, normalize

    params = cfg.sampling.validate()
    if cfg.data_path is not None:
        rows = list(normalize(load_rows(cfg.data_path), kind="prompt"))
        score = None
    else:
        task = tasks.get(cfg.task.name, max_digits=cfg.task.max_digits, ops=cfg.task.ops, steps=cfg.task.steps)
        rows, score = task.rows("eval", cfg.task.num_eval, cfg.seed), task.score
    rows = rows[:cfg.num_prompts] if cfg.num_prompts else rows
    model, tokenizer = load_for_inference(cfg.model)
    results = generate_text(model, tokenizer, [r["prompt"] for r in rows], params,
                            use_chat_template=use_template(tokenizer, cfg.chat_template), seed=cfg.seed,
                            batch_size=cfg.batch_size)
    out, tmp = Path(cfg.output), Path(cfg.output + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    scores = []
    with open(tmp, "w") as f:
        for generation, text in results:
            row = rows[generation.prompt_index]
            record = {"prompt": row["prompt"], "completion": text, "sample_index": generation.sample_index,
                      "finish_reason": generation.finish_reason, "num_tokens": len(generation.completion_ids),
                      "logprob": sum(generation.logprobs)}
            if score is not None:
                record["score"] = score(completion=text, **row)
                scores.append(record["score"] or 0.0)
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    summary = f"; mean score {sum(scores) / len(scores):.3f}" if scores else ""
    print(f"wrote {len(results)} completions for {len(rows)} prompts to {out}{summary}")
    return out


def run_chat(cfg, stdin=None, stdout=None) -> list[dict]:
    """A read–generate–print loop. Returns the conversation (for tests)."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    params = cfg.sampling.validate()
    model, tokenizer = load_for_inference(cfg.model)
    template = tokenizer.chat_template is not None
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    messages = list(system)
    interactive = stdin.isatty()
    turn = 0
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        line = stdin.readline()
        if not line or line.strip() == "/exit":
            return messages
        if line.strip() == "/reset":
            messages = list(system)
            continue
        messages.append({"role": "user", "content": line.rstrip("\n")})
        prompt = messages if template else "".join(m["content"] + "\n" for m in messages if m["role"] == "user")
        (generation, text), = generate_text(model, tokenizer, [prompt], replace(params, n=1),
                                            use_chat_template=template, seed=cfg.seed, step=turn)
        messages.append({"role": "assistant", "content": text})
        stdout.write(f"model> {text}\n")
        stdout.flush()
        turn += 1
