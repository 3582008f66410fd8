"""Load a causal LM and its tokenizer: the embedded tiny model or any Hugging Face directory, full or LoRA.

Weights are kept in float32 (master weights); bf16 compute is the loop's autocast, not a cast of the model.
With LoRA the base is frozen and PEFT adapters are trained; the adapter directory names the base it was
trained on, so `peft.PeftModel.from_pretrained(base, adapter_dir)` restores it.
"""

from __future__ import annotations

from pathlib import Path

import torch

from posttrain.errors import ConfigError, UserError


def resolve_model_path(name_or_path: str) -> str:
    """'tiny' → the embedded model's cached directory (built on first use); anything else unchanged."""
    if name_or_path == "tiny":
        from posttrain.models.tiny import tiny_path
        return str(tiny_path())
    return name_or_path


def check_model_path(name_or_path: str) -> None:
    """A model named by a path must exist. Said in our words: for a missing path the Hub's loader explains what a
    repo id may look like instead. 'org/name' (or a bare 'name') that is no local directory may still be a Hub id
    in the local cache, so only what cannot be a repo id is checked here."""
    if name_or_path == "tiny" or Path(name_or_path).expanduser().exists():
        return
    cannot_be_repo_id = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path
    if cannot_be_repo_id:
        raise UserError(f"no such directory: {name_or_path} — fix: set model.name_or_path to a Hugging Face model "
                        "directory, a run directory, or 'tiny'")


# attn_implementation → (module it needs, how to install it)
_ATTENTION_PACKAGES = {"flash_attention_2": ("flash_attn", "pip install flash-attn --no-build-isolation"),
                       "flash_attention_3": ("flash_attn_interface", "install FlashAttention-3 (flash-attention's "
                                             "hopper/ directory)")}


def check_attention_kernel(attn_implementation: str) -> None:
    """The kernel model.attn_implementation names is installed. Checked before the run starts: transformers finds
    out only when the model is built, after the data has been read and the run directory made."""
    import importlib.util

    module, install = _ATTENTION_PACKAGES.get(attn_implementation, (None, None))
    if "/" in attn_implementation:  # a kernel from the Hub, e.g. kernels-community/flash-attn
        module, install = "kernels", "pip install kernels"
    if module is not None and importlib.util.find_spec(module) is None:
        raise UserError(f"model.attn_implementation={attn_implementation} needs the '{module}' package, which is "
                        f"not installed — fix: {install}, or use model.attn_implementation=sdpa")


