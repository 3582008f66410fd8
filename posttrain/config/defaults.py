"""Defaults that depend on the model: the learning rate (full or LoRA, per command) and data.max_length (the
model's context). The training loops fill them in before anything is read (posttrain/train/preflight.py)."""

from __future__ import annotations

from typing import Any

from posttrain.config.distill import DistillConfig
from posttrain.config.preference import DPOConfig, RMConfig
from posttrain.config.rl import RFTConfig, RLConfig
from posttrain.config.sft import PretrainConfig, SFTConfig
from posttrain.errors import ConfigError

# train.lr when unset: (full fine-tuning, LoRA) of a pretrained model, per command. README's table gives the sources
# (TRL, LLaMA-Factory, the alignment handbook). LoRA's rate is ten times higher: its updates start at zero and are
# scaled by alpha / r. The tiny model's own tuned rates are set explicitly where it is trained (demo, examples).
LEARNING_RATES: dict[str, tuple[float, float]] = {
    "sft": (1e-5, 1e-4), "pretrain": (1e-5, 1e-4), "rft": (1e-5, 1e-4), "distill": (1e-5, 1e-4),
    "dpo": (5e-7, 5e-6), "rm": (1e-5, 1e-4), "rl": (1e-6, 1e-5),
}
SCRATCH_LR = 6e-4  # model.init=scratch: random weights take a pretraining rate (GPT-3 Small, nanoGPT)
MAX_LENGTH_CAP = 2048  # data.max_length when unset is the model's context, but no more than this


def command_of(cfg: Any) -> str:
    """The command a training config belongs to (subclasses first: PretrainConfig is an SFTConfig)."""
    for cls, name in ((PretrainConfig, "pretrain"), (RFTConfig, "rft"), (DistillConfig, "distill"),
                      (SFTConfig, "sft"), (DPOConfig, "dpo"), (RMConfig, "rm"), (RLConfig, "rl")):
        if isinstance(cfg, cls):
            return name
    raise TypeError(f"not a training config: {type(cfg).__name__}")


def resolve_defaults(cfg: Any, context: int | None, trains_adapter: bool | None = None) -> list[str]:
    """Fill in train.lr and data.max_length where they are unset, and check data.max_length against the model's
    context (`context`: its position table, None when unknown). Changes cfg in place, so config.yaml records the
    values used; returns a line per value chosen, for the run's log. `trains_adapter`: whether the run trains
    LoRA adapters (lora.r > 0, or lora.r unset on a model that is an adapter); default lora.r > 0.

    Example (the embedded model has 512 positions):
        >>> cfg = SFTConfig(); resolve_defaults(cfg, 512); (cfg.train.lr, cfg.data.max_length)
        ['train.lr = 1e-05 (the sft default for full fine-tuning)', "data.max_length = 512 (the model's context)"]
        (1e-05, 512)
    """
    notes = []
    if cfg.train.lr is None:
        command = command_of(cfg)
        lora = trains_adapter if trains_adapter is not None else bool(cfg.lora.r)
        if cfg.model.init == "scratch":
            cfg.train.lr, why = SCRATCH_LR, "training from scratch"
        else:
            cfg.train.lr = LEARNING_RATES[command][lora]
            why = f"the {command} default for {'LoRA' if lora else 'full fine-tuning'}"
        notes.append(f"train.lr = {cfg.train.lr:g} ({why})")
    reserved = cfg.sampling.max_new_tokens if isinstance(cfg, RLConfig) else 0  # rl: the completion follows
    also = f" + sampling.max_new_tokens = {reserved}" if reserved else ""
    if cfg.data.max_length is None:
        limits = {f"the cap, {MAX_LENGTH_CAP}": MAX_LENGTH_CAP}
        if context:
            limits["the model's context" + (" less sampling.max_new_tokens" if reserved else "")] = context - reserved
        if cfg.data.pack_length:
            limits["data.pack_length"] = cfg.data.pack_length
        why, cfg.data.max_length = min(limits.items(), key=lambda item: item[1])
        if cfg.data.max_length < 1:
            raise ConfigError(f"sampling.max_new_tokens = {reserved} leaves no room for a prompt in the model's "
                              f"{context} positions — fix: sampling.max_new_tokens={context // 2}")
        notes.append(f"data.max_length = {cfg.data.max_length} ({why})")
    elif context and cfg.data.max_length + reserved > context:
        raise ConfigError(f"data.max_length = {cfg.data.max_length}{also} is more than the model's context, "
                          f"{context} positions (its position table): a longer example would fail inside the model "
                          f"— fix: data.max_length={context - reserved}")
    return notes
