"""A model's outputs where the loops need them: logits at the trained positions, summed response log-probs, a
head's output on right-padded examples — the forward passes every loop and scorer shares, written once.

    forward_logits(model, batch)              (logits [R, K, V], targets [R, K]) at the K positions with a target
    logits_at_targets(model, batch)           (logits [R, K, V], the K positions), for callers that need both
    target_logprobs(model, batch, chunk=…)    log π(target) (and the entropy) [R, K] at those positions, the output
                                              layer applied `chunk` positions at a time (no [R, K, V] logits)
    reduce_at_targets(model, batch, reduce)   the same machinery for any per-position reduction of the logits
    hidden_at_targets(model, batch)           the final hidden states [N, H] at the N target positions
    sequence_logps(model, batch, E)           Σ_t log π(token t) per example, and its token count → ([E], [E])
    padded_forward(model, examples, pad_id)   the output ([E, T, …]) of right-padded examples (reward heads)

`batch` is what `data.collate` makes (input_ids, position_ids, targets, seq_index, attention_mask when padded),
on the model's device; targets are IGNORE_INDEX where no token is predicted.

The chunked output layer. The logits [R, K, V] of a training batch (V = 49k for SmolLM2, 152k for Qwen) and the
float32 log-softmax autograd keeps for the backward are often the largest tensors of a step. `reduce_at_targets`
runs the model once, but its output layer ("head": `get_output_embeddings()`, a LoRA on it included) receives an
empty slice; the head's real input — the final hidden states at the kept positions — goes to
`algos.logprobs.chunked_reduce`, which applies the head to `chunk` positions at a time, reduces each chunk at once
(the target's log-prob, the entropy, a divergence) and recomputes it in the backward. Forward hooks on the head do
the redirection, so the call still goes through the wrappers the loops use (PEFT, DDP, FSDP2: the reduced values
come back as the output's `logits`, and the gradient flows into the model's forward as usual). This is exact only
when the model's logits ARE the head's output; a model that post-processes them (Gemma-2's final logit
soft-capping, Cohere's logit_scale, Granite's logits_scaling …) would silently lose that step. So `chunkable_head`
checks it once per model with a one-token forward — is `output.logits` the very tensor the head returned? — and
a model that fails takes the full-logits path.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from functools import partial
from typing import Callable, Sequence

import torch

from posttrain import distributed
from posttrain.algos.logprobs import (IGNORE_INDEX, LOGITS_CHUNK, chunked_reduce, logprobs_and_entropy,
                                      token_entropy, token_logprobs)
from posttrain.data import collate


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def autocast(precision: str, device: torch.device):
    """bf16: autocast the forward pass, master weights stay fp32. fp32: no-op."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def target_positions(targets: torch.Tensor) -> torch.Tensor:
    """The column indices [K] at which some row of targets [R, T] has a target.

    Example: targets [[-100, 5, -100], [-100, -100, -100]] → [1].
    """
    return (targets != IGNORE_INDEX).any(0).nonzero().squeeze(-1)


def forward_logits(model, batch: dict, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits only where they are needed: (logits [R, K, V], targets [R, K]) for the K positions at which
    some row has a target.

    The output head and the softmax are the costliest part of the forward pass for real vocabularies
    (150k × hidden for Qwen); prompt positions need neither. transformers' `logits_to_keep` takes the
    position indices, so this works for any model that supports it (and through PEFT wrappers).
    """
    logits, keep = logits_at_targets(model, batch, precision)
    return logits, batch["targets"][:, keep]


def logits_at_targets(model, batch: dict, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [R, K, V] at the K positions where some row has a target, those positions [K]): one forward with
    logits_to_keep. For callers that gather more than the targets at those positions (seq_index, position_ids)."""
    keep = target_positions(batch["targets"])
    return _forward(model, batch, keep, precision).logits, keep


def _forward(model, batch: dict, keep: torch.Tensor, precision: str):
    with autocast(precision, batch["input_ids"].device):
        return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                     position_ids=batch["position_ids"], use_cache=False, logits_to_keep=keep)


