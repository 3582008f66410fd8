"""Process (step-level) supervision: a prompt, the solution's steps, and a label per step, tokenized so that a
process reward model reads one score per step.

Rows use TRL's "stepwise supervision" names:

    {"prompt": "47+85=",                      # a string, or a list of chat messages
     "completions": ["7+5=12 carry 1", "4+8+1=13 carry 1", "answer: 132"],
     "labels": [true, true, true]}            # per step: true/false, 1/0, or a soft label in [0, 1]

Each step is followed by the separator (default "\\n"), and the step's score is read at the token that ends
it: the separator's (last) token. The text is what a policy sees when it writes the steps itself, so a PRM
scores generated solutions with no re-formatting:

    with a chat template    render([user: prompt], add_generation_prompt=True) + step₁ + sep + step₂ + sep + …
    without                 [bos] + prompt + step₁ + sep + step₂ + sep + …

Example with the embedded tiny model (one token per character, "\\n" is id 102), prompt "1+2=" and steps
["1+2=3", "answer: 3"], no template: input_ids = [bos, 1,+,2,=, 1,+,2,=,3,\\n, a,n,s,w,e,r,:, ,3,\\n];
step_positions = [10, 20] (the two "\\n"), step_labels = [1.0, 1.0].

Bad rows follow `policy` (data.truncation): "error" stops at the first with file, row, field and the fix;
"drop" and "truncate" skip it and count it under its reason:

    missing_field   no prompt / completions / labels
    invalid_field   a field of the wrong type: completions not a list of non-empty strings, a step that contains
                    the separator, labels not one per step, a label that is not true/false/0/1 or in [0, 1]
    no_steps        an empty list of steps, or ("truncate") not one whole step fits in max_length
    too_long        prompt + steps longer than max_length ("drop"; "truncate" keeps the whole steps that fit)
"""

from __future__ import annotations

from posttrain.data.formats import _turns
from posttrain.data.loading import Rows
from posttrain.data.chat import render_chat
from posttrain.data.tokenize import DropReport, SkipRow, _should_use_template, handle_bad_row, start_rows
from posttrain.errors import ConfigError, DataError

FIELDS = ("prompt", "completions", "labels")


def build_step_examples(rows: Rows | list[dict], tokenizer, *, max_length: int, policy: str = "error",
                        use_chat_template: bool | None = None, separator: str = "\n") -> tuple[list[dict], DropReport]:
    """Tokenize stepwise-supervision rows → ([{"input_ids", "step_positions", "step_labels"}], DropReport).

    input_ids [T] (no padding), step_positions [S] (index into input_ids of the token that ends each step),
    step_labels [S] floats in [0, 1] (1 = the step is correct). Rows keep their order; raises DataError when
    every row is dropped. use_chat_template: None = use the tokenizer's template when it has one.
    """
    if not separator:
        raise ConfigError("reward.step_separator must not be empty — fix: use \"\\n\" (one step per line)")
    rows, report = start_rows(rows, policy, max_length)
    examples = []
    for i, row in enumerate(rows):
        try:
            prompt, steps, labels = _validate(row, separator)
            example = step_example(prompt, steps, tokenizer, labels=labels, separator=separator,
                                   use_chat_template=use_chat_template)
            if len(example["input_ids"]) > max_length:
                if policy != "truncate":
                    raise SkipRow("too_long", f"{len(example['input_ids'])} tokens is longer than data.max_length="
                                  f"{max_length}", "completions", "raise data.max_length, or set data.truncation to "
                                  "drop or truncate (which keeps the whole steps that fit)")
                example = _keep_whole_steps(example, max_length)
        except (DataError, SkipRow) as e:
            handle_bad_row(rows, i, e, policy, report)
            continue
        examples.append(example)
    if not examples:
        raise DataError(f"no usable row of step-labelled solutions: {report.summary()}", file=rows.source,
                        fix="check the data (fields prompt, completions, labels) or data.max_length")
    return examples, report


