"""Engines: who turns token-id prompts into `Generation`s. Everything that samples (generate, chat, evaluation,
the RL loops) talks to this interface, so vLLM can stand in for the built-in engine on a GPU machine.

    engine.generate(prompts, params, seed=, step=, example_ids=, stop_sequence=) → list[Generation]

    engine.sync(model) → bytes sent   (after an optimizer step: the engine samples from the new weights)

`HFEngine` is the built-in engine (engine.py) over any HF causal LM in this process. `VLLMEngine`
(vllm_engine.py) runs the same requests through vLLM, in this process, on a GPU or with vLLM's CPU build. Both
follow the same contract: output prompt-major ([p0k0, p0k1, …]), sample k of prompt i seeded by
derive_seed(seed, step, example id, k) (vLLM's CPU build cannot seed a request: see vllm_engine.py), per-token
log-probs, and finish reasons "stop" | "stop_sequence" | "length". The two draw different random numbers, so
sampled tokens differ between engines; greedy outputs agree up to kernel numerics, and the log-probs of a given
token agree to the precision of the kernels (compare them with `posttrain.rollout.check.logprob_mismatch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from posttrain.errors import ConfigError, UserError
from posttrain.rollout.engine import Generation, generate
from posttrain.rollout.samplers import SamplingParams


class Engine(Protocol):
    reproducible: bool  # samples depend only on their seeds (not on the batch they are in)

    def generate(self, prompts: list[list[int]], params: SamplingParams, *, seed: int = 0, step: int = 0,
                 example_ids: list[int] | None = None,
                 stop_sequence: Callable[[list[int]], bool] | None = None) -> list[Generation]: ...

    def sync(self, model) -> int: ...

    def close(self) -> None: ...


@dataclass
class HFEngine:
    """The built-in engine (engine.generate) over a model in this process."""

    model: object
    eos_token_ids: list[int]
    pad_token_id: int
    batch_size: int = 64
    compile: bool = False

    reproducible = True  # every sample has its own seed

    def generate(self, prompts, params, *, seed=0, step=0, example_ids=None, stop_sequence=None):
        return generate(self.model, prompts, params, eos_token_ids=self.eos_token_ids,
                        pad_token_id=self.pad_token_id, seed=seed, step=step, batch_size=self.batch_size,
                        example_ids=example_ids, stop_sequence=stop_sequence, compile=self.compile)

    def sync(self, model) -> int:
        """Nothing to push: the engine samples from the trainer's own model. Returns the bytes sent (0)."""
        return 0

    def close(self) -> None:
        pass


def build_engine(rollout, model, tokenizer, model_path: str | None = None, *, logprobs: str = "raw",
                 seed: int = 0, max_model_len: int | None = None) -> Engine:
    """The engine a `rollout` config section asks for (RolloutConfig: engine, batch_size, compile, vllm_*).
    vLLM loads `model_path` itself; `logprobs` and `seed` are its (vllm_engine.VLLMEngine), the built-in engine
    reports both kinds of log-prob and seeds every sample."""
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    if rollout.engine == "hf":
        return HFEngine(model, eos, tokenizer.pad_token_id, batch_size=rollout.batch_size, compile=rollout.compile)
    if rollout.engine == "vllm":
        if model_path is None:
            raise ConfigError("rollout.engine=vllm needs a model directory on disk")
        if rollout.vllm_mode == "server":
            from posttrain.rollout.vllm_server import VLLMClient
            return VLLMClient(rollout.vllm_server or None, model_path, eos, logprobs=logprobs, seed=seed,
                              max_model_len=max_model_len, timeout=rollout.vllm_timeout)
        from posttrain.rollout.vllm_engine import VLLMEngine
        return VLLMEngine(model_path, eos, logprobs=logprobs, seed=seed, max_model_len=max_model_len,
                          gpu_memory_utilization=rollout.vllm_gpu_memory_utilization,
                          tensor_parallel_size=rollout.vllm_tensor_parallel_size)
    raise ConfigError(f"rollout.engine = {rollout.engine!r} is not one of: hf, vllm")


def inference_engine(rollout, model, tokenizer, full_model_dir: str) -> Engine:
    """The engine a `rollout` section asks for, for a model loaded from a directory
    (models.inference.load_for_inference): the built-in engine on `model`, or vLLM, which loads the plain model
    directory `full_model_dir` itself (models.loading.base_model_path: for a LoRA adapter, its base) and is then
    given `model`'s weights — so an adapter runs merged, without an export."""
    rollout.validate()
    if rollout.engine == "vllm":
        engine = build_engine(rollout, None, tokenizer, full_model_dir)
        engine.sync(model)
        return engine
    return build_engine(rollout, model, tokenizer)


__all__ = ["Engine", "HFEngine", "build_engine", "inference_engine"]
