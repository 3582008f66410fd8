"""The pairs (or KTO's unpaired items) that `posttrain dpo` trains on and `posttrain rm` learns to rank: user files
when data.train_path is set, else the built-in task's (a correct vs a wrong final answer). Shared by both loops."""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.config import DPOConfig
from posttrain.data.preference import build_preference_pairs, build_unpaired_examples
from posttrain.train.common import task_and_problems, train_and_eval_rows


@dataclass
class PreferenceData:
    train: list[dict]  # pairs {"chosen", "rejected", "margin"}, or (unpaired) {"completion", "mismatched", "desirable"}
    eval: list[dict]
    problems: list[dict]
    score: object
    use_chat_template: bool
    report: str
    unpaired: bool = False
    reference: dict | None = None  # {"train": {name: [N] for name in responses}, "eval": {...}}

    @property
    def responses(self) -> tuple[str, str]:
        """The two tokenized responses each item holds (the reference cache keeps log π_ref of both)."""
        return ("completion", "mismatched") if self.unpaired else ("chosen", "rejected")

    @property
    def unit(self) -> str:
        return "examples" if self.unpaired else "pairs"

    @property
    def reference_train(self):
        return None if self.reference is None else self.reference["train"]

    @property
    def reference_eval(self):
        return None if self.reference is None else self.reference["eval"]


def load_preference_data(cfg: DPOConfig, tokenizer, unpaired: bool = False) -> PreferenceData:
    """User files when data.train_path is set, else the task's pairs (correct vs. wrong final answer).

    unpaired: build KTO's items (build_unpaired_examples) instead of pairs."""
    task, problems = task_and_problems(cfg)
    use_template = tokenizer.chat_template is not None

    def build(rows):
        builder = build_unpaired_examples if unpaired else build_preference_pairs
        return builder(rows, tokenizer, max_length=cfg.data.max_length, policy=cfg.data.truncation,
                       use_chat_template=use_template)

    train_rows, eval_rows = train_and_eval_rows(cfg, task.preference_rows if task else None)
    train, report = build(train_rows)
    eval_pairs = build(eval_rows)[0] if eval_rows is not None else []
    dropped = f" ({report.summary()})" if report.dropped else ""
    return PreferenceData(train, eval_pairs, problems, task.score if task else None, use_template, dropped, unpaired)
