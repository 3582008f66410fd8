"""Checks on the user's input that need more than the config: the model's files and position table, the packages
the config asks for. Every training loop runs them first, before any data is read or the run directory is made,
so such a mistake costs seconds and leaves nothing behind. They also fill in the defaults that depend on the
model (train.lr for full or LoRA training, data.max_length from the model's context; config.resolve_defaults).
"""

from __future__ import annotations

from posttrain import config as C, distributed
from posttrain.errors import UserError
from posttrain.models.loading import (adapter_config, check_attention_kernel, check_model_path, context_length,
                                     resolve_model_path)
from posttrain.track import check_report_to


def check_vllm() -> None:
    """rollout.engine=vllm: vLLM must be installed (it is imported only when the engine starts, after the run
    directory exists)."""
    import importlib.util
    if importlib.util.find_spec("vllm") is None:
        raise UserError("rollout.engine=vllm needs vLLM — fix: on a CUDA machine pip install 'posttrain[vllm]'; on "
                        "CPU make setup-vllm and run from .venv-vllm; or use rollout.engine=hf")


def check_inputs(cfg) -> None:
    """Raise a UserError naming the setting and the fix; resolve the model-dependent defaults in cfg, in place."""
    check_model_path(cfg.model.name_or_path)
    check_attention_kernel(cfg.model.attn_implementation)
    check_report_to(cfg.log.report_to)
    if getattr(getattr(cfg, "rollout", None), "engine", "hf") == "vllm":
        check_vllm()
    # lora.r unset continues the adapter a model path names (models.loading.load_model): LoRA's learning rate
    trains_adapter = bool(cfg.lora.r) or (cfg.lora.r is None and
                                          adapter_config(resolve_model_path(cfg.model.name_or_path)) is not None)
    notes = C.resolve_defaults(cfg, context_length(cfg.model.name_or_path, cfg.model.trust_remote_code),
                               trains_adapter)
    if notes and distributed.rank() == 0:
        print("; ".join(notes) + " — set them to choose", flush=True)
