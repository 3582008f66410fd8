"""Reward-model losses: pairwise Bradley–Terry (with margin and centering), per-step PRM loss, pair metrics.

All functions return per-example (or per-step) values; the loop reduces them (sum / global count), so the
result does not depend on how the batch was split. Scores r are the scalar outputs of the reward head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None) -> torch.Tensor:
    """Pairwise reward-model loss: −log σ(r_c − r_r − m).

    chosen, rejected [B] (scores of the preferred / dispreferred response), margin [B] or None (m = 0)
    → losses [B]. Bradley & Terry 1952 as used by Ouyang et al. 2022 (arXiv:2203.02155); the margin m, a
    per-pair preference strength (e.g. larger for "significantly better"), is the Llama-2 variant of
    Touvron et al. 2023, arXiv:2307.09288, eq. 2.

    Example: r_c = 2, r_r = 0.5 → −log σ(1.5) = log(1 + e^−1.5) = 0.20141; with m = 1 → −log σ(0.5) = 0.47408.
    """
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def reward_centering(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Auxiliary loss that pulls the scores of each pair towards zero sum: (r_c + r_r)².

    chosen, rejected [B] → [B]. Eisenstein et al. 2023, "Helping or Herding? Reward Model Ensembles Mitigate
    but do not Eliminate Reward Hacking", arXiv:2312.09244. Bradley–Terry is invariant to adding a constant
    to every score, so without this term the scale's offset drifts freely. The caller multiplies by the
    coefficient; the usual default is 0.01, the value recommended for TRL's `center_rewards_coefficient`.

    Example: r_c = 2, r_r = 0.5 → (2.5)² = 6.25 (times 0.01 → 0.0625 added to the loss).
    """
    return (chosen + rejected) ** 2


def prm_step_loss(step_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Process reward model loss: binary cross-entropy with logits on each reasoning step.

    step_logits [N] (the head's logit at each step's end marker, all steps of the batch flattened),
    labels [N] float: 1 = the step is correct, 0 = not (PRM800K, Lightman et al. 2023, arXiv:2305.20050);
    soft labels in [0, 1] also work, e.g. Math-Shepherd's Monte-Carlo estimate of reaching the right answer
    from that step (Wang et al. 2023, arXiv:2312.08935). → losses [N]:
    −(y·log σ(z) + (1 − y)·log σ(−z)).

    Example: logits [0, 2], labels [1, 0] → [ln 2, log(1 + e²)] = [0.69315, 2.12693].
    """
    return F.binary_cross_entropy_with_logits(step_logits, labels.to(step_logits.dtype), reduction="none")


@torch.no_grad()
def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Batch metrics of a pairwise reward model, as python floats.

    chosen, rejected [B] → {"accuracy": fraction of pairs with r_c > r_r, a tie counting ½ (a model that
    scores everything equally is at chance, 0.5, not 0), "margin": mean of r_c − r_r, "chosen": mean r_c,
    "rejected": mean r_r}.

    Example: r_c = [2, 1, 0], r_r = [0.5, 1, 1] → accuracy (1 + ½ + 0)/3 = 0.5, margin (1.5 + 0 − 1)/3 =
    0.16667, chosen 1.0, rejected 0.83333.
    """
    chosen, rejected = chosen.detach().float(), rejected.detach().float()
    wins = (chosen > rejected).float() + 0.5 * (chosen == rejected).float()
    return {"accuracy": wins.mean().item(), "margin": (chosen - rejected).mean().item(),
            "chosen": chosen.mean().item(), "rejected": rejected.mean().item()}
