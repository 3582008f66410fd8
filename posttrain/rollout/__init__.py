"""Rollout: the generation engine, samplers, beam/exhaustive search, and text-level helpers.

    from posttrain.rollout import SamplingParams, generate, generate_text
"""

from posttrain.rollout.engine import Generation, generate
from posttrain.rollout.samplers import SamplingParams
from posttrain.rollout.text import format_prompt, generate_text

__all__ = ["Generation", "SamplingParams", "format_prompt", "generate", "generate_text"]
