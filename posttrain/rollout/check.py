"""Do the rollout's log-probs match the trainer's? The run-time check for RL loops.

An RL update weighs each token by π_train(token) / π_rollout(token). When the engine that sampled (a KV-cache
decode, maybe vLLM in bf16) and the trainer's teacher-forced forward disagree, that ratio is off even before
any update — the "training–inference mismatch" behind silently unstable RL runs. `logprob_mismatch` re-scores
the completions with one teacher-forced forward pass and reports how far apart the two are, as metrics an RL
loop logs every step (and can act on: e.g. truncated importance sampling).
"""

from __future__ import annotations

import torch

from posttrain.algos import kl

from posttrain.algos.logprobs import IGNORE_INDEX, token_logprobs
from posttrain.rollout.engine import Generation


@torch.no_grad()
def teacher_forced_logprobs(model, prompts: list[list[int]], generations: list[Generation],
                            pad_token_id: int = 0, batch_size: int = 16) -> list[torch.Tensor]:
    """log π(completion token t | prompt, completion[:t]) for each generation, from a plain forward pass over
    prompt + completion (right-padded, no cache) → one float32 tensor [len(completion)] per generation."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(generations), batch_size):
        chunk = generations[start:start + batch_size]
        seqs = [prompts[g.prompt_index] + g.completion_ids for g in chunk]
        width = max(map(len, seqs))
        input_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        targets = torch.full((len(chunk), width), IGNORE_INDEX, dtype=torch.long)
        for row, (g, seq) in enumerate(zip(chunk, seqs)):
            p, n = len(prompts[g.prompt_index]), len(g.completion_ids)
            input_ids[row, :len(seq)] = torch.tensor(seq)
            mask[row, :len(seq)] = 1
            targets[row, p - 1:p - 1 + n] = torch.tensor(g.completion_ids, dtype=torch.long)  # position i predicts i+1
        logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
        logp = token_logprobs(logits, targets.to(device)).cpu()
        for row, g in enumerate(chunk):
            p = len(prompts[g.prompt_index])
            out.append(logp[row, p - 1:p - 1 + len(g.completion_ids)])
    return out


def logprob_mismatch(model, prompts: list[list[int]], generations: list[Generation], pad_token_id: int = 0,
                     batch_size: int = 16) -> dict[str, float]:
    """Metrics comparing the engine's per-token log-probs with the trainer's teacher-forced ones, over all
    completion tokens (d = log π_train − log π_rollout per token):

        rollout/logprob_diff_max    max |d|           (fp32, same model: ~1e-6; vLLM in bf16: ~1e-2)
        rollout/logprob_diff_mean   mean |d|
        rollout/kl_rollout_train    mean of e^d − 1 − d ≥ 0, the k3 estimate of KL(π_rollout ‖ π_train)
        rollout/ratio_max           max e^d, the largest importance ratio the mismatch alone creates

    Example: one token with rollout log-prob −1.0 and train log-prob −1.1 → d = −0.1: diff max 0.1,
    kl e^−0.1 − 1 + 0.1 = 0.00484, ratio max 0.905.
    """
    train = teacher_forced_logprobs(model, prompts, generations, pad_token_id, batch_size)
    rollout = [torch.tensor(g.logprobs, dtype=torch.float32) for g in generations]
    if not any(len(r) for r in rollout):
        return {}
    return mismatch_metrics(torch.cat(train), torch.cat(rollout))


def mismatch_metrics(train: torch.Tensor, rollout: torch.Tensor) -> dict[str, float]:
    """The four numbers of `logprob_mismatch` from matching flat tensors of trainer and rollout log-probs."""
    d = train - rollout
    return {"rollout/logprob_diff_max": d.abs().max().item(), "rollout/logprob_diff_mean": d.abs().mean().item(),
            "rollout/kl_rollout_train": kl.k3(rollout, train).mean().item(),
            "rollout/ratio_max": d.exp().max().item()}
