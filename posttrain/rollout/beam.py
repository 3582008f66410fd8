"""Beam search and exhaustive search over a Hugging Face causal LM, one prompt at a time.

Beam search keeps the `num_beams` most likely partial completions ("beams") and extends them one token at a
time. It reproduces `model.generate(num_beams=..., do_sample=False)` of transformers 5.x token for token,
scores included — the rules below are HF's, written out as one readable loop:

    each step   every running beam × every vocabulary token is a candidate, scored by the sum of its
                token log-probs; keep the best K = max(2, 1 + #eos ids) · num_beams of them (K > num_beams so
                that num_beams unfinished ones remain even if the best continuations all end in eos)
    finishing   a candidate ending in an eos id, or reaching max_new_tokens, is finished; it enters the
                hypothesis list (the best num_beams finished ones) only if it ranks among the top num_beams
                candidates of its step, with score = logprob / length ** length_penalty, where length
                counts the generated tokens *including* the eos
    running on  the best num_beams unfinished candidates become the next step's beams
    stopping    no unfinished candidate is left (always so at max_new_tokens); or the hypothesis list is full
                and either early_stopping is True, or no running beam can still beat its worst entry —
                HF's heuristic: best running logprob / L ** length_penalty ≤ worst finished score, with L the
                current length (early_stopping=False) or max_new_tokens (early_stopping="never" and
                length_penalty > 0; with "never" the bound is a true bound for every length_penalty)

HF quirk kept: with early_stopping=False the stop test assumes the beams do not get longer, which is only a
bound when length_penalty ≤ 0 — a long hypothesis that would have won with length_penalty > 0 can be cut off
(tests/rollout/test_beam.py shows one on a bigram model). `early_stopping="never"` is the exact search.

One deliberate difference: HF starts with num_beams copies of the prompt (all but one scored -1e9) and pads
with -1e9 placeholder beams when too few candidates stay unfinished; here the search starts with one beam and
simply runs fewer beams then. The two agree whenever the vocabulary has at least K tokens, and this way a
beam wider than the whole tree (the exhaustive test) is exact instead of full of placeholders.

`exhaustive_search` enumerates every completion instead: for teaching, and to check beam search against the
true argmax on a tiny vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from posttrain.rollout.engine import CACHE_ARG

MAX_EXHAUSTIVE_COMPLETIONS = 200_000


@dataclass
class BeamHypothesis:
    """A finished beam.

    ids      the completion, without the prompt, including the eos that ended it (if one did)
    score    logprob / len(ids) ** length_penalty — what beam search ranks by (HF's `sequences_scores`)
    logprob  Σ log π(token | prefix) over ids, under the raw model
    """

    ids: list[int]
    score: float
    logprob: float


@torch.no_grad()
def beam_search(model, prompt_ids: list[int], *, num_beams: int, max_new_tokens: int,
                eos_token_id: int | list[int], length_penalty: float = 1.0, num_return_sequences: int = 1,
                early_stopping: bool | str = False, pad_token_id: int = 0) -> list[BeamHypothesis]:
    """Beam search (rules in the module docstring) → the best `num_return_sequences` hypotheses, best first.

    model: a HF causal LM in eval mode; prompt_ids: one unpadded prompt. `pad_token_id` is accepted for
    parity with `generate` and unused: a single prompt and list outputs need no padding.

    Worked example — a bigram model over tokens {0, 1, 2, 3}, eos 2, num_beams 2 (K = 4), length_penalty 1,
    max_new_tokens 2. After the prompt p(1, 2, 3) = (0.6, 0.3, 0.1); after token 1, (0.8, 0.1, 0.1); after
    token 3, (1/3, 1/3, 1/3); token 0 never comes next.
        step 1  candidates [1] ln 0.6 = −0.511, [2] ln 0.3 = −1.204, [3] ln 0.1 = −2.303. [2] ends in eos and
                ranks 2nd ≤ num_beams: hypothesis with score −1.204 / 1. Running beams: [1], [3].
        step 2  best candidates [1, 1] ln 0.48 = −0.734, then [1, 2] and [1, 3] at ln 0.06 = −2.813 (all of
                [3, ·] are ln(0.1/3) = −3.401). Every candidate reaches max_new_tokens; the top two enter with
                scores −0.734 / 2 = −0.367 and −2.813 / 2 = −1.407, and the list keeps the best two.
        result  [BeamHypothesis([1, 1], −0.367, −0.734), BeamHypothesis([2], −1.204, −1.204)].
    """
    _check_beam_args(prompt_ids, num_beams, max_new_tokens, num_return_sequences, early_stopping)
    del pad_token_id
    eos = torch.tensor(_as_list(eos_token_id), dtype=torch.long, device=model.device)
    keep = max(2, 1 + len(eos)) * num_beams

    # The state: running beams ([R, t] generated ids, [R] summed log-probs; R = 1 before the first step)
    # and the hypothesis list, the best ≤ num_beams finished beams sorted by score.
    beam_tokens = torch.empty(1, 0, dtype=torch.long, device=model.device)
    beam_logprob = torch.zeros(1, device=model.device)
    finished: list[BeamHypothesis] = []

    log_probs, cache = _next_token_log_probs(model, torch.tensor([prompt_ids], device=model.device), None)
    for length in range(1, max_new_tokens + 1):  # `length` = tokens generated once this step is done
        # --- algorithm: expand every beam by every token, keep the best K candidates ---
        vocab = log_probs.shape[-1]
        candidates = (beam_logprob[:, None] + log_probs).view(-1)  # [R·V], float32 like HF
        cand_logprob, flat = torch.topk(candidates, min(keep, candidates.numel()))  # [K], best first
        parent, token = flat // vocab, flat % vocab
        cand_tokens = torch.cat([beam_tokens[parent], token[:, None]], dim=1)  # [K, length]
        done = torch.isin(token, eos) | (length == max_new_tokens)  # [K]

        # --- finished candidates among the top num_beams enter the hypothesis list ---
        cand_score = cand_logprob / length ** length_penalty
        in_top = torch.arange(len(flat), device=flat.device) < num_beams
        for i in (done & in_top).nonzero().flatten().tolist():
            finished.append(BeamHypothesis(cand_tokens[i].tolist(), cand_score[i].item(), cand_logprob[i].item()))
        finished = sorted(finished, key=lambda h: -h.score)[:num_beams]

        # --- the best num_beams unfinished candidates run on ---
        alive = (~done).nonzero().flatten()[:num_beams]
        beam_tokens, beam_logprob = cand_tokens[alive], cand_logprob[alive]

        if _beam_search_is_over(beam_logprob, finished, num_beams, length, max_new_tokens,
                                length_penalty, early_stopping):
            break

        # --- plumbing: each surviving beam's cache row is its parent's; then feed the new tokens ---
        cache.reorder_cache(parent[alive])  # index_select on every layer: also widens 1 → R rows
        log_probs, cache = _next_token_log_probs(model, beam_tokens[:, -1:], cache)

    return finished[:num_return_sequences]


def _beam_search_is_over(beam_logprob: torch.Tensor, finished: list[BeamHypothesis], num_beams: int,
                         length: int, max_new_tokens: int, length_penalty: float,
                         early_stopping: bool | str) -> bool:
    """HF's stop rules (see the module docstring); beam_logprob is sorted, best first."""
    if len(beam_logprob) == 0:
        return True  # nothing left to extend
    if len(finished) < num_beams:
        return False  # a new hypothesis would still get in, whatever its score
    if early_stopping is True:
        return True
    best_length = max_new_tokens if early_stopping == "never" and length_penalty > 0 else length
    best_possible = (beam_logprob[0] / best_length ** length_penalty).item()  # float32, as HF
    return best_possible <= finished[-1].score


@torch.no_grad()
def exhaustive_search(model, prompt_ids: list[int], *, max_new_tokens: int, eos_token_id: int | list[int],
                      vocab_limit: int | None = None, chunk_size: int = 1024) -> list[tuple[list[int], float]]:
    """Every completion of the prompt with its log-prob, most likely first: [(ids, logprob), ...].

    A completion ends at the first eos id (included in ids) or after max_new_tokens tokens. Every
    continuation of every unfinished prefix is expanded, so the completions partition the probability
    mass: Σ exp(logprob) = 1 (with eos_token_id=[] they are exactly the V ** max_new_tokens fixed-length
    sequences). With `vocab_limit` only the vocab_limit most likely tokens are expanded at each prefix — a
    truncated tree, whose log-probs are still those of the full model.

    Refuses (ValueError with the count) when width ** max_new_tokens > 200,000. Prefixes are scored by a
    plain forward pass (no cache), `chunk_size` rows at a time. log-probs are summed in float64.

    Example: V = 3, eos = 2, max_new_tokens = 2 → 1 + 2 · 3 = 7 completions: [2], then [a, b] for a ∈ {0, 1},
    b ∈ {0, 1, 2}; if every next-token distribution is uniform, [2] has logprob ln(1/3) and the others
    ln(1/9), and 1/3 + 6/9 = 1.
    """
    eos = torch.tensor(_as_list(eos_token_id), dtype=torch.long, device=model.device)
    prompt = torch.tensor([prompt_ids], device=model.device)
    vocab = _log_probs_after(model, prompt, torch.empty(1, 0, dtype=torch.long, device=model.device), 1).shape[-1]
    width = vocab if vocab_limit is None else min(vocab_limit, vocab)
    if width ** max_new_tokens > MAX_EXHAUSTIVE_COMPLETIONS:
        raise ValueError(f"exhaustive search would enumerate up to {width}^{max_new_tokens} = "
                         f"{width ** max_new_tokens:,} completions (limit {MAX_EXHAUSTIVE_COMPLETIONS:,}); "
                         f"lower max_new_tokens or set vocab_limit")

    prefixes = torch.empty(1, 0, dtype=torch.long, device=model.device)  # [N, t] unfinished prefixes
    prefix_logprob = torch.zeros(1, dtype=torch.float64, device=model.device)  # [N]
    complete: list[tuple[list[int], float]] = []
    for length in range(1, max_new_tokens + 1):
        log_probs = _log_probs_after(model, prompt, prefixes, chunk_size)  # [N, V]
        token_logprob, token = log_probs.topk(width, dim=-1)  # [N, width]; width = V keeps every token
        prefixes = torch.cat([prefixes.repeat_interleave(width, dim=0), token.reshape(-1, 1)], dim=1)
        prefix_logprob = (prefix_logprob[:, None] + token_logprob.double()).reshape(-1)
        done = torch.isin(prefixes[:, -1], eos) | (length == max_new_tokens)
        complete += zip(prefixes[done].tolist(), prefix_logprob[done].tolist())
        prefixes, prefix_logprob = prefixes[~done], prefix_logprob[~done]
        if len(prefixes) == 0:
            break
    return sorted(complete, key=lambda c: -c[1])


# ---------------------------------------------------------------------------------------------------------
# Plumbing
# ---------------------------------------------------------------------------------------------------------

def _next_token_log_probs(model, input_ids: torch.Tensor, cache):
    """One cached forward step: input_ids [R, T] → (log-probs of the next token [R, V] float32, cache)."""
    out = model(input_ids=input_ids, **{CACHE_ARG: cache}, use_cache=True)
    return F.log_softmax(out.logits[:, -1].float(), dim=-1), getattr(out, CACHE_ARG)


def _log_probs_after(model, prompt: torch.Tensor, prefixes: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """Next-token log-probs after prompt + each prefix: prompt [1, P], prefixes [N, t] → [N, V] float32."""
    rows = []
    for chunk in prefixes.split(chunk_size) if len(prefixes) else [prefixes]:
        input_ids = torch.cat([prompt.expand(len(chunk), -1), chunk], dim=1)
        rows.append(F.log_softmax(model(input_ids=input_ids, use_cache=False).logits[:, -1].float(), dim=-1))
    return torch.cat(rows)


def _as_list(eos_token_id: int | list[int]) -> list[int]:
    return [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)


def _check_beam_args(prompt_ids, num_beams, max_new_tokens, num_return_sequences, early_stopping) -> None:
    if len(prompt_ids) == 0:
        raise ValueError("beam_search needs a non-empty prompt (start it with the bos token)")
    if num_beams < 1 or max_new_tokens < 1:
        raise ValueError(f"num_beams ({num_beams}) and max_new_tokens ({max_new_tokens}) must be ≥ 1")
    if not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"num_return_sequences ({num_return_sequences}) must be between 1 and "
                         f"num_beams ({num_beams})")
    if not (early_stopping is True or early_stopping is False or early_stopping == "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
