"""Checks on the user's input that need more than the config: the model's files and position table, the packages
the config asks for. Every training loop runs them first, before any data is read or the run directory is made,
so such a mistake costs seconds and leaves nothing behind. They also fill in the defaults that depend on the
model (train.lr for full or LoRA training, data.max_length from the model's context; config.resolve_defaults).
"""

from __future__ import annotations

from pathlib import Path

from posttrain import config as C, distributed
from posttrain.errors import UserError
from posttrain.models.loading import (adapter_config, base_model_path, check_attention_kernel, check_model_path,
                                     context_length, resolve_model_path)
from posttrain.rollout.backends import choose_engine, vllm_unfit
from posttrain.track import check_report_to


def check_vllm(cfg) -> None:
    """rollout.engine=vllm: vLLM must be installed and able to run the model here (it is imported only when the
    engine starts, after the run directory exists)."""
    import importlib.util

    import torch
    if importlib.util.find_spec("vllm") is None:
        raise UserError("rollout.engine=vllm needs vLLM — fix: on a CUDA machine pip install 'posttrain[vllm]'; on "
                        "CPU make setup-vllm and run from .venv-vllm; or use rollout.engine=hf")
    if distributed.world_size() > 1 and cfg.rollout.vllm_mode == "colocate":
        # vLLM adopts torchrun's process group as its own world: its collectives then interleave with the
        # trainer's (seen on CPU: a checkpoint barrier passed early and the save failed)
        raise UserError("rollout.engine=vllm in colocated mode runs in a single process, not under torchrun — fix: "
                        "rollout.vllm_mode=server (one vLLM server for all ranks), or rollout.engine=hf")
    if cfg.rollout.vllm_sleep and not torch.cuda.is_available():
        raise UserError("rollout.vllm_sleep=true needs a GPU (vLLM's CPU build has no sleep mode) — fix: "
                        "rollout.vllm_sleep=false")
    model_dir = base_model_path(cfg.model.name_or_path)
    if (why := vllm_unfit(model_dir, cuda=torch.cuda.is_available())) is not None:
        raise UserError(f"rollout.engine=vllm cannot run {cfg.model.name_or_path}: {why} — fix: rollout.engine=hf")


def choose_rollout_engine(cfg) -> str:
    """rollout.engine=auto → hf or vllm, written into cfg (so config.yaml records it); returns the note for the log.
    The parameter count comes from the config alone (the model built on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    try:
        model_dir = base_model_path(cfg.model.name_or_path)
    except (OSError, ValueError):  # a Hub id that is not in the cache
        model_dir = None
    parameters = None
    if model_dir is not None and Path(model_dir, "config.json").is_file():
        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=cfg.model.trust_remote_code)
        with torch.device("meta"):
            parameters = sum(p.numel() for p in AutoModelForCausalLM.from_config(
                config, trust_remote_code=cfg.model.trust_remote_code).parameters())
    cfg.rollout.engine, why = choose_engine(model_dir, parameters, cuda=torch.cuda.is_available(),
                                            world_size=distributed.world_size(), mode=cfg.rollout.vllm_mode)
    return f"rollout.engine = {cfg.rollout.engine} ({why})"


def check_inputs(cfg) -> None:
    """Raise a UserError naming the setting and the fix; resolve the model-dependent defaults in cfg, in place."""
    check_model_path(cfg.model.name_or_path)
    check_attention_kernel(cfg.model.attn_implementation)
    check_report_to(cfg.log.report_to)
    engine = getattr(getattr(cfg, "rollout", None), "engine", "hf")
    if engine == "vllm":
        check_vllm(cfg)
    # lora.r unset continues the adapter a model path names (models.loading.load_model): LoRA's learning rate
    trains_adapter = bool(cfg.lora.r) or (cfg.lora.r is None and
                                          adapter_config(resolve_model_path(cfg.model.name_or_path)) is not None)
    notes = C.resolve_defaults(cfg, context_length(cfg.model.name_or_path, cfg.model.trust_remote_code),
                               trains_adapter)
    if engine == "auto":
        notes.append(choose_rollout_engine(cfg))
    if notes and distributed.rank() == 0:
        print("; ".join(notes) + " — set them to choose", flush=True)
