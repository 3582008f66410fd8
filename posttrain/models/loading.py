"""Load a causal LM and its tokenizer: the embedded tiny model or any Hugging Face directory, full or LoRA.

Weights are kept in float32 (master weights); bf16 compute is the loop's autocast, not a cast of the model.
With LoRA the base is frozen and PEFT adapters are trained; the adapter directory names the base it was
trained on, so `peft.PeftModel.from_pretrained(base, adapter_dir)` restores it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from posttrain import checkpoint
from posttrain.errors import ConfigError, UserError
from posttrain.models import gguf
from posttrain.models.heads import HEADS, head_of


def resolve_model_path(name_or_path: str) -> str:
    """Where a model named by the user lives: 'tiny' → the embedded model's cached directory (built on first use);
    a .gguf file or a named model (models/gguf.py: 'smollm2-135m-instruct') → its converted Hugging Face directory
    (fetched and converted on first use); a run directory → its final/, else its latest checkpoint's model/;
    anything else (a model or adapter directory, a hub id) unchanged. Every command that takes a model path
    resolves it here."""
    if name_or_path == "tiny":
        from posttrain.models.tiny import tiny_path  # it imports transformers, which this module loads lazily
        return str(tiny_path())
    if gguf.is_gguf(name_or_path) or gguf.is_named(name_or_path):
        return str(gguf.model_dir(name_or_path))
    path = Path(name_or_path)
    if path.is_dir() and not is_model_dir(path):
        if (path / "final").is_dir():
            return str(path / "final")
        latest = checkpoint.latest(path)
        if latest is not None:
            return str(latest / "model")
    return name_or_path


def is_model_dir(path: str | Path) -> bool:
    """A Hugging Face model directory (config.json) or a PEFT adapter directory (adapter_config.json)."""
    return (Path(path) / "config.json").is_file() or (Path(path) / "adapter_config.json").is_file()


def adapter_config(path: str | Path) -> dict | None:
    """The adapter_config.json of a LoRA adapter directory, or None for anything else."""
    file = Path(path) / "adapter_config.json"
    return json.loads(file.read_text()) if file.is_file() else None


def model_head(path: str | Path) -> str:
    """'score' (an outcome reward model), 'token' (a process reward model) or 'lm': the head of the model or
    adapter in `path`, read from the adapter's task type or the model's architecture (models/heads.py)."""
    adapter = adapter_config(path)
    if adapter is not None:
        return head_of(task_type=adapter.get("task_type"))
    return head_of(architectures=json.loads((Path(path) / "config.json").read_text()).get("architectures"))


def base_model_path(name_or_path: str) -> str:
    """The full model under a model, adapter or run directory: an adapter's base, followed down a chain of them."""
    path = resolve_model_path(name_or_path)
    adapter = adapter_config(path)
    return path if adapter is None else base_model_path(adapter["base_model_name_or_path"])


def check_model_path(name_or_path: str) -> None:
    """A model named by a path must exist. Said in our words: for a missing path the Hub's loader explains what a
    repo id may look like instead. 'org/name' (or a bare 'name') that is no local directory may still be a Hub id
    in the local cache, so only what cannot be a repo id is checked here."""
    if name_or_path == "tiny" or gguf.is_named(name_or_path) or Path(name_or_path).expanduser().exists():
        return
    if gguf.is_gguf(name_or_path):
        raise UserError(f"no such file: {name_or_path} — fix: set model.name_or_path to an existing .gguf file")
    cannot_be_repo_id = name_or_path.startswith(("/", ".", "~")) or name_or_path.count("/") > 1 or "\\" in name_or_path
    if cannot_be_repo_id:
        raise UserError(f"no such directory: {name_or_path} — fix: set model.name_or_path to a Hugging Face model "
                        "directory, a run directory, a .gguf file, or 'tiny'")


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
    """The tokenizer of a model, adapter or run directory (an adapter saved without one: its base's), or 'tiny'."""
    from transformers import AutoTokenizer

    check_model_path(name_or_path)
    path = resolve_model_path(name_or_path)
    adapter = adapter_config(path)
    if adapter is not None and not (Path(path) / "tokenizer_config.json").is_file():
        return load_tokenizer(adapter["base_model_name_or_path"], trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a tokenizer from '{name_or_path}' ({_first_line(e)}) — fix: set "
                        "model.name_or_path to a local Hugging Face model directory, or 'tiny'") from None
    if tokenizer.pad_token is None:  # GPT-2/Llama-style tokenizers ship without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(model_cfg, lora_cfg, *, seed: int = 0, weights_dir: str | Path | None = None, head: str = "lm",
               disable_dropout: bool = False):
    """Build the trainable model.

    model_cfg.name_or_path: a model directory, 'tiny', a LoRA adapter directory, or a run directory (its final/).
    Starting from an adapter (continuing a LoRA run), lora.r decides what trains:
        unset  the same adapter keeps training on its base (PeftModel.from_pretrained(base, adapter, trainable));
        0      the adapter is merged into its base, and the merged model trains in full;
        > 0    the adapter is merged into its base, and fresh adapters of rank r train on top (the saved adapter
               names the start adapter as its base, so loading it rebuilds the merged base first).
    From a full model, unset means 0 (full fine-tuning).
    weights_dir: a checkpoint's `model/` to resume from: full weights, or the adapter of a LoRA run (on the base
    built as above).
    head: "lm" (a causal LM); "score" (the same backbone with a scalar head on the last non-pad token:
    AutoModelForSequenceClassification, num_labels=1 — an outcome reward model); or "token" (a scalar head on
    every token: AutoModelForTokenClassification, num_labels=1 — a process reward model reads it at each step's
    end; its dropout is off, as the score head has none, so accumulation and resume stay exact). A new head is
    initialized from `seed`.
    disable_dropout: every dropout probability set to 0 (see `disable_dropout_in_model`).
    """
    from transformers import AutoConfig

    if head not in HEADS:
        raise ValueError(f"head must be 'lm', 'score' or 'token', got {head!r}")
    check_model_path(model_cfg.name_or_path)
    check_attention_kernel(model_cfg.attn_implementation)
    path = resolve_model_path(model_cfg.name_or_path)
    start_adapter = adapter_config(path)
    rank = lora_cfg.r
    if (rank or start_adapter is not None) and model_cfg.init == "scratch":
        raise ConfigError("model.init=scratch re-initializes every weight, so LoRA adapters (lora.r > 0, or a "
                          "model.name_or_path that is an adapter) would train on random weights — use "
                          "model.init=pretrained, or lora.r=0 with a full model")
    auto, kwargs = HEADS[head].auto_class, HEADS[head].kwargs
    kwargs = dict(dtype=torch.float32, attn_implementation=model_cfg.attn_implementation,
                  trust_remote_code=model_cfg.trust_remote_code, **kwargs)
    resume_adapter = weights_dir is not None and adapter_config(weights_dir) is not None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # a new head (the reward model's score) starts the same every run
            if weights_dir is not None and not resume_adapter:
                model = _auto(auto).from_pretrained(weights_dir, **kwargs)  # a full checkpoint holds everything
            elif model_cfg.init == "scratch":
                config = AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code)
                model = _auto(auto).from_config(config, **kwargs)
            elif start_adapter is not None and rank is None:
                model = pretrained(start_adapter["base_model_name_or_path"], auto, kwargs)
            else:
                model = pretrained(path, auto, kwargs)  # an adapter is merged into its base here
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load a model from '{model_cfg.name_or_path}' ({_first_line(e)}) — fix: set "
                        "model.name_or_path to a local Hugging Face model directory, or 'tiny'") from None
    if head == "token" and isinstance(getattr(model, "dropout", None), torch.nn.Dropout):
        model.dropout.p = model.config.classifier_dropout = 0.0  # transformers' default is 0.1; saved as 0
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    task_type = HEADS[head].task_type
    if resume_adapter:
        model = _load_adapter(model, weights_dir, task_type)
    elif start_adapter is not None and rank is None:
        model = _load_adapter(model, path, task_type)
    elif rank:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # LoRA's A starts random: from the seed, not from the process's history
            model = _add_lora(model, lora_cfg, task_type=task_type)
        if start_adapter is not None:  # the base these adapters train on is the start adapter, merged
            model.peft_config["default"].base_model_name_or_path = str(Path(path).resolve())
    if disable_dropout:
        disable_dropout_in_model(model)
    return model


