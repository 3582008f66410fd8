"""Rollout: the generation engine, engine backends (built-in, vLLM), samplers, beam/exhaustive search,
text-level helpers and the log-prob check.

    from posttrain.rollout import SamplingParams, generate, generate_text

`SamplingParams` (params.py) is imported at once: it is also a config section, and `posttrain.config` imports it
from here without needing torch. The engine's names load on first use (PEP 562), so reading a config or printing
`--help` does not import torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from posttrain.rollout.params import SamplingParams

if TYPE_CHECKING:
    from posttrain.rollout.backends import Engine, HFEngine, build_engine, inference_engine
    from posttrain.rollout.vllm_engine import VLLMEngine
    from posttrain.rollout.engine import Generation, generate
    from posttrain.rollout.text import (completion_text, cut_at_stop, format_prompt, generate_text, stop_check,
                                        use_template)

# a name → the module of this package that defines it
_LAZY = {"Engine": "backends", "HFEngine": "backends", "VLLMEngine": "vllm_engine", "build_engine": "backends",
         "inference_engine": "backends", "Generation": "engine", "generate": "engine", "completion_text": "text",
         "cut_at_stop": "text", "format_prompt": "text", "generate_text": "text", "stop_check": "text",
         "use_template": "text"}

__all__ = ["Engine", "Generation", "HFEngine", "SamplingParams", "VLLMEngine", "build_engine", "completion_text",
           "cut_at_stop", "format_prompt", "generate", "generate_text", "inference_engine", "stop_check",
           "use_template"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value  # later lookups find it without this function
    return value
