"""The generation engine: batched sampling with a KV cache for any Hugging Face causal LM.

It sees only token ids, a model, sampling parameters and seeds (DESIGN §3) and returns, per sample, the
completion ids, the log-probability of each sampled token under the raw model distribution and under the
distribution actually sampled from, and why it stopped.

    prefill   the prompts, left-padded into one batch, run once; the KV cache holds their keys/values
    decode    one token per step for every live row: process logits (samplers.py), draw, record log-probs
    retire    rows that hit a stop token, a stop sequence or the length limit leave the batch, and their
              cache rows with them: finished sequences cost nothing afterwards

Two caches (`cache=`):
    "dynamic"  HF's DynamicCache, grown by one column per step; rows retire the step they finish.
    "static"   HF's StaticCache, preallocated to prompt width + max_new_tokens, written in place. Fixed shapes
               are what `compile=True` needs (torch.compile of the decode step; compiled once per model, then
               reused). Finished rows are carried, masked out, until at most half the batch is live, then the
               batch is compacted — a shape change costs one recompile the first time it happens.

Randomness is per sample: sample k of prompt i owns the seed derive_seed(seed, step, example id, k), and its
token at position t is drawn with the uniform position_uniforms(that seed, t). A sample therefore does not depend
on what else is in the batch, on the batch size, on the cache, or on when other rows finish.

Per step the loop does a fixed number of tensor ops whatever the batch size: tokens and log-probs go into
preallocated [rows, max_new_tokens] buffers, and the only per-row Python is the optional stop_sequence check.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers import DynamicCache, StaticCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from posttrain.rollout.samplers import (SamplingParams, derive_seed, logprobs_of, position_uniforms, process_logits,
                                       sample)

# transformers 5 renames the forward argument `past_key_values` to `cache` (the old name warns, and goes in 5.40).
# Models take the name their outputs carry; pass the KV cache under that one.
CACHE_ARG = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"

FINISH_REASONS = ("length", "stop", "stop_sequence")  # codes 0, 1, 2 in the engine's buffers


@dataclass
class Generation:
    """One sampled completion."""

    prompt_index: int
    sample_index: int
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)            # log π(token) of the raw model (T = 1)
    sampling_logprobs: list[float] = field(default_factory=list)   # log q(token), q = the processed distribution
    finish_reason: str = "length"                                  # "stop" | "stop_sequence" | "length"


@torch.no_grad()
def generate(model, prompts: list[list[int]], params: SamplingParams, *, eos_token_ids: list[int],
             pad_token_id: int, seed: int = 0, step: int = 0, batch_size: int = 64,
             example_ids: list[int] | None = None,
             stop_sequence: Callable[[list[int]], bool] | None = None,
             cache: str = "dynamic", compile: bool = False) -> list[Generation]:
    """Sample `params.n` completions for every prompt. Returns them prompt-major: [p0k0, p0k1, …, p1k0, …].

    prompts: token ids (no padding). eos_token_ids: stop tokens (params.stop_token_ids are added).
    example_ids: a stable id per prompt (e.g. its dataset index) that seeds its samples; default 0..N-1.
    stop_sequence(completion_ids) → True ends a row (the caller decodes and looks for stop strings).
    cache: "dynamic" or "static"; compile=True compiles the decode step (and implies the static cache).
    """
    params.validate()
    if cache not in ("dynamic", "static"):
        raise ValueError(f"cache must be 'dynamic' or 'static', not {cache!r}")
    example_ids = list(range(len(prompts))) if example_ids is None else list(example_ids)
    jobs = [Generation(i, k) for i in range(len(prompts)) for k in range(params.n)]
    stop_ids = sorted(set(eos_token_ids) | set(params.stop_token_ids))
    decoder_class = StaticDecoder if (compile or cache == "static") else DynamicDecoder
    was_training = model.training
    model.eval()
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start:start + batch_size]
        seeds = [derive_seed(seed, step, example_ids[j.prompt_index], j.sample_index) for j in batch]
        decoder = decoder_class(model, compile=compile)
        _generate_batch(decoder, [prompts[j.prompt_index] for j in batch], batch, seeds, params, stop_ids,
                        pad_token_id, stop_sequence)
    model.train(was_training)
    return jobs


def _generate_batch(decoder, prompts: list[list[int]], jobs: list[Generation], seeds: list[int],
                    params: SamplingParams, stop_ids: list[int], pad_token_id: int, stop_sequence) -> None:
    device = next(decoder.model.parameters()).device
    rows, new = len(jobs), params.max_new_tokens
    # ---- prefill: left-pad, so every row's next token sits in the same column -------------------------------------
    width = max(map(len, prompts))
    input_ids = torch.tensor([[pad_token_id] * (width - len(x)) + x for x in prompts], device=device)
    mask = torch.zeros(rows, width + new, dtype=torch.long, device=device)  # grows one column per step
    for r, x in enumerate(prompts):
        mask[r, width - len(x):width] = 1
    positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
    logits = decoder.prefill(input_ids, mask, positions)
    positions = positions[:, -1:]
    history = None
    if params.repetition_penalty != 1.0:  # prompt + completion ids, -1 where nothing is
        history = torch.full((rows, width + new), -1, dtype=torch.long, device=device)
        history[:, :width] = input_ids.masked_fill(mask[:, :width] == 0, -1)

    # ---- outputs, one row per job; `job_of[b]` = the job in batch row b, `live[b]` = still generating -------------
    tokens_out = torch.full((rows, new), -1, dtype=torch.long, device=device)
    raw_out = torch.zeros(rows, new, device=device)
    sampled_out = torch.zeros(rows, new, device=device)
    reason = torch.zeros(rows, dtype=torch.long, device=device)   # index into FINISH_REASONS
    length = torch.full((rows,), new, dtype=torch.long, device=device)
    job_of = torch.arange(rows, device=device)
    live = torch.ones(rows, dtype=torch.bool, device=device)
    row_seeds = torch.tensor(seeds, dtype=torch.int64, device=device)
    stop_tensor = torch.tensor(stop_ids, dtype=torch.long, device=device)

    for t in range(new):
        # ---- algorithm: process, draw, record --------------------------------------------------------------------
        processed = process_logits(logits, params, None if history is None else history[:, :width + t])
        uniforms = None if params.greedy else position_uniforms(row_seeds, t)
        tokens = sample(processed, uniforms)
        # Rows already finished (carried by the static cache) write too: past their length, nothing is read.
        tokens_out[job_of, t] = tokens
        raw_out[job_of, t] = raw = logprobs_of(logits, tokens)
        sampled_out[job_of, t] = raw if processed is logits else logprobs_of(processed, tokens)
        finished = live & torch.isin(tokens, stop_tensor)
        if stop_sequence is not None:
            for b in (live & ~finished).nonzero().flatten().tolist():
                if stop_sequence(tokens_out[job_of[b], :t + 1].tolist()):
                    finished[b] = True
                    reason[job_of[b]] = 2
        keep = None
        if finished.any():  # the one host sync of a step
            done = job_of[finished]
            reason[done] = torch.where(reason[done] == 2, 2, 1)
            length[done] = t + 1
            live &= ~finished
            if not live.any():
                break
            keep = decoder.retire(live)
        if t == new - 1:
            break
        # ---- plumbing: drop retired rows, feed the new tokens ----------------------------------------------------
        if keep is not None:
            mask, positions, tokens, job_of, live, row_seeds = (
                x[keep] for x in (mask, positions, tokens, job_of, live, row_seeds))
            history = history[keep] if history is not None else None
        mask[:, width + t] = 1
        positions = positions + 1
        if history is not None:
            history[:, width + t] = tokens
        logits = decoder.step(tokens[:, None], mask, positions, width + t + 1)

    # ---- hand the buffers back as lists, one conversion for the whole batch ----------------------------------------
    for j, (ids, raw, sampled, n, why) in enumerate(zip(tokens_out.tolist(), raw_out.tolist(),
                                                        sampled_out.tolist(), length.tolist(), reason.tolist())):
        jobs[j].completion_ids, jobs[j].logprobs, jobs[j].sampling_logprobs = ids[:n], raw[:n], sampled[:n]
        jobs[j].finish_reason = FINISH_REASONS[why]


# ---------------------------------------------------------------------------------------------------------
# Decoders: the model and its KV cache. prefill/step return the float32 logits of each row's last position;
# retire(live), called when rows have just finished, returns the batch rows to keep (and drops the others from
# the cache) or None to keep the batch as it is.
# ---------------------------------------------------------------------------------------------------------

class DynamicDecoder:
    """HF's DynamicCache: the cache grows by one column per step; finished rows leave at once."""

    def __init__(self, model, compile: bool = False):
        self.model, self.cache = model, DynamicCache()

    def prefill(self, input_ids, mask, positions) -> torch.Tensor:
        width = input_ids.shape[1]
        out = self.model(input_ids=input_ids, attention_mask=mask[:, :width], position_ids=positions,
                         **{CACHE_ARG: self.cache}, use_cache=True)
        return out.logits[:, -1].float()

    def step(self, tokens, mask, positions, length: int) -> torch.Tensor:
        out = self.model(input_ids=tokens, attention_mask=mask[:, :length], position_ids=positions,
                         **{CACHE_ARG: self.cache}, use_cache=True)
        return out.logits[:, -1].float()

    def retire(self, live: torch.Tensor) -> torch.Tensor | None:
        keep = live.nonzero().flatten()
        self.cache.batch_select_indices(keep)
        return keep


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → its compiled decode step


