"""Engines: who turns token-id prompts into `Generation`s. Everything that samples (generate, chat, evaluation,
the RL loops) talks to this interface, so vLLM can stand in for the built-in engine on a GPU machine.

    engine.generate(prompts, params, seed=, step=, example_ids=, stop_sequence=) → list[Generation]

`HFEngine` is the built-in engine (engine.py) over any HF causal LM in this process. `VLLMEngine` runs the
same requests through vLLM (`pip install 'posttrain[vllm]'`, CUDA only). Both follow the same contract: output
prompt-major ([p0k0, p0k1, …]), sample k of prompt i seeded by derive_seed(seed, step, example id, k), the
raw-model log-prob of every sampled token, and finish reasons "stop" | "stop_sequence" | "length". The two
draw different random numbers, so sampled tokens differ between engines; greedy outputs agree up to kernel
numerics, and the log-probs of a given token agree to the precision of the kernels (compare them with
`posttrain.rollout.check.logprob_mismatch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from posttrain.errors import ConfigError, UserError
from posttrain.rollout.engine import Generation, generate
from posttrain.rollout.samplers import SamplingParams, derive_seed


class Engine(Protocol):
    def generate(self, prompts: list[list[int]], params: SamplingParams, *, seed: int = 0, step: int = 0,
                 example_ids: list[int] | None = None,
                 stop_sequence: Callable[[list[int]], bool] | None = None) -> list[Generation]: ...


@dataclass
class HFEngine:
    """The built-in engine (engine.generate) over a model in this process."""

    model: object
    eos_token_ids: list[int]
    pad_token_id: int
    batch_size: int = 64
    compile: bool = False

    def generate(self, prompts, params, *, seed=0, step=0, example_ids=None, stop_sequence=None):
        return generate(self.model, prompts, params, eos_token_ids=self.eos_token_ids,
                        pad_token_id=self.pad_token_id, seed=seed, step=step, batch_size=self.batch_size,
                        example_ids=example_ids, stop_sequence=stop_sequence, compile=self.compile)


@dataclass
class VLLMEngine:
    """vLLM behind the engine interface. `model_path` is a plain HF model directory (export LoRA runs first).

    Each sample is its own vLLM request with n = 1 and seed derive_seed(seed, step, example, k), so a sample's
    randomness is its own, as in the built-in engine. vLLM reports one kind of log-prob; the engine asks for
    the raw model's (`logprobs_mode="raw_logprobs"`), which is what RL needs. `sampling_logprobs` equals it when
    the sampling distribution is the raw one (temperature 1, no truncation, no penalty — the RL setting) and is
    left empty otherwise. Stop strings are handled by vLLM itself (`params.stop_strings`).
    """

    model_path: str
    eos_token_ids: list[int] = field(default_factory=list)
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    llm: object = None

    def __post_init__(self):
        try:
            import vllm
        except ImportError as e:
            raise UserError("rollout.engine=vllm needs vLLM — fix: pip install 'posttrain[vllm]' on a CUDA "
                            "machine, or use rollout.engine=hf") from e
        import torch
        if not torch.cuda.is_available():
            raise UserError("rollout.engine=vllm needs a CUDA GPU and none is visible — fix: rollout.engine=hf")
        self.llm = vllm.LLM(model=self.model_path, dtype=self.dtype, tensor_parallel_size=self.tensor_parallel_size,
                            gpu_memory_utilization=self.gpu_memory_utilization, logprobs_mode="raw_logprobs",
                            enable_prefix_caching=True)

    def generate(self, prompts, params, *, seed=0, step=0, example_ids=None, stop_sequence=None):
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        params.validate()
        example_ids = list(range(len(prompts))) if example_ids is None else list(example_ids)
        jobs = [Generation(i, k) for i in range(len(prompts)) for k in range(params.n)]
        requests, request_params = [], []
        for job in jobs:
            requests.append(TokensPrompt(prompt_token_ids=list(prompts[job.prompt_index])))
            request_params.append(VSamplingParams(
                n=1, temperature=params.temperature, top_k=params.top_k if params.top_k > 0 else -1,
                top_p=params.top_p, min_p=params.min_p, repetition_penalty=params.repetition_penalty,
                max_tokens=params.max_new_tokens, stop=list(params.stop_strings) or None,
                stop_token_ids=sorted(set(self.eos_token_ids) | set(params.stop_token_ids)) or None,
                seed=derive_seed(seed, step, example_ids[job.prompt_index], job.sample_index),
                logprobs=0, skip_special_tokens=True))
        outputs = self.llm.generate(requests, request_params, use_tqdm=False)
        unprocessed = (params.temperature == 1.0 and params.top_k == 0 and params.top_p == 1.0
                       and params.min_p == 0.0 and params.repetition_penalty == 1.0)
        for job, output in zip(jobs, outputs):
            completion = output.outputs[0]
            job.completion_ids = list(completion.token_ids)
            job.logprobs = [entry[token].logprob for token, entry in zip(completion.token_ids, completion.logprobs)]
            job.sampling_logprobs = list(job.logprobs) if unprocessed else []
            job.finish_reason = vllm_finish_reason(completion.finish_reason, completion.stop_reason)
        return jobs


def vllm_finish_reason(finish_reason: str | None, stop_reason: int | str | None) -> str:
    """vLLM's (finish_reason, stop_reason) → ours: a stop string → "stop_sequence", eos or a stop token →
    "stop", the length limit → "length".

    Example: ("stop", "\\n\\n") → "stop_sequence"; ("stop", None) → "stop" (eos); ("stop", 7) → "stop" (token
    id 7); ("length", None) → "length".
    """
    if finish_reason == "length":
        return "length"
    return "stop_sequence" if isinstance(stop_reason, str) else "stop"


def build_engine(rollout, model, tokenizer, model_path: str | None = None) -> Engine:
    """The engine a `rollout` config section asks for (RolloutConfig: engine, batch_size, compile, vllm_*)."""
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    if rollout.engine == "hf":
        return HFEngine(model, eos, tokenizer.pad_token_id, batch_size=rollout.batch_size, compile=rollout.compile)
    if rollout.engine == "vllm":
        if model_path is None:
            raise ConfigError("rollout.engine=vllm needs a model directory on disk")
        return VLLMEngine(model_path, eos, gpu_memory_utilization=rollout.vllm_gpu_memory_utilization,
                          tensor_parallel_size=rollout.vllm_tensor_parallel_size)
    raise ConfigError(f"rollout.engine = {rollout.engine!r} is not one of: hf, vllm")


def inference_engine(rollout, model, tokenizer, path: Path) -> Engine:
    """The engine a `rollout` section asks for, for a model loaded from the directory `path`
    (models.inference.load_for_inference): the built-in engine on `model`, or vLLM, which loads the directory
    itself — so a LoRA adapter must be merged first."""
    rollout.validate()
    if rollout.engine == "vllm":
        if (path / "adapter_config.json").is_file():
            raise UserError(f"vLLM needs a full model, and {path} is a LoRA adapter — fix: posttrain export "
                            f"{path} merged/ and pass model=merged")
        del model  # vLLM holds its own copy on the GPU
        return build_engine(rollout, None, tokenizer, str(path))
    return build_engine(rollout, model, tokenizer)


__all__ = ["Engine", "HFEngine", "VLLMEngine", "build_engine", "inference_engine", "vllm_finish_reason"]
