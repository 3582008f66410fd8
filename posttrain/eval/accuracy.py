"""Task accuracy: generate greedily for held-out prompts and score each completion with the task verifier."""

from __future__ import annotations

import torch


def format_prompt(tokenizer, prompt: str, use_chat_template: bool) -> list[int]:
    """Token ids the model continues from: the chat template with a generation prompt, or bos + raw text."""
    if use_chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return bos + tokenizer(prompt, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def greedy_completions(model, tokenizer, prompts: list[str], *, use_chat_template: bool,
                       max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy decoding of each prompt (left-padded batches through `model.generate`)."""
    device = next(model.parameters()).device
    completions = []
    for start in range(0, len(prompts), batch_size):
        ids = [format_prompt(tokenizer, p, use_chat_template) for p in prompts[start:start + batch_size]]
        width = max(map(len, ids))
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in ids], device=device)
        attention_mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                             max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        completions += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return completions


def greedy_accuracy(model, tokenizer, rows: list[dict], score, *, use_chat_template: bool,
                    max_new_tokens: int = 32, batch_size: int = 64) -> tuple[float, list[dict]]:
    """Mean verifier score over `rows` ({"prompt", "answer", …}); unscorable rows (None) count as wrong.

    Returns (accuracy, samples) where samples hold prompt, completion and score for inspection.
    """
    was_training = model.training
    model.eval()
    completions = greedy_completions(model, tokenizer, [r["prompt"] for r in rows],
                                     use_chat_template=use_chat_template, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size)
    model.train(was_training)
    samples = []
    for row, completion in zip(rows, completions):
        s = score(row["prompt"], completion, **{k: v for k, v in row.items() if k != "prompt"})
        samples.append({"prompt": row["prompt"], "completion": completion, "score": s})
    accuracy = sum(s["score"] or 0.0 for s in samples) / max(1, len(samples))
    return accuracy, samples
