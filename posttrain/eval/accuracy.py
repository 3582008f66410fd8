"""Task accuracy: generate greedily for held-out prompts and score each completion with the task verifier."""

from __future__ import annotations

from posttrain.rollout import HFEngine, SamplingParams, generate_text


def greedy_completions(model, tokenizer, prompts: list[str], *, use_chat_template: bool,
                       max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy decoding of each prompt through the rollout engine."""
    params = SamplingParams(temperature=0, max_new_tokens=max_new_tokens)
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    engine = HFEngine(model, eos, tokenizer.pad_token_id, batch_size=batch_size)
    return [text for _, text in generate_text(engine, tokenizer, prompts, params,
                                              use_chat_template=use_chat_template)]


def greedy_accuracy(model, tokenizer, rows: list[dict], score, *, use_chat_template: bool,
                    max_new_tokens: int = 32, batch_size: int = 64) -> tuple[float, list[dict]]:
    """Mean verifier score over `rows` ({"prompt", "answer", …}); unscorable rows (None) count as wrong.

    Returns (accuracy, samples) where samples hold prompt, completion and score for inspection.
    """
    completions = greedy_completions(model, tokenizer, [r["prompt"] for r in rows],
                                     use_chat_template=use_chat_template, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size)
    samples = []
    for row, completion in zip(rows, completions):
        s = score(row["prompt"], completion, **{k: v for k, v in row.items() if k != "prompt"})
        samples.append({"prompt": row["prompt"], "completion": completion, "score": s})
    accuracy = sum(s["score"] or 0.0 for s in samples) / max(1, len(samples))
    return accuracy, samples