def context_length(name_or_path: str, trust_remote_code: bool = False) -> int | None:
    """Positions the model's position table holds (max_position_embeddings; GPT-2's n_positions …); None when
    the config names none or cannot be read. A run directory is read through its final/, an adapter directory
    through its base model."""
    import json

    from transformers import AutoConfig

    path = Path(resolve_model_path(name_or_path))
    if (path / "final").is_dir() and not (path / "config.json").is_file():
        path = path / "final"
    adapter = path / "adapter_config.json"
    if adapter.is_file():
        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        return context_length(base, trust_remote_code) if base else None
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    check_model_path(name_or_path)
    path = resolve_model_path(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a tokenizer from '{name_or_path}' ({_first_line(e)}) — fix: set "
                        "model.name_or_path to a local Hugging Face model directory, or 'tiny'") from None
    if tokenizer.pad_token is None:  # GPT-2/Llama-style tokenizers ship without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_cfg, lora_cfg, *, seed: int = 0, weights_dir: str | Path | None = None, head: str = "lm"):
    """Build the trainable model.

    weights_dir: load the (full) weights from here instead of model_cfg.name_or_path — a checkpoint's
    `model/` when resuming full fine-tuning, or, with LoRA, the adapter directory to continue.
    head: "lm" (a causal LM); "score" (the same backbone with a scalar head on the last non-pad token:
    AutoModelForSequenceClassification, num_labels=1 — an outcome reward model); or "token" (a scalar head on
    every token: AutoModelForTokenClassification, num_labels=1 — a process reward model reads it at each step's
    end; its dropout is off, as the score head has none, so accumulation and resume stay exact). A new head is
    initialized from `seed`.
    """
    from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoModelForTokenClassification)

    if lora_cfg.r > 0 and model_cfg.init == "scratch":
        raise ConfigError("lora.r > 0 with model.init=scratch would train adapters on random weights "
                          "that are never saved — use full training (lora.r=0) or model.init=pretrained")
    check_model_path(model_cfg.name_or_path)
    check_attention_kernel(model_cfg.attn_implementation)
    path = resolve_model_path(model_cfg.name_or_path)
    kwargs = dict(dtype=torch.float32, attn_implementation=model_cfg.attn_implementation,
                  trust_remote_code=model_cfg.trust_remote_code)
    auto = AutoModelForCausalLM
    if head == "score":
        auto, kwargs = AutoModelForSequenceClassification, {**kwargs, "num_labels": 1}
    elif head == "token":
        auto, kwargs = AutoModelForTokenClassification, {**kwargs, "num_labels": 1}
    elif head != "lm":
        raise ValueError(f"head must be 'lm', 'score' or 'token', got {head!r}")
    full_weights = weights_dir if (weights_dir is not None and lora_cfg.r == 0) else None
    try:
        if model_cfg.init == "scratch" and full_weights is None:
            config = AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = auto.from_config(config, **kwargs)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)  # a new head (the reward model's score) starts the same every run
                model = auto.from_pretrained(full_weights or path, **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a model from '{model_cfg.name_or_path}' ({_first_line(e)}) — fix: set "
                        "model.name_or_path to a local Hugging Face model directory, or 'tiny'") from None
    if head == "token" and isinstance(getattr(model, "dropout", None), torch.nn.Dropout):
        model.dropout.p = model.config.classifier_dropout = 0.0  # transformers' default is 0.1; saved as 0
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_cfg.r > 0:
        task_type = {"lm": "CAUSAL_LM", "score": "SEQ_CLS", "token": "TOKEN_CLS"}[head]
        model = _add_lora(model, lora_cfg, adapter_dir=weights_dir, task_type=task_type)
    return model


def _add_lora(model, lora_cfg, adapter_dir=None, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig, PeftModel, get_peft_model

    if adapter_dir is not None:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    targets = lora_cfg.target_modules
    check_lora_targets(model, targets)
    # PEFT's all-linear skips a SEQ_CLS head but would put LoRA on a TOKEN_CLS head, which it trains in full (error)
    exclude = ["score", "classifier"] if task_type == "TOKEN_CLS" else None
    peft_config = LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                             target_modules=targets[0] if targets == ["all-linear"] else targets,
                             exclude_modules=exclude,
                             task_type=task_type)  # SEQ_CLS / TOKEN_CLS also train and save the new head
    try:
        return get_peft_model(model, peft_config)
    except ValueError as e:
        raise ConfigError(f"lora.target_modules={','.join(targets)}: {_first_line(e)}") from None


def check_lora_targets(model, targets: list[str]) -> None:
    """Some module matches lora.target_modules (PEFT's rule: the full name, or its last dotted parts); if none does,
    name the model's linear layers — PEFT's own error names only the targets."""
    if targets == ["all-linear"]:
        return
    names = [name for name, _ in model.named_modules()]
    if any(name == t or name.endswith("." + t) for name in names for t in targets):
        return
    linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if type(module).__name__ in ("Linear", "Conv1D")})  # Conv1D: GPT-2's linear layers
    raise ConfigError(f"lora.target_modules={','.join(targets)} matches no module of this model; its linear layers "
                      f"are {', '.join(linear)} — fix: lora.target_modules=all-linear, or a comma-separated subset "
                      "of those names")


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
