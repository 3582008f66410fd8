"""Preference data: paired rows (prompt, chosen, rejected [, margin]) and unpaired rows (prompt, completion,
label) tokenized into SFT-style examples, one per response, so the same collate/packing serves every loss.

    pairs, report = build_preference_pairs(rows, tokenizer, max_length=512, policy="drop")
    pairs[0] == {"chosen": {"input_ids", "labels"}, "rejected": {"input_ids", "labels"}, "margin": 0.0}
    items, report = build_unpaired_examples(rows, tokenizer, max_length=512, policy="drop")   # KTO
    items[0] == {"completion": {...}, "mismatched": {...}, "desirable": True}

A response's labels mark its completion tokens (the prompt is -100), exactly as SFT would train on it, so
Σ log π over the labelled tokens is log π(response | prompt).

Bad rows follow `policy` (data.truncation): "error" stops at the first one with file, row, field and the fix;
"drop" and "truncate" skip it and count it under its reason:

    missing_field        no prompt / chosen / rejected (unpaired: completion / label)
    invalid_field        a field of the wrong type, or an empty response
    identical_responses  chosen == rejected: the pair carries no preference
    too_long             prompt + response longer than max_length ("drop"; "truncate" cuts the response)
    no_response_tokens   nothing of a response is left after truncation (the prompt alone fills max_length)
"""

from __future__ import annotations

import math

from posttrain.data.formats import _normalize_row
from posttrain.data.loading import Rows
from posttrain.data.tokenize import IGNORE_INDEX, DropReport, SkipRow, handle_bad_row, start_rows, tokenize_sft
from posttrain.errors import DataError


def build_preference_pairs(rows: Rows | list[dict], tokenizer, *, max_length: int, policy: str = "error",
                           use_chat_template: bool | None = None) -> tuple[list[dict], DropReport]:
    """Tokenize paired preference rows → ([{"chosen", "rejected", "margin"}], DropReport), in row order.

    margin: the row's optional numeric `margin` column (how much better chosen is; used by the reward model's
    margin loss), else 0.0.
    """
    rows, report = start_rows(rows, policy, max_length)
    pairs = []
    for i, raw in enumerate(rows):
        try:
            row = _normalize_row(raw, "preference")
            if row["chosen"] == row["rejected"]:
                raise SkipRow("identical_responses", "chosen and rejected are the same response",
                              "chosen", "remove the row: a pair with no preference teaches nothing")
            margin = raw.get("margin", 0.0)
            if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin):
                raise DataError(f"margin must be a finite number, got {margin!r}", field="margin",
                                fix="store margin as a finite number, or drop the column")
            pair = {name: _example(row["prompt"], row[name], name, tokenizer, max_length, policy, use_chat_template)
                    for name in ("chosen", "rejected")}
        except (DataError, SkipRow) as e:
            handle_bad_row(rows, i, e, policy, report)
            continue
        pairs.append({**pair, "margin": float(margin)})
    if not pairs:
        raise DataError(f"no usable preference pair: {report.summary()}", file=rows.source,
                        fix="check the data (fields prompt, chosen, rejected) or data.max_length")
    return pairs, report


