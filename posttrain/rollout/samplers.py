"""Next-token sampling: small pure functions over a batch of logits.

Every warper takes logits [B, V] and returns logits [B, V] with the filtered entries set to -inf, so they
compose. `process_logits` applies them in the same order as Hugging Face's logits processors, so a row
processed here equals the row `model.generate(do_sample=True, ...)` samples from:

    repetition penalty → temperature → top-k → top-p → min-p

The first one is a *processor* (it changes which token is most likely); the other four are *warpers*
(they reshape or truncate the distribution but never change its argmax). HF applies processors in greedy
decoding too and warpers only when sampling; `process_logits` does the same.

Sampling itself is inverse-CDF sampling driven by one explicit uniform per row, `sample(processed, uniforms)`,
and the uniform of a row comes from that row's own seed and the position (`derive_seed`, `position_uniforms`, a
counter-based generator). Nothing here touches the global torch RNG, which is what makes a sample independent of
the batch it happens to be generated in. No function loops over rows.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from posttrain.rollout.params import SamplingParams  # noqa: F401  (also importable from here)

NEG_INF = float("-inf")


# ---------------------------------------------------------------------------------------------------------
# The warpers, in the order process_logits applies them
# ---------------------------------------------------------------------------------------------------------

def repetition_penalty(logits: torch.Tensor, previous_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """Make tokens that already occurred less likely (penalty > 1) or more likely (penalty < 1).

    CTRL (Keskar et al. 2019, arXiv:1909.05858), with HF's sign rule: a seen token's positive logit is
    *divided* by the penalty and a negative one *multiplied*, so both move toward "less likely". Each seen
    token is penalized once however often it occurred. The history includes the prompt (as in HF).

    logits [B, V]; previous_ids [B, L] long, padded with -1 (rows have different history lengths; ids ≥ V
    are ignored, as HF does) → [B, V].

    Example: logits [[2.0, -1.0, 0.5, 3.0]], previous_ids [[0, 1, 1, -1]], penalty 2
             → [[1.0, -2.0, 0.5, 3.0]]   (token 0: 2/2, token 1: -1·2, tokens 2 and 3 unseen).
    """
    batch, vocab = logits.shape
    # Send padding (-1) and out-of-vocabulary ids to an extra column V, then drop that column: the scatter
    # stays one vectorised call however ragged the histories are.
    ids = previous_ids.long().masked_fill(previous_ids < 0, vocab).clamp(max=vocab)
    seen = torch.zeros(batch, vocab + 1, dtype=torch.bool, device=logits.device).scatter_(1, ids, True)
    penalized = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen[:, :vocab], penalized, logits)


def temperature(logits: torch.Tensor, t: float) -> torch.Tensor:
    """Divide by t > 0: t < 1 sharpens the distribution, t > 1 flattens it; t → 0 tends to argmax.

    logits [B, V] → [B, V].   Example: [[2.0, -1.0, 0.5]] at t = 0.5 → [[4.0, -2.0, 1.0]].
    """
    return logits / t


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (k = 0 keeps all).

    Like HF's TopKLogitsWarper, everything ≥ the k-th largest value is kept, so ties at the boundary can
    keep more than k tokens. logits [B, V] → [B, V].

    Example: [[1.0, 3.0, 3.0, 2.0, 0.0]], k = 3 → [[-inf, 3.0, 3.0, 2.0, -inf]];
             the same row with k = 1 keeps both 3.0s (the tie): [[-inf, 3.0, 3.0, -inf, -inf]].
    """
    if k == 0:
        return logits
    kth_largest = torch.topk(logits, min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_largest, NEG_INF)


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2020, arXiv:1904.09751): keep the smallest set of most likely
    tokens whose probability sums to ≥ p; always at least one token (p = 1 keeps all).

    Exactly HF's TopPLogitsWarper: sort ascending, cumulate probabilities, drop the tokens whose cumulative
    probability is ≤ 1 − p (the unlikely tail holding at most 1 − p of the mass), never drop the top token.
    logits [B, V] → [B, V].

    Example: probabilities [0.5, 0.3, 0.15, 0.05] (logits = their logs), p = 0.75:
             ascending [0.05, 0.15, 0.3, 0.5], cumulative [0.05, 0.2, 0.5, 1.0], 1 − p = 0.25
             → drop 0.05 and 0.15, keep tokens 0 and 1 (0.5 + 0.3 = 0.8 ≥ 0.75; 0.5 alone is not).
             With p = 0.4 only token 0 is kept.
    """
    if p >= 1.0:
        return logits
    sorted_logits, sorted_indices = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    sorted_remove = cumulative <= (1 - p)
    sorted_remove[..., -1:] = False  # the most likely token survives even when p is tiny
    remove = sorted_remove.scatter(1, sorted_indices, sorted_remove)  # back to vocabulary order
    return logits.masked_fill(remove, NEG_INF)


def min_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Min-p sampling (Nguyen et al. 2024, arXiv:2407.01082): drop tokens whose probability is below
    p × (probability of the most likely token); p = 0 keeps all. The cut-off scales with the model's
    confidence: strict when one token dominates, loose when the distribution is flat.

    HF's MinPLogitsWarper. logits [B, V] → [B, V]. The top token always survives (p ≤ 1).

    Example: probabilities [0.5, 0.3, 0.15, 0.05], p = 0.2 → threshold 0.1 → drop token 3 only;
             p = 0.5 → threshold 0.25 → keep tokens 0 and 1.
    """
    if p == 0.0:
        return logits
    probs = torch.softmax(logits, dim=-1)
    threshold = p * probs.amax(dim=-1, keepdim=True)
    return logits.masked_fill(probs < threshold, NEG_INF)


