"""Text in, text out: chat-template formatting, stop strings and decoding around the token-level engine."""

from __future__ import annotations

from posttrain.rollout.backends import Engine
from posttrain.rollout.engine import Generation
from posttrain.rollout.samplers import SamplingParams


def format_prompt(tokenizer, prompt: str | list[dict], use_chat_template: bool) -> list[int]:
    """Token ids the model continues from: the chat template with a generation prompt (a string becomes one
    user turn), or bos + the raw text."""
    if use_chat_template:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def generate_text(engine: Engine, tokenizer, prompts: list, params: SamplingParams, *, use_chat_template: bool,
                  seed: int = 0, step: int = 0) -> list[tuple[Generation, str]]:
    """Generate for text prompts with `engine` (backends.py); returns (generation, decoded completion) pairs,
    prompt-major.

    Stop strings end a sample as soon as its decoded text contains one; the text is cut before it.
    """
    ids = [format_prompt(tokenizer, p, use_chat_template) for p in prompts]
    stop_strings = list(params.stop_strings)

    def stop_sequence(completion_ids: list[int]) -> bool:
        tail = tokenizer.decode(completion_ids[-32:], skip_special_tokens=True)  # a stop string is short
        return any(s in tail for s in stop_strings)

    generations = engine.generate(ids, params, seed=seed, step=step,
                                  stop_sequence=stop_sequence if stop_strings else None)
    out = []
    for g in generations:
        text = tokenizer.decode(g.completion_ids, skip_special_tokens=True)
        if g.finish_reason == "stop_sequence":
            found = [text.find(s) for s in stop_strings if s in text]
            text = text[:min(found)] if found else text
        out.append((g, text))
    return out
