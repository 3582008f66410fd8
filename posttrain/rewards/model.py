"""A trained outcome reward model as a reward source: `load_reward_model(RUN_DIR)` → ModelReward.

The model is what `posttrain rm` trains: the causal-LM backbone with a scalar head read at the last non-pad token
(…ForSequenceClassification, num_labels 1). `scores` is that reading; the reward-model loop trains through it and
ModelReward scores RL completions through it, so a score at RL time means what it meant in training.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from posttrain.config import LoraConfig, ModelConfig
from posttrain.data.preference import response_example
from posttrain.errors import ConfigError, UserError
from posttrain.models.heads import HEADS
from posttrain.models.loading import adapter_config, load_model, load_tokenizer, resolve_model_path
from posttrain.models.logits import padded_forward
from posttrain.rewards.contract import Outcome, RewardSource, outcome_of

# head → (PEFT task type, architecture suffix, what it is, what it scores) of the two reward-model heads
REWARD_HEADS = {name: (HEADS[name].task_type, HEADS[name].suffix, HEADS[name].what, HEADS[name].output)
                for name in ("score", "token")}


def scores(model, examples: list[dict], pad_id: int, precision: str = "fp32") -> torch.Tensor:
    """The scalar reward of each tokenized response (right-padded; the head reads its last real token) → [E]."""
    return padded_forward(model, examples, pad_id, precision)[:, 0].float()


class ModelReward(RewardSource):
    """A trained outcome reward model (`posttrain rm`: a sequence-classification head with one score).

    A completion is tokenized exactly as the reward-model trainer tokenized its chosen/rejected responses
    (data.preference.response_example: prompt + completion, as a user/assistant chat when the template is used) and
    scored by the same function (`scores`: the head's value at the last non-pad token), so scores at RL time mean
    what they meant in training. No gradients; the model is put in eval mode while scoring.

    use_chat_template: None (default) decides as `posttrain rm` did — the template when the tokenizer has one.
    batch_size: completions per forward pass; they are sorted by length first, so a batch holds similar lengths
        and little padding (the scores do not depend on it: padding is on the right, behind causal attention).
    A NaN or infinite score makes that sample unscored ("nan").
    """

    def __init__(self, model, tokenizer, *, use_chat_template: bool | None = None, batch_size: int = 32,
                 name: str = "reward_model", precision: str = "fp32"):
        if batch_size < 1:
            raise ConfigError(f"the reward model's batch size must be at least 1, got {batch_size}")
        self.model, self.tokenizer, self.use_chat_template = model, tokenizer, use_chat_template
        self.batch_size, self.name, self.precision = batch_size, name, precision
        model.config.pad_token_id = tokenizer.pad_token_id  # the head reads the last non-pad token, as in training

    def outcomes(self, prompts: list[str], completions: list[str], rows: list[dict]) -> list[Outcome]:
        examples = [response_example(p, c, self.tokenizer, use_chat_template=self.use_chat_template)
                    for p, c in zip(prompts, completions)]
        order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
        values = [math.nan] * len(examples)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start:start + self.batch_size]
                    batch_scores = scores(self.model, [examples[i] for i in chunk], self.tokenizer.pad_token_id,
                                          self.precision)
                    for i, value in zip(chunk, batch_scores.tolist()):
                        values[i] = value
        finally:
            self.model.train(was_training)
        return [outcome_of(v) for v in values]


def load_head_model(path: str | Path, head: str, fix: str, trust_remote_code: bool = False):
    """(frozen model, tokenizer) from a reward-model run directory (its final/) or a model directory: full weights
    whose architecture has the `head` (models/heads.py: "score" = outcome RM, "token" = PRM), or a LoRA adapter of
    that task type on its base. Anything else — a plain language model, whose head would be random, or the other
    kind of reward model — raises UserError ending in `fix`."""
    task_type, suffix, kind, unit = REWARD_HEADS[head]
    directory = Path(resolve_model_path(str(path)))
    adapter, config_file = adapter_config(directory), directory / "config.json"
    if adapter is None and not config_file.is_file():
        raise UserError(f"{path} is not a reward model directory (no config.json or adapter_config.json) — "
                        f"fix: {fix}")
    if adapter is not None and adapter.get("task_type") != task_type:
        raise UserError(f"{directory} holds a LoRA adapter for {adapter.get('task_type')}, not {kind} "
                        f"({task_type}) — fix: {fix}")
    if adapter is None:
        architectures = json.loads(config_file.read_text()).get("architectures") or []
        if not any(a.endswith(suffix) for a in architectures):
            raise UserError(f"{directory} holds {', '.join(architectures) or 'a model'}, not {kind} "
                            f"(…{suffix}, {unit}) — fix: {fix}")
    model = load_model(ModelConfig(name_or_path=str(directory), trust_remote_code=trust_remote_code),
                       LoraConfig(), head=head)  # an adapter on its base, unmerged: the scores training saw
    model.requires_grad_(False)
    return model, load_tokenizer(str(directory), trust_remote_code)


def load_reward_model(path: str | Path, *, device: str | torch.device = "cpu", batch_size: int = 32,
                      name: str = "reward_model", precision: str = "fp32", trust_remote_code: bool = False
                      ) -> ModelReward:
    """A ModelReward from an `rm` run directory (its final/) or a Hugging Face directory holding an outcome reward
    model (full weights, or a LoRA adapter on its base), frozen, on `device`.

    Refuses a directory whose model has no trained score head — a plain language model (its head would be random)
    or a process reward model (a score per token) — instead of giving random or meaningless rewards.
    """
    model, tokenizer = load_head_model(
        path, "score", "set reward.model to the run directory of `posttrain rm` (reward.mode=outcome) or its final/",
        trust_remote_code)
    return ModelReward(model.to(device).eval(), tokenizer, batch_size=batch_size, name=name, precision=precision)