def step_example(prompt, steps: list[str], tokenizer, *, labels: list[float] | None = None, separator: str = "\n",
                 use_chat_template: bool | None = None) -> dict:
    """{"input_ids", "step_positions", "step_labels"} for one solution (see the module docstring for the text).

    Tokenizes the whole text at once (the tokens a model would really see) and maps each step's end, the last
    character of its separator, to the token holding that character. labels None → step_labels all 1.0 (for
    scoring, where no label is known). Raises DataError when two steps end in the same token.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("step scores need a fast tokenizer (for character offsets) — fix: load the tokenizer "
                          "with use_fast=True")
    use_template = _should_use_template(tokenizer, use_chat_template)
    bos: list[int] = []
    if isinstance(prompt, list) or use_template:
        if not use_template:
            raise ConfigError("a prompt written as chat messages needs a chat template, but the tokenizer has none "
                              "(or use_chat_template is false) — fix: write the prompt as a string")
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        prefix = render_chat(tokenizer, messages, add_generation_prompt=True)  # the template renders bos itself
    else:
        prefix = prompt
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []

    text, ends = prefix, []
    for step in steps:
        text += step + separator
        ends.append(len(text) - 1)  # the separator's last character
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    token_of_char = {}
    for t, (a, b) in enumerate(encoded["offset_mapping"]):
        for c in range(a, b):
            token_of_char.setdefault(c, t)
    positions = [token_of_char[c] + len(bos) for c in ends]
    if len(set(positions)) != len(positions):
        raise DataError("two steps end in the same token, so they can't be scored apart", field="completions",
                        fix="use a separator the tokenizer keeps apart from the steps (reward.step_separator)")
    step_labels = [1.0] * len(steps) if labels is None else [float(y) for y in labels]
    return {"input_ids": bos + list(encoded["input_ids"]), "step_positions": positions, "step_labels": step_labels}


# ---------------------------------------------------------------------------------------------------------------------

def _validate(row: dict, separator: str) -> tuple:
    """(prompt, steps, labels as floats) of a row, or DataError naming the field."""
    for name in FIELDS:
        if name not in row:
            raise DataError(f"missing field (step-labelled data needs {', '.join(FIELDS)})", field=name,
                            fix=f"add '{name}' to every row, or rename your columns with data.columns=yours:{name}")
    prompt = _turns(row["prompt"], "prompt")
    steps, labels = row["completions"], row["labels"]
    if not isinstance(steps, list) or not all(isinstance(s, str) and s.strip() for s in steps):
        raise DataError("expected a list of non-empty strings, one per step", field="completions",
                        fix='write the steps as ["step 1", "step 2", ...]')
    if not steps:
        raise SkipRow("no_steps", "the solution has no steps", "completions", "add its steps, or remove the row")
    for k, step in enumerate(steps):
        if separator in step:
            raise DataError(f"step {k} contains the step separator {separator!r}, so it would read as two steps",
                            field=f"completions[{k}]", fix="split it into two steps, or set reward.step_separator")
    if not isinstance(labels, list) or len(labels) != len(steps):
        got = f"{len(labels)} labels" if isinstance(labels, list) else f"a {type(labels).__name__}"
        raise DataError(f"expected one label per step ({len(steps)}), got {got}", field="labels",
                        fix="give every step exactly one label")
    for k, y in enumerate(labels):
        ok = isinstance(y, bool) or (isinstance(y, (int, float)) and 0 <= y <= 1)
        if not ok:
            raise DataError(f"expected true/false (or a probability in [0, 1]), got {y!r}", field=f"labels[{k}]",
                            fix="label each step true (correct) or false, or with a soft label in [0, 1]")
    return prompt, steps, [float(y) for y in labels]


def _keep_whole_steps(example: dict, max_length: int) -> dict:
    """The longest prefix of example that ends at a step's end and fits in max_length tokens."""
    kept = sum(1 for p in example["step_positions"] if p < max_length)
    if kept == 0:
        raise SkipRow("no_steps", f"not one whole step fits in data.max_length={max_length}", "completions",
                      "raise data.max_length or shorten the prompt")
    end = example["step_positions"][kept - 1] + 1
    return {"input_ids": example["input_ids"][:end], "step_positions": example["step_positions"][:kept],
            "step_labels": example["step_labels"][:kept]}