def build_unpaired_examples(rows: Rows | list[dict], tokenizer, *, max_length: int, policy: str = "error",
                            use_chat_template: bool | None = None) -> tuple[list[dict], DropReport]:
    """Tokenize rows for KTO → ([{"completion", "mismatched", "desirable"}], DropReport), in row order.

    Unpaired rows (prompt, completion, label) give one item each; paired rows (prompt, chosen, rejected) give
    two — chosen desirable, rejected undesirable — which is how KTO is usually run on preference data (the two
    kinds may be mixed in one file).

    "mismatched" is this item's prompt followed by ANOTHER item's completion (the next item, cyclically, with a
    different prompt of the same kind): KTO's reference point z0 = KL(π‖π_ref) is estimated on such pairs, so
    the estimate does not reward the item's own completion. Fixing the partner here, once, lets the reference
    log-probs of the mismatched examples be precomputed like every other. A mismatched example longer than
    max_length is cut (it only feeds a KL estimate); it keeps at least one completion token, since the prompt
    fitted with its own completion.
    """
    rows, report = start_rows(rows, policy, max_length)
    items, sources = [], []  # sources[k]: (prompt, response text) of items[k], for the mismatched partners
    for i, raw in enumerate(rows):
        try:
            paired = {"chosen", "rejected"} <= set(raw)
            row = _normalize_row(raw, "preference" if paired else "unpaired")
            responses = [("chosen", True), ("rejected", False)] if paired else [("completion", row["label"])]
            built = [(name, _example(row["prompt"], row[name], name, tokenizer, max_length, policy,
                                     use_chat_template), good) for name, good in responses]
        except (DataError, SkipRow) as e:
            handle_bad_row(rows, i, e, policy, report)
            continue
        items += [{"completion": example, "desirable": bool(good)} for _, example, good in built]
        sources += [(row["prompt"], row[name]) for name, _, _ in built]
    if not items:
        raise DataError(f"no usable example: {report.summary()}", file=rows.source,
                        fix="check the data (fields prompt, completion, label — or prompt, chosen, rejected) "
                        "or data.max_length")
    prompts = [prompt for prompt, _ in sources]
    for i, item in enumerate(items):
        partner_response = sources[_mismatch_partner(prompts, i)][1]
        example = response_example(prompts[i], partner_response, tokenizer, use_chat_template=use_chat_template)
        item["mismatched"] = {key: ids[:max_length] for key, ids in example.items()}
    return items, report


def _mismatch_partner(prompts: list, i: int, search: int = 64) -> int:
    """The next item (cyclically, within `search` items) whose prompt differs from item i's and has the same kind
    (text or messages); failing that the next of the same kind (every prompt is the same), else i itself."""
    prompt = prompts[i]
    same_kind = [j for j in ((i + offset) % len(prompts) for offset in range(1, min(search, len(prompts))))
                 if isinstance(prompts[j], str) == isinstance(prompt, str)]
    different = [j for j in same_kind if prompts[j] != prompt]
    return (different or same_kind or [i])[0]


def verified_pairs(rows: list[dict], samples: list[list[dict]], max_pairs_per_prompt: int = 2) -> list[dict]:
    """Preference rows from scored samples: chosen = a completion the verifier scored 1, rejected = one it scored
    below 1, for the same prompt → [{"prompt", "chosen", "rejected"}].

    rows[i]["prompt"] was sampled into samples[i] = [{"completion", "score"}, …] (eval.accuracy.sampled_completions).
    Duplicate texts count once; unscorable samples (score None) are left out; a prompt whose samples are all right
    or all wrong gives no pair. Up to `max_pairs_per_prompt` pairs per prompt: the k-th distinct correct
    completion with the k-th distinct wrong one.

    Example: samples "a" (1.0), "b" (0.0), "a" (1.0), "c" (0.0) → pairs (a, b) and, with max 2, nothing more
    (only one distinct correct text).
    """
    out = []
    for row, scored in zip(rows, samples):
        right = list(dict.fromkeys(s["completion"] for s in scored if s["score"] is not None and s["score"] >= 1))
        wrong = list(dict.fromkeys(s["completion"] for s in scored if s["score"] is not None and s["score"] < 1))
        out += [{"prompt": row["prompt"], "chosen": c, "rejected": r}
                for c, r in list(zip(right, wrong))[:max_pairs_per_prompt]]
    return out


def response_example(prompt, response, tokenizer, *, use_chat_template: bool | None = None) -> dict:
    """{"input_ids", "labels"} for prompt + response with only the response's tokens labelled."""
    return tokenize_sft({"prompt": prompt, "completion": response}, tokenizer, use_chat_template=use_chat_template)


# ---------------------------------------------------------------------------------------------------------------------

def _example(prompt, response, name: str, tokenizer, max_length: int, policy: str, use_chat_template) -> dict:
    example = response_example(prompt, response, tokenizer, use_chat_template=use_chat_template)
    if len(example["input_ids"]) > max_length:
        if policy != "truncate":
            raise SkipRow("too_long", f"{name}: {len(example['input_ids'])} tokens is longer than "
                          f"data.max_length={max_length}", name, "raise data.max_length, or set data.truncation "
                          "to drop or truncate")
        example = {key: ids[:max_length] for key, ids in example.items()}
    if all(label == IGNORE_INDEX for label in example["labels"]):
        raise SkipRow("no_response_tokens", f"{name}: no response token left within data.max_length={max_length}",
                      name, "raise data.max_length or shorten the prompt")
    return example
