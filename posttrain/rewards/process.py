"""A trained process reward model's scores: σ(z) per reasoning step. Lightman et al. 2023, "Let's Verify Step by
Step" (arXiv:2305.20050).

The model is what `posttrain rm reward.mode=prm` trains: the backbone with a scalar head at every token
(…ForTokenClassification, num_labels 1). A solution is tokenized with the step separator after every step
(data/process.py); the logit z at the token that ends a step is that step's score, σ(z) = P(the step is correct).
`step_logits` is that reading: the PRM loop trains through it, and test-time search (search/scorers.py) scores
partial solutions through it, so a step's score at search time means what it meant in training.
"""

from __future__ import annotations

import torch

from posttrain.data.process import step_example
from posttrain.models.logits import padded_forward


def step_logits(model, examples: list[dict], pad_id: int, precision: str = "fp32"):
    """The head's logit at every step's end: (logits [N], labels [N], solution index [N]), N = all steps of the
    examples in order.

    One right-padded forward (`padded_forward`).
    """
    logits = padded_forward(model, examples, pad_id, precision)
    device = logits.device
    solution = torch.tensor([i for i, e in enumerate(examples) for _ in e["step_positions"]], device=device)
    position = torch.tensor([p for e in examples for p in e["step_positions"]], device=device)
    labels = torch.tensor([y for e in examples for y in e["step_labels"]], device=device)
    return logits[solution, position, 0].float(), labels, solution


@torch.no_grad()
def step_scores(model, tokenizer, prompt, steps: list[str], *, separator: str = "\n",
                use_chat_template: bool | None = None) -> list[float]:
    """σ(z) of each step of one (partial) solution: the PRM's probability that the step is correct.

    prompt: a string or chat messages; steps: the solution's steps so far, without separators. Tokenized as in
    training (data/process.py). A solution's score for best-of-N or step-level search is usually the minimum,
    or the last, of these (Lightman et al. 2023 use the product). model: a trained PRM, e.g.
    AutoModelForTokenClassification.from_pretrained(RUN_DIR / "final").

    Example: step_scores(prm, tok, "47+85=", ["7+5=12 carry 1", "4+8+1=14 carry 1"]) → e.g. [0.97, 0.08].
    """
    example = step_example(prompt, steps, tokenizer, separator=separator, use_chat_template=use_chat_template)
    logits, _, _ = step_logits(model, [example], tokenizer.pad_token_id)
    return torch.sigmoid(logits).tolist()
