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

from posttrain.data.formats import _normalize_row
from posttrain.data.loading import Rows, load_rows
from posttrain.data.tokenize import IGNORE_INDEX, TRUNCATION_POLICIES, DropReport, tokenize_sft
from posttrain.errors import ConfigError, DataError


def build_preference_pairs(rows: Rows | list[dict], tokenizer, *, max_length: int, policy: str = "error",
                           use_chat_template: bool | None = None) -> tuple[list[dict], DropReport]:
    """Tokenize paired preference rows → ([{"chosen", "rejected", "margin"}], DropReport), in row order.

    margin: the row's optional numeric `margin` column (how much better chosen is; used by the reward model's
    margin loss), else 0.0.
    """
    rows, report = _check(rows, policy, max_length)
    pairs = []
    for i, raw in enumerate(rows):
        try:
            row = _normalize_row(raw, "preference")
            if row["chosen"] == row["rejected"]:
                raise _Skip("identical_responses", "chosen and rejected are the same response",
                            "chosen", "remove the row: a pair with no preference teaches nothing")
            margin = raw.get("margin", 0.0)
            if isinstance(margin, bool) or not isinstance(margin, (int, float)):
                raise DataError(f"margin must be a number, got {margin!r}", field="margin",
                                fix="store margin as a number, or drop the column")
            pair = {name: _example(row["prompt"], row[name], name, tokenizer, max_length, policy, use_chat_template)
                    for name in ("chosen", "rejected")}
        except (DataError, _Skip) as e:
            _handle(rows, i, e, policy, report)
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
    rows, report = _check(rows, policy, max_length)
    items = []
    for i, raw in enumerate(rows):
        try:
            paired = {"chosen", "rejected"} <= set(raw)
            row = _normalize_row(raw, "preference" if paired else "unpaired")
            responses = ([("chosen", True), ("rejected", False)] if paired
                         else [("completion", row["label"])])
            built = [(row[name], _example(row["prompt"], row[name], name, tokenizer, max_length, policy,
                                          use_chat_template), good) for name, good in responses]
        except (DataError, _Skip) as e:
            _handle(rows, i, e, policy, report)
            continue
        items += [{"prompt": row["prompt"], "response": text, "completion": example, "desirable": bool(good)}
                  for text, example, good in built]
    if not items:
        raise DataError(f"no usable example: {report.summary()}", file=rows.source,
                        fix="check the data (fields prompt, completion, label — or prompt, chosen, rejected) "
                        "or data.max_length")
    for i, item in enumerate(items):
        partner = items[_mismatch_partner(items, i)]
        example = response_example(item["prompt"], partner["response"], tokenizer,
                                   use_chat_template=use_chat_template)
        item["mismatched"] = {key: ids[:max_length] for key, ids in example.items()}
    for item in items:
        del item["prompt"], item["response"]
    return items, report


def _mismatch_partner(items: list[dict], i: int, search: int = 64) -> int:
    """The next item (cyclically, within `search` items) whose prompt differs from item i's and has the same kind
    (text or messages); failing that the next of the same kind (every prompt is the same), else i itself."""
    prompt = items[i]["prompt"]
    same_kind = [j for j in ((i + offset) % len(items) for offset in range(1, min(search, len(items))))
                 if isinstance(items[j]["prompt"], str) == isinstance(prompt, str)]
    different = [j for j in same_kind if items[j]["prompt"] != prompt]
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

class _Skip(Exception):
    """A row that is well-formed but unusable; carries its drop reason."""

    def __init__(self, reason_key: str, reason: str, field: str, fix: str):
        super().__init__(reason)
        self.reason_key, self.reason, self.field, self.fix = reason_key, reason, field, fix


def _check(rows, policy: str, max_length: int) -> tuple[Rows, DropReport]:
    if policy not in TRUNCATION_POLICIES:
        raise ConfigError(f"data.truncation must be one of {', '.join(TRUNCATION_POLICIES)}, got {policy!r}")
    if max_length < 2:
        raise ConfigError(f"data.max_length must be at least 2, got {max_length}")
    rows = rows if isinstance(rows, Rows) else load_rows(rows)
    return rows, DropReport(total=len(rows))


def _example(prompt, response, name: str, tokenizer, max_length: int, policy: str, use_chat_template) -> dict:
    example = response_example(prompt, response, tokenizer, use_chat_template=use_chat_template)
    if len(example["input_ids"]) > max_length:
        if policy != "truncate":
            raise _Skip("too_long", f"{name}: {len(example['input_ids'])} tokens is longer than "
                        f"data.max_length={max_length}", name, "raise data.max_length, or set data.truncation "
                        "to drop or truncate")
        example = {key: ids[:max_length] for key, ids in example.items()}
    if all(label == IGNORE_INDEX for label in example["labels"]):
        raise _Skip("no_response_tokens", f"{name}: no response token left within data.max_length={max_length}",
                    name, "raise data.max_length or shorten the prompt")
    return example


def _handle(rows: Rows, i: int, e: Exception, policy: str, report: DropReport) -> None:
    """Raise a located DataError under policy "error"; otherwise count the row as dropped."""
    if policy == "error":
        raise rows.error(i, e.reason, field=e.field, fix=e.fix) from None
    if isinstance(e, _Skip):
        report.add(e.reason_key)
    else:
        report.add("missing_field" if e.reason.startswith("missing field") else "invalid_field")