# ---------------------------------------------------------------------------------------------------------------------
# The chunked output layer
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class TargetLogprobs:
    """What `target_logprobs` returns: all [R, K] at the K kept positions, 0 where a row has no target."""

    logps: torch.Tensor                 # log π(target) in float32
    entropy: torch.Tensor | None        # the next-token distribution's entropy (nats), when asked for
    targets: torch.Tensor               # the target ids (IGNORE_INDEX where none)
    keep: torch.Tensor                  # [K] the kept columns of the batch


def target_logprobs(model, batch: dict, precision: str = "fp32", *, chunk: int = LOGITS_CHUNK,
                    temperature: float = 1.0, entropy: bool = False, entropy_grad: bool = True) -> TargetLogprobs:
    """log π(target) under softmax(logits / temperature) at every position with a target, and optionally the
    entropy there (entropy_grad=False: without gradient, for logging).

    chunk > 0 (and a model whose logits are its head's output): the output layer runs `chunk` positions at a time
    and the logits never exist whole, backward included (see the module docstring). chunk 0, or any other model:
    one forward with the full logits [R, K, V] at the kept positions. Both give the same values and gradients, up
    to float summation order.

    Example: a target with probability 0.25 → logps −1.3863 there; its row's padding → 0.
    """
    keep = target_positions(batch["targets"])
    targets = batch["targets"][:, keep]
    found = targets != IGNORE_INDEX
    if chunk > 0 and chunkable_head(model) is not None:
        reduce = partial(logprobs_and_entropy, temperature=temperature, entropy=entropy, entropy_grad=entropy_grad)
        values = reduce_at_targets(model, batch, reduce, columns=(targets[found],), chunk=chunk, precision=precision)
        return TargetLogprobs(values[0], values[1] if entropy else None, targets, keep)
    logits = _forward(model, batch, keep, precision).logits
    if temperature != 1.0:
        logits = logits.float() / temperature  # the policy is the distribution sampled from
    ent = None
    if entropy:
        with torch.set_grad_enabled(torch.is_grad_enabled() and entropy_grad):
            ent = torch.zeros(targets.shape, device=logits.device).index_put((found,), token_entropy(logits[found]))
    return TargetLogprobs(token_logprobs(logits, targets), ent, targets, keep)


def reduce_at_targets(model, batch: dict, reduce: Callable[..., tuple[torch.Tensor, ...]], *,
                      columns: Sequence[torch.Tensor] = (), chunk: int = LOGITS_CHUNK,
                      precision: str = "fp32") -> list[torch.Tensor]:
    """One forward of `model`; at the N positions with a target, reduce(logits [n, V], *column rows) → a tuple of
    [n] float32 tensors per chunk of n ≤ chunk positions (columns: [N, …] tensors in the order of those
    positions, row-major) → a list of [R, K] tensors at the kept positions (0 where no target).

    Needs `chunkable_head(model)`; the head's matmul runs under the forward's autocast, the reduction decides its own
    precision (`logprobs_and_entropy`: float32).
    """
    head = _required_head(model)
    keep = target_positions(batch["targets"])
    found = batch["targets"][:, keep] != IGNORE_INDEX

    def reduced(hidden: torch.Tensor) -> torch.Tensor:  # [R, K, H] → [R, K, m]
        values = chunked_reduce(hidden[found], head, reduce, columns, chunk)
        return torch.stack([hidden.new_zeros(found.shape, dtype=v.dtype).index_put((found,), v) for v in values], -1)

    return list(_through_head(model, head, batch, keep, precision, reduced).unbind(-1))


def hidden_at_targets(model, batch: dict, precision: str = "fp32") -> torch.Tensor:
    """The final hidden states [N, H] (the output layer's input) at the N positions with a target, row-major —
    what a second model's reduction needs beside the first's (distillation: the teacher's). Needs
    `chunkable_head(model)`."""
    keep = target_positions(batch["targets"])
    found = batch["targets"][:, keep] != IGNORE_INDEX
    return _through_head(model, _required_head(model), batch, keep, precision, lambda hidden: hidden[found])


def _required_head(model) -> torch.nn.Module:
    head = chunkable_head(model)
    if head is None:
        raise ValueError(f"{type(distributed.unwrap(model)).__name__}'s logits are not its output layer's output "
                         "(see chunkable_head): use the full logits")
    return head


