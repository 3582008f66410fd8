"""Rollout: the generation engine, engine backends (built-in, vLLM), samplers, beam/exhaustive search,
text-level helpers and the log-prob check.

    from posttrain.rollout import SamplingParams, generate, generate_text
"""

from posttrain.rollout.backends import Engine, HFEngine, VLLMEngine, build_engine, inference_engine
from posttrain.rollout.engine import Generation, generate
from posttrain.rollout.samplers import SamplingParams
from posttrain.rollout.text import (completion_text, cut_at_stop, format_prompt, generate_text, stop_check,
                                    use_template)

__all__ = ["Engine", "Generation", "HFEngine", "SamplingParams", "VLLMEngine", "build_engine", "completion_text",
           "cut_at_stop", "format_prompt", "generate", "generate_text", "inference_engine", "stop_check",
           "use_template"]
