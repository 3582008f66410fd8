"""`posttrain generate` (a prompt file in, JSONL out) and `posttrain chat` (a terminal conversation).

Both run on the rollout engine (rollout.inference_engine); both load a plain model directory, a LoRA adapter
directory (its base is read from adapter_config.json), a run directory (its final/) or the embedded tiny model
(models.inference.load_for_inference).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from posttrain import tasks
from posttrain.data import Rows, load_rows, normalize
from posttrain.errors import ConfigError
from posttrain.models.inference import load_for_inference
from posttrain.models.loading import base_model_path
from posttrain.rollout import format_prompt, generate_text, inference_engine, use_template
from posttrain.rollout.beam import beam_search


def run_generate(cfg) -> Path:
    params = cfg.validate().sampling
    if cfg.data_path is not None:
        rows = list(normalize(conversation_prompts(load_rows(cfg.data_path)), kind="prompt"))
        score = None
    else:
        task = tasks.from_config(cfg.task)
        rows, score = task.rows("eval", cfg.task.num_eval, cfg.seed), task.score
    rows = rows[:cfg.num_prompts] if cfg.num_prompts else rows
    model, tokenizer, path = load_for_inference(cfg.model)
    template = use_template(tokenizer, cfg.chat_template)
    prompts = [r["prompt"] for r in rows]
    if not template and any(isinstance(p, list) for p in prompts):
        raise ConfigError(f"{cfg.data_path} holds conversations, which need a chat template, and chat_template="
                          f"{cfg.chat_template} gives none — fix: chat_template=on with a tokenizer that has one, or "
                          "plain-text prompts")
    if cfg.beam.num_beams > 1:
        results = beam_records(model, tokenizer, prompts, cfg.beam, params, template)
    else:
        engine = inference_engine(cfg.rollout, model, tokenizer, base_model_path(str(path)))
        results = [{"prompt_index": g.prompt_index, "completion": text, "sample_index": g.sample_index,
                    "finish_reason": g.finish_reason, "num_tokens": len(g.completion_ids), "logprob": sum(g.logprobs)}
                   for g, text in generate_text(engine, tokenizer, prompts, params, use_chat_template=template,
                                                seed=cfg.seed)]
    out, tmp = Path(cfg.output), Path(cfg.output + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    scores = []
    with open(tmp, "w") as f:
        for result in results:
            row = rows[result.pop("prompt_index")]
            record = {"prompt": row["prompt"], **result}
            text = record["completion"]
            if score is not None:
                record["score"] = score(completion=text, **row)
                scores.append(record["score"] or 0.0)
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, out)
    summary = f"; mean score {sum(scores) / len(scores):.3f}" if scores else ""
    print(f"wrote {len(results)} completions for {len(rows)} prompts to {out}{summary}")
    return out


def conversation_prompts(rows):
    """A `messages` row becomes the prompt of its conversation: the model writes the next assistant turn (chat
    template, generation prompt appended), so a last message that is the assistant's — a reference reply — is
    dropped. Other rows are unchanged; normalize(kind="prompt") validates them all."""
    out = []
    for i, row in enumerate(rows):
        messages = row.get("messages")
        if "prompt" not in row and isinstance(messages, list):
            if messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
                messages = messages[:-1]
            if not messages:
                raise rows.error(i, "the conversation has only an assistant message: nothing to reply to",
                                 field="messages", fix="add the user's message before it, or remove the row")
            row = {**{k: v for k, v in row.items() if k != "messages"}, "prompt": messages}
        out.append(row)
    return Rows(out, rows.source, list(rows.row_numbers))


def run_chat(cfg, stdin=None, stdout=None) -> list[dict]:
    """A read–generate–print loop. Returns the conversation (for tests)."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    params = cfg.validate().sampling
    model, tokenizer, path = load_for_inference(cfg.model)
    engine = inference_engine(cfg.rollout, model, tokenizer, base_model_path(str(path)))
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
        (generation, text), = generate_text(engine, tokenizer, [prompt], replace(params, n=1),
                                            use_chat_template=template, seed=cfg.seed, step=turn)
        messages.append({"role": "assistant", "content": text})
        stdout.write(f"model> {text}\n")
        stdout.flush()
        turn += 1


def beam_records(model, tokenizer, prompts: list, beam, params, use_chat_template: bool) -> list[dict]:
    """Beam search per prompt: the num_return_sequences best hypotheses of each, best first (sample_index 0, 1,
    …), with their summed log-prob and beam score (logprob / length ** length_penalty)."""
    early = {"true": True, "false": False, "never": "never"}[beam.early_stopping]
    eos = sorted({tokenizer.eos_token_id, *params.stop_token_ids} - {None})
    records = []
    for i, prompt in enumerate(prompts):
        hypotheses = beam_search(model, format_prompt(tokenizer, prompt, use_chat_template), num_beams=beam.num_beams,
                                 max_new_tokens=params.max_new_tokens, eos_token_id=eos,
                                 length_penalty=beam.length_penalty, early_stopping=early,
                                 num_return_sequences=beam.num_return_sequences)
        for k, h in enumerate(hypotheses):
            records.append({"prompt_index": i, "completion": tokenizer.decode(h.ids, skip_special_tokens=True),
                            "sample_index": k, "finish_reason": "stop" if h.ids and h.ids[-1] in eos else "length",
                            "num_tokens": len(h.ids), "logprob": h.logprob, "beam_score": h.score})
    return records
