"""SamplingParams: what the engine is told about picking each next token and stopping — its whole contract besides
token ids, a model and a generator (DESIGN §3).

It is also the `sampling` section of the rl, rft, generate and chat configs, so `posttrain.config` imports it. That
is why this module is a leaf: it imports nothing from posttrain but the errors, and no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from posttrain.errors import ConfigError


@dataclass
class SamplingParams:
    """How to pick each next token, and when to stop.

    temperature 0 means greedy (so does top_k 1). stop_token_ids empty → the engine stops at the
    tokenizer's eos; n is the number of samples drawn per prompt (GRPO's group size).
    """

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 disables."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with probability ≥ top_p; 1 disables."""
    min_p: float = 0.0
    """Drop tokens less likely than min_p × the most likely one; 0 disables."""
    repetition_penalty: float = 1.0
    """Penalize tokens already in the prompt or completion (CTRL); 1 disables."""
    max_new_tokens: int = 64
    """Longest completion, in tokens."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Extra stop token ids (the tokenizer's eos always stops)."""
    stop_strings: list[str] = field(default_factory=list)
    """Stop strings: a completion ends (and is cut) where one appears."""
    n: int = 1
    """Completions per prompt (GRPO's group size)."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def truncates(self) -> bool:
        """The engine samples another distribution than the policy's softmax(logits / T): top-k/p, min-p or a
        repetition penalty reshape it."""
        return self.top_k != 0 or self.top_p < 1 or self.min_p > 0 or self.repetition_penalty != 1

    def validate(self) -> SamplingParams:
        """Raise ConfigError naming the first out-of-range field; return self so calls can chain."""
        checks = [
            ("temperature", math.isfinite(self.temperature) and self.temperature >= 0,
             "must be ≥ 0 (0 means greedy)"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "must be an integer ≥ 0 (0 disables)"),
            ("top_p", 0.0 <= self.top_p <= 1.0, "must be in [0, 1] (1 disables)"),
            ("min_p", 0.0 <= self.min_p <= 1.0, "must be in [0, 1] (0 disables)"),
            ("repetition_penalty", math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0,
             "must be > 0 (1 disables)"),
            ("max_new_tokens", isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
             "must be an integer ≥ 1"),
            ("stop_token_ids", all(isinstance(i, int) and i >= 0 for i in self.stop_token_ids),
             "must be a list of token ids ≥ 0"),
            ("stop_strings", all(isinstance(s, str) and s for s in self.stop_strings),
             "must be a list of non-empty strings"),
            ("n", isinstance(self.n, int) and self.n >= 1, "must be an integer ≥ 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"sampling.{name} = {getattr(self, name)!r} {rule}")
        return self