def _auto(name: str):
    import transformers
    return getattr(transformers, name)


def pretrained(path: str | Path, auto: str = "AutoModelForCausalLM", kwargs: dict | None = None):
    """Full weights from a model directory, or from an adapter directory: its base (itself a model or, for an
    adapter trained on a merged start, another adapter) with the adapter merged in (W + (alpha/r)·B·A)."""
    kwargs = kwargs if kwargs is not None else {"dtype": torch.float32}
    path = resolve_model_path(str(path))
    adapter = adapter_config(path)
    if adapter is None:
        return _auto(auto).from_pretrained(path, **kwargs)
    from peft import PeftModel
    base = pretrained(adapter["base_model_name_or_path"], auto, kwargs)
    merged = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
    return merged.requires_grad_(True)  # PEFT froze the base; merged, it is an ordinary model again


def _load_adapter(model, adapter_dir, task_type: str):
    """`model` with the adapter in adapter_dir, trainable. An adapter trained for another head (an SFT adapter
    continued as a reward model's backbone) is set up under this head's task type, so PEFT also trains and saves
    the new head, and its LoRA weights are loaded into it."""
    from peft import (PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict, load_peft_weights,
                      set_peft_model_state_dict)

    config = PeftConfig.from_pretrained(str(adapter_dir))
    if config.task_type == task_type:
        return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    config.task_type, config.inference_mode = task_type, False
    model = get_peft_model(model, config)
    weights = {**get_peft_model_state_dict(model), **load_peft_weights(str(adapter_dir))}  # + the new head
    result = set_peft_model_state_dict(model, weights)
    if result.unexpected_keys:
        raise UserError(f"the adapter in {adapter_dir} does not fit this model ({result.unexpected_keys[0]} …) — "
                        "fix: lora.r=0 merges it into its base instead")
    return model


def disable_dropout_in_model(model) -> None:
    """Set every dropout probability in `model` to 0: nn.Dropout modules (LoRA's included), the float dropout rates
    attention layers read at forward time (Llama/Qwen's `attention_dropout`), and the config's `*dropout*` /
    `*pdrop*` fields (some models read those at forward time; the saved config then records 0).

    Why: in train mode dropout makes two passes over the same tokens differ, so a DPO policy at step 1 no longer
    equals its reference (rewards ≠ 0) and an RL update's ratios π/π_old are not 1 where they must be.
    """
    from transformers import PretrainedConfig

    configs = {}
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = 0.0
        for name in ("attention_dropout", "attn_dropout", "dropout", "dropout_p", "dropout_rate"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
        if isinstance(getattr(module, "config", None), PretrainedConfig):
            configs[id(module.config)] = module.config
    for config in configs.values():
        for name, value in list(vars(config).items()):
            if ("dropout" in name or "pdrop" in name) and isinstance(value, float):
                setattr(config, name, 0.0)


def _add_lora(model, lora_cfg, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig, get_peft_model

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