# ---------------------------------------------------------------------------------------------------------
# Parameters and the chain
# ---------------------------------------------------------------------------------------------------------

# SamplingParams lives in params.py (it is also the `sampling` section of the configs); re-exported here.


def process_logits(logits: torch.Tensor, params: SamplingParams,
                   previous_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The distribution to sample from: the enabled steps of the chain, in HF's order.

    logits [B, V]; previous_ids [B, L] padded with -1 (only needed for a repetition penalty) → [B, V].
    Greedy params return the logits after the repetition penalty alone — the raw logits when there is no
    penalty: the warpers never change the argmax, and HF skips them in greedy decoding too.

    Example: probabilities [0.5, 0.3, 0.15, 0.05] (logits = their logs), top_k 3, top_p 0.75
             → top-k drops token 3, top-p then drops token 2 → only tokens 0 and 1 stay finite.
    """
    if params.repetition_penalty != 1.0:
        if previous_ids is None:
            raise ValueError("repetition_penalty != 1 needs previous_ids (prompt + generated ids, -1 padded)")
        logits = repetition_penalty(logits, previous_ids, params.repetition_penalty)
    if params.greedy:
        return logits
    if params.temperature != 1.0:
        logits = temperature(logits, params.temperature)
    logits = top_k(logits, params.top_k)
    logits = top_p(logits, params.top_p)
    logits = min_p(logits, params.min_p)
    return logits


# ---------------------------------------------------------------------------------------------------------
# Drawing a token, and where its randomness comes from
# ---------------------------------------------------------------------------------------------------------

def sample(processed_logits: torch.Tensor, uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """Pick one token per row: argmax when `uniforms` is None, else inverse-CDF sampling.

    Inverse CDF: with probabilities p = softmax(x) and their running sums c_i = p_0 + … + p_i, the token is the
    first i with c_i > u · c_{V−1} for u ~ U(0, 1), so P(token = i) = (c_i − c_{i−1}) / c_{V−1} = p_i (the
    division by the total absorbs rounding). One uniform per row decides the token, so the randomness stays an
    explicit input — same uniform → same token, whatever else is in the batch — and costs one number per row
    instead of one per vocabulary entry (Gumbel-max's −log(−log u_i) over 49k entries was a tenth of a decode
    step on CPU). A forbidden token (-inf, probability 0) adds nothing to the running sum, so it is never the
    first to pass u · c_{V−1}; the sums are float64 so that a u below 1 always lands inside the vocabulary.

    processed_logits [B, V] (-inf = forbidden); uniforms [B] in [0, 1) or None → ids [B] long.

    Example: processed [[1.0, 0.0]] → probabilities [0.7311, 0.2689], running sums [0.7311, 1.0];
             uniform 0.5 → token 0 (0.7311 > 0.5); uniform 0.9 → token 1.
    """
    if uniforms is None:
        return processed_logits.argmax(dim=-1)
    cumulative = torch.softmax(processed_logits.float(), dim=-1).cumsum(dim=-1, dtype=torch.float64)
    target = uniforms.to(torch.float64)[:, None] * cumulative[:, -1:]
    return torch.searchsorted(cumulative, target, right=True).squeeze(-1)


def derive_seed(base_seed: int, *parts: int | str) -> int:
    """A 63-bit seed determined by (base_seed, *parts) only — stable across processes, machines and Python
    versions (blake2b, unlike Python's salted `hash()`).

    The engine's contract: sample k of example `example` at training step `step` owns the seed
    s = derive_seed(run_seed, step, example, k); the uniform that chooses its token number t is
    position_uniforms(s, t). A token is then a function of those numbers and the model alone —
    not of the batch size, of which other prompts share the batch, or of how long the other rows run — so
    results do not depend on batching (DESIGN §3).

    Example: derive_seed(0, 1, 2, 3) → 7081064314509305694, every time, everywhere.
    """
    text = "\x1f".join(f"{type(p).__name__}:{p}" for p in (base_seed, *parts))
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)  # torch seeds accept < 2**64; stay signed-safe


# splitmix64 (Steele, Lea & Flood 2014) on int64 tensors. Torch integer arithmetic wraps modulo 2^64, which is
# what the generator needs; `>>` on int64 is an arithmetic shift, so the logical shift masks the sign bits away.
def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN, _MIX1, _MIX2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def _shift_right(z: torch.Tensor, k: int) -> torch.Tensor:
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    """The splitmix64 output function: a bijection of 64-bit words that scrambles every input bit."""
    z = (z ^ _shift_right(z, 30)) * _MIX1
    z = (z ^ _shift_right(z, 27)) * _MIX2
    return z ^ _shift_right(z, 31)


def position_uniforms(seeds: torch.Tensor, position: int | torch.Tensor) -> torch.Tensor:
    """The uniform for `sample` at one position: row b depends only on (seeds[b], position) → [B] float64.

    Counter-based, so no generator state is carried and no Python loop runs over rows: row b's uniform is the
    top 52 bits of mix(seeds[b] + (position + 1)·γ), i.e. the (position + 1)-th output of a splitmix64 stream
    seeded with seeds[b] (γ the golden-ratio increment), times 2^-52 ∈ [0, 1). Integer arithmetic is exact
    everywhere, so the same seeds give the same numbers on CPU and GPU, in any batch:
    position_uniforms(tensor([7, 8]), t)[1] == position_uniforms(tensor([8]), t)[0].

    seeds [B] int64 (from derive_seed); position t ≥ 0 (an int, or a 0-d tensor inside a compiled step).
    """
    seeds = seeds.to(torch.int64)
    counter = torch.as_tensor(position, dtype=torch.int64, device=seeds.device) + 1
    bits = _shift_right(_mix64(seeds + counter * _GOLDEN), 12)  # 52 bits: exact in float64
    return bits.to(torch.float64) * 2.0 ** -52


def logprobs_of(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[ids] per row: logits [B, V], ids [B] → [B] float32.

    Used on the raw logits (the policy's log-prob, what RL needs) and on the processed ones (the log-prob
    of the distribution actually sampled from).

    Example: logits [[0, ln 3]], ids [1] → probabilities [0.25, 0.75] → [ln 0.75] = [−0.2877].
    """
    return F.log_softmax(logits.float(), dim=-1).gather(-1, ids.long()[:, None]).squeeze(-1)
