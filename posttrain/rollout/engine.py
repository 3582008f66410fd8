"""The generation engine: batched sampling with a KV cache for any Hugging Face causal LM.

It sees only token ids, a model, sampling parameters and seeds (DESIGN §3) and returns, per sample, the
completion ids, the log-probability of each sampled token under the raw model distribution and under the
distribution actually sampled from, and why it stopped.

    prefill   the prompts, left-padded into one batch, run once; the KV cache holds their keys/values
    decode    one token per step for every unfinished row: process logits (samplers.py), draw, record log-probs
    retire    rows that hit a stop token, a stop sequence or the length limit leave the batch, and the cache
              rows with them (`Cache.batch_select_indices`): finished sequences cost nothing afterwards

Randomness is per sample: the draw for sample k of prompt i at position t uses uniforms from a generator
seeded by derive_seed(derive_seed(seed, step, example id, k), t). A sample therefore does not depend on what else is in the batch,
on batch size, or on when other rows finish.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from posttrain.rollout.samplers import SamplingParams, derive_seed, logprobs_of, process_logits, row_uniforms, sample


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
             stop_sequence: Callable[[list[int]], bool] | None = None) -> list[Generation]:
    """Sample `params.n` completions for every prompt. Returns them prompt-major: [p0k0, p0k1, …, p1k0, …].

    prompts: token ids (no padding). eos_token_ids: stop tokens (params.stop_token_ids are added).
    example_ids: a stable id per prompt (e.g. its dataset index) that seeds its samples; default 0..N-1.
    stop_sequence(completion_ids) → True ends a row (the caller decodes and looks for stop strings).
    """
    params.validate()
    example_ids = list(range(len(prompts))) if example_ids is None else list(example_ids)
    jobs = [Generation(i, k) for i in range(len(prompts)) for k in range(params.n)]
    stop_ids = set(eos_token_ids) | set(params.stop_token_ids)
    was_training = model.training
    model.eval()
    for start in range(0, len(jobs), batch_size):
        _generate_batch(model, prompts, jobs[start:start + batch_size], params, stop_ids, pad_token_id,
                        [derive_seed(seed, step, example_ids[j.prompt_index], j.sample_index)
                         for j in jobs[start:start + batch_size]], stop_sequence)
    model.train(was_training)
    return jobs


def _generate_batch(model, prompts, jobs: list[Generation], params: SamplingParams, stop_ids: set[int],
                    pad_token_id: int, sample_seeds: list[int], stop_sequence) -> None:
    device = next(model.parameters()).device
    # ---- prefill: left-pad so every row's next token sits in the last column -----------------------------------------
    ids = [prompts[job.prompt_index] for job in jobs]
    width = max(map(len, ids))
    input_ids = torch.tensor([[pad_token_id] * (width - len(x)) + x for x in ids], device=device)
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in ids], device=device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1].float()
    history = input_ids.masked_fill(mask == 0, -1) if params.repetition_penalty != 1.0 else None

    active = list(range(len(jobs)))  # indices into `jobs` of the rows still in the batch, in batch order
    for t in range(params.max_new_tokens):
        # ---- algorithm: process, draw, record ----------------------------------------------------------------------
        processed = process_logits(logits, params, history)
        uniforms = None if params.greedy else row_uniforms([derive_seed(sample_seeds[j], t) for j in active],
                                                          logits.shape[-1]).to(device)
        tokens = sample(processed, uniforms)
        raw_lp, sampled_lp = logprobs_of(logits, tokens), logprobs_of(processed, tokens)
        keep = []
        for row, j in enumerate(active):
            job, token = jobs[j], int(tokens[row])
            job.completion_ids.append(token)
            job.logprobs.append(float(raw_lp[row]))
            job.sampling_logprobs.append(float(sampled_lp[row]))
            if token in stop_ids:
                job.finish_reason = "stop"
            elif stop_sequence is not None and stop_sequence(job.completion_ids):
                job.finish_reason = "stop_sequence"
            else:
                keep.append(row)
        if not keep or t == params.max_new_tokens - 1:
            break
        # ---- plumbing: retire finished rows, then feed the new tokens ----------------------------------------------
        if len(keep) < len(active):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, positions, tokens = mask[index], positions[index], tokens[index]
            history = history[index] if history is not None else None
            active = [active[row] for row in keep]
        mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
        positions = positions[:, -1:] + 1
        if history is not None:
            history = torch.cat([history, tokens[:, None]], dim=1)
        out = model(input_ids=tokens[:, None], attention_mask=mask, position_ids=positions,
                    past_key_values=cache, use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1].float()
