"""Text in, text out: chat-template formatting, stop strings and decoding around the token-level engine.

Stop strings are handled here and nowhere else. The engine sees only token ids, so a stop string reaches it as a
check on the ids (`stop_check`: decode the tail, look for the strings); a sample it ends that way has finish
reason "stop_sequence", and its text is cut before the first stop string (`cut_at_stop`, `completion_text`).
vLLM takes the strings itself and reports the same finish reason.
"""

from __future__ import annotations

from typing import Callable

from posttrain.errors import ConfigError
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


def use_template(tokenizer, choice: str) -> bool:
    """Whether prompts go through the chat template, for a chat_template setting of "auto" (when the tokenizer has
    one), "on" (refused when it has none) or "off"."""
    if choice == "on" and tokenizer.chat_template is None:
        raise ConfigError("chat_template=on but this tokenizer has no chat template — use auto or off")
    return choice == "on" or (choice == "auto" and tokenizer.chat_template is not None)


def stop_check(tokenizer, stop_strings: list[str], window: int = 32) -> Callable[[list[int]], bool] | None:
    """The engine's `stop_sequence` for stop strings: completion ids → True once the decoded last `window` tokens
    contain one of them (a stop string is short, so the tail is enough and decoding stays cheap). None when there
    are no stop strings, so the engine skips the per-row check."""
    stops = list(stop_strings)
    if not stops:
        return None

    def stop_sequence(completion_ids: list[int]) -> bool:
        tail = tokenizer.decode(completion_ids[-window:], skip_special_tokens=True)
        return any(s in tail for s in stops)

    return stop_sequence


def cut_at_stop(text: str, stop_strings: list[str]) -> str:
    """`text` up to the first of the stop strings in it (unchanged when none is there).

    Example: cut_at_stop("12\\nanswer: 3\\n\\nnext", ["\\n\\n"]) → "12\\nanswer: 3".
    """
    found = [text.find(s) for s in stop_strings if s in text]
    return text[:min(found)] if found else text


def completion_text(tokenizer, generation: Generation, stop_strings: list[str]) -> str:
    """A generation's text: decoded without special tokens, cut before the stop string that ended it."""
    text = tokenizer.decode(generation.completion_ids, skip_special_tokens=True)
    return cut_at_stop(text, stop_strings) if generation.finish_reason == "stop_sequence" else text


def generate_text(engine: Engine, tokenizer, prompts: list, params: SamplingParams, *, use_chat_template: bool,
                  seed: int = 0, step: int = 0) -> list[tuple[Generation, str]]:
    """Generate for text prompts with `engine` (backends.py); returns (generation, decoded completion) pairs,
    prompt-major.

    Stop strings end a sample as soon as its decoded text contains one; the text is cut before it.
    """
    ids = [format_prompt(tokenizer, p, use_chat_template) for p in prompts]
    generations = engine.generate(ids, params, seed=seed, step=step,
                                  stop_sequence=stop_check(tokenizer, params.stop_strings))
    return [(g, completion_text(tokenizer, g, params.stop_strings)) for g in generations]
