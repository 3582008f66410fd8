"""The heads a model can carry: what `load_model(…, head=…)` builds and what a saved model is recognised by.

    lm     a causal LM (…ForCausalLM)                                          policies: SFT, DPO, RL, distillation
    score  one scalar at the last non-pad token (…ForSequenceClassification,  an outcome reward model (`posttrain rm`)
           num_labels 1)
    token  one scalar at every token (…ForTokenClassification, num_labels 1)  a process reward model (reward.mode=prm)
                                                                               and the PPO critic

A saved model says which head it has in its config's `architectures` (e.g. LlamaForSequenceClassification), a
LoRA adapter in its PEFT `task_type` (SEQ_CLS); `models.loading.model_head` reads either.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Head:
    auto_class: str                              # the transformers auto class that builds it
    kwargs: dict = field(default_factory=dict)  # its extra from_pretrained arguments
    task_type: str = "CAUSAL_LM"                 # the PEFT task type of an adapter trained with it
    what: str = ""                               # what a model with this head is, for messages
    output: str = ""                             # what it outputs, for messages

    @property
    def suffix(self) -> str:
        """The end of the architecture names that carry it: "ForSequenceClassification" for
        AutoModelForSequenceClassification (LlamaForSequenceClassification, Qwen2ForSequenceClassification …)."""
        return self.auto_class.removeprefix("AutoModel")


HEADS = {
    "lm": Head("AutoModelForCausalLM", {}, "CAUSAL_LM", "a language model", "next-token logits"),
    "score": Head("AutoModelForSequenceClassification", {"num_labels": 1}, "SEQ_CLS", "an outcome reward model",
                  "one score per response"),
    "token": Head("AutoModelForTokenClassification", {"num_labels": 1}, "TOKEN_CLS", "a process reward model",
                  "a score per step"),
}


def head_of(task_type: str | None = None, architectures: list[str] | None = None) -> str:
    """The head of a saved model from an adapter's PEFT task type or, for full weights, its architectures; "lm"
    when neither names a reward head.

    Example: head_of("SEQ_CLS") → "score"; head_of(architectures=["LlamaForTokenClassification"]) → "token".
    """
    for name, head in HEADS.items():
        if name != "lm" and (task_type == head.task_type or any(a.endswith(head.suffix) for a in architectures or [])):
            return name
    return "lm"
