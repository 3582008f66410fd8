"""Turn canonical SFT rows into token ids plus labels that say which tokens the loss is computed on.

`labels` has the same length as `input_ids` and is NOT shifted: labels[j] is input_ids[j] when token j is
a token the model must learn to produce, and IGNORE_INDEX (-100) otherwise. Shifting into next-token
targets happens once, in `packing.collate`.

Which tokens are trained:
  messages            every assistant turn, including its end-of-turn token (the model must learn to stop), its
                      tool calls included; never the system/user/tool turns nor the template's "<|assistant|>"
                      header. The row's tools go to the template (posttrain.data.chat.render_chat).
  prompt + completion the completion (+ eos). With a chat template, it is rendered as a user/assistant chat.
  text                every token except the leading bos.

Locating assistant turns inside a rendered chat template, for any template that renders prefixes
consistently: with `render(m)` the template applied to messages `m`,

    full   = render(messages)
    before = render(messages[:k], add_generation_prompt=True)   # everything up to the assistant's content
    upto   = render(messages[:k+1])                             # ... plus assistant turn k

    full.startswith(upto) and upto.startswith(before)          # checked; otherwise we can't locate the turn
    assistant turn k = characters [len(before), len(upto)), minus trailing whitespace after the end token

`full` is tokenized once with character offsets, and a token is trained when its characters lie inside an
assistant span. Example with the template "<s><|role|>\\ncontent</s>\\n":

    <s><|user|>\\nHi</s>\\n<|assistant|>\\nHello!</s>\\n
                                         ^^^^^^^^^^   trained: "Hello!</s>"
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field

from posttrain.algos.logprobs import IGNORE_INDEX  # -100, the label of a token not trained on (defined once, there)
from posttrain.data.chat import render_chat
from posttrain.data.loading import Rows, load_rows
from posttrain.errors import ConfigError, DataError

TRUNCATION_POLICIES = ("error", "drop", "truncate")


def tokenize_sft(example: dict, tokenizer, *, use_chat_template: bool | None = None) -> dict[str, list[int]]:
    """Tokenize one canonical SFT row (see `formats.normalize(rows, kind="sft")`).

    Args:
        example: {"messages"} | {"prompt", "completion"} | {"text"}.
        tokenizer: a Hugging Face *fast* tokenizer (character offsets are needed to find assistant turns).
        use_chat_template: None = use it when the tokenizer has one. Messages always need one.

    Returns:
        {"input_ids": list[int], "labels": list[int]} of equal length; labels are -100 where no loss is taken.

    Example, for a tokenizer with bos=1, eos=2, "Hi" -> [10, 11], "yo" -> [12, 13]:
        tokenize_sft({"prompt": "Hi", "completion": "yo"}, tokenizer, use_chat_template=False)
        == {"input_ids": [1, 10, 11, 12, 13, 2], "labels": [-100, -100, -100, 12, 13, 2]}
    """
    use_template = _should_use_template(tokenizer, use_chat_template)
    if "messages" in example:
        return _tokenize_chat(example["messages"], tokenizer, use_template, trained_from=0,
                              tools=example.get("tools"))
    if "prompt" in example and "completion" in example:
        prompt, completion = example["prompt"], example["completion"]
        if isinstance(prompt, list):  # conversational: train on the completion's assistant turns only
            return _tokenize_chat(prompt + completion, tokenizer, use_template, trained_from=len(prompt))
        if use_template:
            chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
            return _tokenize_chat(chat, tokenizer, use_template, trained_from=1)
        return _tokenize_plain(tokenizer, _ids(tokenizer, prompt), _ids(tokenizer, completion))
    if "text" in example:
        return _tokenize_plain(tokenizer, [], _ids(tokenizer, example["text"]))
    raise DataError(f"not a canonical SFT row (fields {sorted(example)})",
                    fix="pass rows through posttrain.data.normalize(rows, kind='sft') first")


def _should_use_template(tokenizer, use_chat_template: bool | None) -> bool:
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if use_chat_template and not has_template:
        raise ConfigError("use_chat_template is true but the tokenizer has no chat template — fix: use a chat "
                          "model's tokenizer, set tokenizer.chat_template, or set use_chat_template false")
    return has_template if use_chat_template is None else use_chat_template


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _tokenize_plain(tokenizer, prompt_ids: list[int], target_ids: list[int]) -> dict[str, list[int]]:
    """[bos] + prompt + target + [eos], loss on target + eos. Used for template-less prompt/completion and text."""
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no eos token, so the model can't learn where a completion ends — fix: "
                          "set tokenizer.eos_token")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    target = target_ids + [tokenizer.eos_token_id]
    return {"input_ids": bos + prompt_ids + target,
            "labels": [IGNORE_INDEX] * (len(bos) + len(prompt_ids)) + target}


def _tokenize_chat(messages: list[dict], tokenizer, use_template: bool, *, trained_from: int,
                   tools: list[dict] | None = None) -> dict[str, list[int]]:
    """Render with the chat template (tools and tool calls through posttrain.data.chat); train on assistant turns
    at index >= trained_from."""
    if not use_template:
        raise ConfigError("conversational data needs a chat template, but the tokenizer has none (or "
                          "use_chat_template is false) — fix: use a chat model's tokenizer, set "
                          "tokenizer.chat_template, or write the data as prompt/completion strings")
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("assistant-only loss needs a fast tokenizer (for character offsets) — fix: load the "
                          "tokenizer with use_fast=True")
    render = functools.partial(render_chat, tokenizer, tools=tools)
    full = render(messages)
    spans = [_assistant_span(render, messages, k, full)
             for k in range(trained_from, len(messages)) if messages[k]["role"] == "assistant"]
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)  # the template renders bos
    labels = [token if any(start <= a and b <= end and a < b for start, end in spans) else IGNORE_INDEX
              for token, (a, b) in zip(encoded["input_ids"], encoded["offset_mapping"])]
    return {"input_ids": list(encoded["input_ids"]), "labels": labels}


def _assistant_span(render, messages: list[dict], k: int, full: str) -> tuple[int, int]:
    """Character span [start, end) of assistant turn k inside `full` (see the module docstring)."""
    if k == 0:
        raise DataError("the conversation starts with an assistant turn; chat templates need a user (or system) "
                        "message before it", field="messages", fix="add the user turn, or remove the row")
    before = render(messages[:k], add_generation_prompt=True)
    upto = render(messages[: k + 1])
    if not (full.startswith(upto) and upto.startswith(before)):
        raise DataError(f"the chat template renders message {k} differently depending on what follows it, so the "
                        "assistant turn can't be located (some templates rewrite earlier turns, e.g. strip "
                        "reasoning)", field="messages",
                        fix="use a template that renders a conversation's prefixes unchanged, or train on "
                            "prompt/completion rows (one assistant reply each)")
    start = len(before)
    return start, start + len(upto[start:].rstrip())


@dataclass
class DropReport:
    """How many of `total` rows were dropped, per reason.

    Example:
        >>> r = DropReport(total=100); r.add("too_long"); r.add("too_long"); r.add("no_loss_tokens_after_truncation")
        >>> r.summary()
        'dropped 3 of 100 rows (too_long: 2, no_loss_tokens_after_truncation: 1)'
    """

    total: int
    dropped: Counter = field(default_factory=Counter)

    def add(self, reason: str) -> None:
        self.dropped[reason] += 1

    @property
    def kept(self) -> int:
        return self.total - sum(self.dropped.values())

    def summary(self) -> str:
        text = f"dropped {sum(self.dropped.values())} of {self.total} rows"
        if self.dropped:
            text += " (" + ", ".join(f"{reason}: {n}" for reason, n in self.dropped.most_common()) + ")"
        return text


class SkipRow(Exception):
    """A row that is well-formed but unusable; carries its drop reason (a DropReport key), field and fix."""

    def __init__(self, reason_key: str, reason: str, field: str, fix: str):
        super().__init__(reason)
        self.reason_key, self.reason, self.field, self.fix = reason_key, reason, field, fix


def start_rows(rows: Rows | list[dict], policy: str, max_length: int) -> tuple[Rows, DropReport]:
    """Check the bad-row policy and length limit, and wrap the rows (file/row numbers for errors) with an empty
    DropReport: the common start of the row builders (preference pairs, step-labelled rows)."""
    if policy not in TRUNCATION_POLICIES:
        raise ConfigError(f"data.truncation must be one of {', '.join(TRUNCATION_POLICIES)}, got {policy!r}")
    if max_length < 2:
        raise ConfigError(f"data.max_length must be at least 2, got {max_length}")
    rows = rows if isinstance(rows, Rows) else load_rows(rows)
    return rows, DropReport(total=len(rows))


def handle_bad_row(rows: Rows, i: int, e: DataError | SkipRow, policy: str, report: DropReport) -> None:
    """Policy "error": raise a DataError naming file, row, field and fix. Otherwise count row i as dropped under
    its reason (a DataError counts as missing_field or invalid_field)."""
    if policy == "error":
        raise rows.error(i, e.reason, field=e.field, fix=e.fix) from None
    if isinstance(e, SkipRow):
        report.add(e.reason_key)
    else:
        report.add("missing_field" if e.reason.startswith("missing field") else "invalid_field")


def build_sft_examples(rows: Rows | list[dict], tokenizer, *, max_length: int, truncation: str = "error",
                       use_chat_template: bool | None = None) -> tuple[list[dict], DropReport]:
    """Tokenize canonical SFT rows and apply the length policy.

    Args:
        rows: canonical SFT rows (`normalize(..., kind="sft")`); `Rows` carry file/row for error messages.
        max_length: longest allowed example, in tokens.
        truncation: what to do with a longer example —
            "error"    raise DataError naming file and row;
            "drop"     skip it, counted as "too_long";
            "truncate" keep its first max_length tokens; if no trained token is left, skip it
                       ("no_loss_tokens_after_truncation").
            A row with no trained token at all is an error under "error", else skipped ("no_loss_tokens").

    Returns:
        (examples [{"input_ids", "labels"}] in row order, DropReport). Raises DataError if every row is dropped.
    """
    if truncation not in TRUNCATION_POLICIES:
        raise ConfigError(f"data.truncation must be one of {', '.join(TRUNCATION_POLICIES)}, got {truncation!r}")
    if max_length < 1:
        raise ConfigError(f"data.max_length must be at least 1, got {max_length}")
    rows = rows if isinstance(rows, Rows) else load_rows(rows)
    examples, report = [], DropReport(total=len(rows))
    for i, row in enumerate(rows):
        try:
            example = tokenize_sft(row, tokenizer, use_chat_template=use_chat_template)
        except DataError as e:
            raise rows.error(i, e.reason, field=e.field, fix=e.fix) from None
        if len(example["input_ids"]) > max_length:
            if truncation == "error":
                raise rows.error(i, f"{len(example['input_ids'])} tokens is longer than data.max_length={max_length}",
                                 fix="raise data.max_length, or set data.truncation to drop or truncate")
            if truncation == "drop":
                report.add("too_long")
                continue
            example = {key: ids[:max_length] for key, ids in example.items()}
            if not _has_loss(example):
                report.add("no_loss_tokens_after_truncation")
                continue
        if not _has_loss(example):
            if truncation == "error":
                raise rows.error(i, "no token of this row is trained on (every label is -100)",
                                 fix="check the row's assistant/completion text, or set data.truncation to drop")
            report.add("no_loss_tokens")
            continue
        examples.append(example)
    if not examples:
        raise DataError(f"every row was dropped: {report.summary()}", file=rows.source,
                        fix="raise data.max_length (or check the data)")
    return examples, report


def _has_loss(example: dict) -> bool:
    return any(label != IGNORE_INDEX for label in example["labels"])