def _through_head(model, head: torch.nn.Module, batch: dict, keep: torch.Tensor, precision: str,
                  instead: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """One forward in which the head gets an empty slice of its input and `instead(input)` becomes its output,
    hence the model's `logits` ([R, K, H] → whatever `instead` returns). Calls of the head from inside `instead`
    pass through untouched."""
    state: dict = {"inside": False}

    def before(module, args):
        if state["inside"]:
            return None
        state["hidden"] = args[0]
        return (args[0][..., :0, :], *args[1:])  # the head's matmul on zero positions: nothing computed

    def after(module, args, output):
        if state["inside"]:
            return None
        state["inside"] = True
        try:
            state["out"] = instead(state.pop("hidden"))
        finally:
            state["inside"] = False
        return state["out"]

    handles = [head.register_forward_pre_hook(before), head.register_forward_hook(after)]
    try:
        logits = _forward(model, batch, keep, precision).logits
    finally:
        for handle in handles:
            handle.remove()
    if "out" not in state or logits is not state["out"]:
        raise RuntimeError(f"{type(distributed.unwrap(model)).__name__} changed its output layer's result; "
                           "compute its logits with train.logits_chunk=0")
    return logits


# Output layer → whether the model's logits are exactly its output (checked once per model).
_CHUNKABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def chunkable_head(model) -> torch.nn.Module | None:
    """The model's output layer when its logits are exactly that layer's output at the kept positions, else None.

    Detected, not guessed from the architecture: one forward of two tokens (no gradient, the random state kept)
    with a hook on the layer, asking whether `output.logits` is the very tensor the layer returned, once per model.
    Llama, Qwen2, Qwen2-MoE, Mixtral, GPT-2 pass; Gemma-2 (soft-capping), Cohere, Granite (logit scaling) do not.
    """
    inner = distributed.unwrap(model)
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if not isinstance(head, torch.nn.Module):
        return None
    if head not in _CHUNKABLE:
        _CHUNKABLE[head] = _logits_are_head_output(inner, head)
    return head if _CHUNKABLE[head] else None


@torch.no_grad()
def _logits_are_head_output(model, head: torch.nn.Module) -> bool:
    returned = []
    handle = head.register_forward_hook(lambda module, args, output: returned.append(output))
    device = device_of(model)
    ids = torch.zeros(1, 2, dtype=torch.long, device=device)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            out = model(input_ids=ids, position_ids=torch.arange(2, device=device)[None], use_cache=False,
                        logits_to_keep=torch.tensor([1], device=device))
    finally:
        handle.remove()
    return len(returned) == 1 and getattr(out, "logits", None) is returned[0]


# ---------------------------------------------------------------------------------------------------------------------
# Sums per example; right-padded outputs
# ---------------------------------------------------------------------------------------------------------------------

def sequence_logps(model, batch: dict, num_sequences: int, precision: str = "fp32", chunk: int = LOGITS_CHUNK
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_t log π(target t) of each of the batch's num_sequences examples, and its count of targets → ([E], [E]).

    One forward, log-probs only at target positions (`target_logprobs`, chunked unless chunk = 0); the per-token
    log-probs are added up per example through seq_index, so packed and padded batches give the same sums. What
    DPO and its family compare.

    Example: an example whose two targets have probabilities 0.5 and 0.25 → (ln 0.5 + ln 0.25 = −2.0794, 2).
    """
    out = target_logprobs(model, batch, precision, chunk=chunk)
    seq = batch["seq_index"][:, out.keep]
    mask = out.targets != IGNORE_INDEX
    device = batch["input_ids"].device
    sums = torch.zeros(num_sequences, device=device, dtype=torch.float32).index_add(0, seq[mask], out.logps[mask])
    counts = torch.zeros(num_sequences, device=device).index_add(0, seq[mask], torch.ones_like(out.logps[mask]))
    return sums, counts


def padded_forward(model, examples: list[dict], pad_id: int, precision: str = "fp32") -> torch.Tensor:
    """The model's output logits for tokenized examples, one per row, right-padded: [E, T, …] (a score head's
    output for reward models). With causal attention, padding on the right changes no real token's output."""
    device = device_of(model)
    batch = collate(examples, pad_id=pad_id, packing=False)
    with autocast(precision, device):
        return model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                     use_cache=False).logits
