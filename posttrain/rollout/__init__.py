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
    from posttrain.rollout.backends import Engine, HFEngine, VLLMEngine, build_engine
    from posttrain.rollout.engine import Generation, generate
    from posttrain.rollout.text import format_prompt, generate_text

# a name → the module of this package that defines it
_LAZY = {"Engine": "backends", "HFEngine": "backends", "VLLMEngine": "backends", "build_engine": "backends",
         "Generation": "engine", "generate": "engine", "format_prompt": "text", "generate_text": "text"}

__all__ = ["Engine", "Generation", "HFEngine", "SamplingParams", "VLLMEngine", "build_engine", "format_prompt",
           "generate", "generate_text"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value  # later lookups find it without this function
    return value