def _compiled_step(model) -> Callable:
    if model not in _COMPILED:
        def decode(tokens, cache, mask, positions):
            return model(input_ids=tokens, attention_mask=mask, position_ids=positions, **{CACHE_ARG: cache},
                         use_cache=True).logits[:, -1].float()
        _COMPILED[model] = torch.compile(decode)
    return _COMPILED[model]


class StaticDecoder:
    """HF's StaticCache: keys/values preallocated for the whole generation and written in place, so every decode
    step has the same shapes — what torch.compile needs. The mask always spans the full cache (future columns
    are 0 until written). Rows are compacted once at most half of them are live."""

    def __init__(self, model, compile: bool = False):
        self.model, self.cache = model, None
        self.forward = _compiled_step(model) if compile else self._eager_step

    def _eager_step(self, tokens, cache, mask, positions):
        return self.model(input_ids=tokens, attention_mask=mask, position_ids=positions, **{CACHE_ARG: cache},
                          use_cache=True).logits[:, -1].float()

    def prefill(self, input_ids, mask, positions) -> torch.Tensor:
        self.cache = StaticCache(config=self.model.config, max_cache_len=mask.shape[1])
        return self._eager_step(input_ids, self.cache, mask, positions)

    def step(self, tokens, mask, positions, length: int) -> torch.Tensor:
        return self.forward(tokens, self.cache, mask, positions)

    def retire(self, live: torch.Tensor) -> torch.Tensor | None:
        if 2 * int(live.sum()) > live.numel():
            return None
        keep = live.nonzero().flatten()
        for layer in self.cache.layers:  # a smaller batch: copy the live rows into fresh static tensors
            layer.keys, layer.values = layer.keys[keep], layer.values[keep]
            layer.batch_size = len(keep)
        return keep
