"""What an RL run logs every step, and the warnings that catch a failing run early.

Metrics (stable names in metrics.jsonl):
    reward/mean|std|min|max (+ per source), reward/unscored_frac, reward/failures/<reason>  (posttrain.rewards)
    kl, kl/seq, kl_coef             per-token KL to the reference (configured estimator), per-sequence k1 sum, β;
                                    with no KL term, kl and kl/seq only under kl.monitor (over its samples)
    entropy                         mean policy entropy over completion tokens (nats)
    clip_frac, clip_frac/low|high   fraction of tokens whose ratio was clipped (gradient 0); dual_clip_frac
    approx_kl                       k3 estimate of KL(π_old ‖ π_new), mean over tokens: how far an update moved
    ratio/mean|min|max              importance ratios π_new / π_old
    value_loss, explained_variance  PPO's critic: 1 − Var(returns − V) / Var(returns)
    advantages/mean|std|min|max     over scored, unmasked tokens
    response_len/mean|max, truncated_frac, repetition   (repetition: share of repeated 4-grams per completion)
    rollout/zero_variance_frac      groups whose rewards were all equal (no signal under a group baseline)
    rollout/logprob_diff_max|mean, rollout/kl_rollout_train, rollout/ratio_max   sampler vs trainer log-probs
    loss, grad_norm, lr, samples_per_s, time/rollout, time/update, skipped_samples
"""

from __future__ import annotations

import torch

from posttrain.algos import kl as kl_algos
from posttrain.algos.advantages import ADVANTAGES
from posttrain.rollout.check import mismatch_metrics


def mismatch(train_logps: torch.Tensor, sampler_logps: torch.Tensor, mask: torch.Tensor) -> dict:
    """How far the trainer's log-probs are from the sampler's on the same tokens ([B, T] each; see
    rollout/check.py for the meaning of each number)."""
    m = mask > 0
    return mismatch_metrics(train_logps[m], sampler_logps[m]) if m.any() else {}


def batch_metrics(batch, rollout, sampler_reused: bool) -> dict:
    """Lengths, truncation, repetition, advantage statistics and (with a critic) explained variance."""
    lengths = batch.mask.sum(-1)
    valid = (batch.loss_mask * rollout.scored.float()[:, None]) > 0
    adv = batch.advantages[valid] if valid.any() else torch.zeros(1)
    out = {"response_len/mean": lengths.mean().item(), "response_len/max": lengths.max().item(),
           "truncated_frac": rollout.truncated.float().mean().item(),
           "repetition": sum(map(repetition, batch.completion_ids)) / len(batch.completion_ids),
           "advantages/mean": adv.mean().item(), "advantages/std": adv.std().item() if adv.numel() > 1 else 0.0,
           "advantages/min": adv.min().item(), "advantages/max": adv.max().item()}
    if batch.returns is not None:
        m = batch.mask > 0
        returns, values = batch.returns[m], batch.old_values[m]
        var = returns.var()
        out["explained_variance"] = (1 - (returns - values).var() / var).item() if var > 0 else 0.0
    return out


def repetition(ids: list[int], n: int = 4) -> float:
    """Share of a completion's n-grams that repeat an earlier one: 0 for no repeats, → 1 for a loop.
    Example: [1, 2, 1, 2, 1, 2] with n = 2 → n-grams 12 21 12 21 12: 3 of 5 repeat → 0.6."""
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return (len(grams) - len(set(grams))) / len(grams) if grams else 0.0


class UpdateTotals:
    """Sums over a step's updates and tokens, turned into means by `metrics()`."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.tokens = 0.0
        self.token_sums = {"clip_frac/low": 0.0, "clip_frac/high": 0.0, "dual_clip_frac": 0.0, "ratio/mean": 0.0,
                           "approx_kl": 0.0, "entropy": 0.0}
        self.ratio_min, self.ratio_max = float("inf"), float("-inf")
        self.first_pass: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.skipped = 0

    def add(self, name: str, value: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0) + 1

    @torch.no_grad()
    def record_policy(self, out, logps, old, entropy, mask, first: bool) -> None:
        m = mask > 0
        if not m.any():
            return
        self.tokens += m.sum().item()
        self.token_sums["clip_frac/low"] += out.clipped_low[m].sum().item()
        self.token_sums["clip_frac/high"] += out.clipped_high[m].sum().item()
        self.token_sums["dual_clip_frac"] += out.dual_clipped[m].sum().item()
        self.token_sums["ratio/mean"] += out.ratio[m].sum().item()
        self.token_sums["approx_kl"] += kl_algos.k3(old[m], logps[m]).sum().item()
        self.token_sums["entropy"] += entropy[m].sum().item()
        self.ratio_min = min(self.ratio_min, out.ratio[m].min().item())
        self.ratio_max = max(self.ratio_max, out.ratio[m].max().item())
        if first:  # before any update: the trainer's log-probs against the sampler's (π_old reused)
            self.first_pass.append((logps.cpu(), old.cpu(), mask.cpu()))

    def metrics(self) -> dict:
        out = {name: total / self.counts[name] for name, total in self.sums.items()}
        if self.tokens:
            out.update({name: total / self.tokens for name, total in self.token_sums.items()})
            out["clip_frac"] = out["clip_frac/low"] + out["clip_frac/high"]
            out["ratio/min"], out["ratio/max"] = self.ratio_min, self.ratio_max
        if self.first_pass:
            logps, old, mask = (torch.cat([p[k].flatten() for p in self.first_pass]) for k in range(3))
            out.update(mismatch(logps, old, mask))
        out["skipped_samples"] = self.skipped
        return out


class Watch:
    """Warnings that name the remedy. Each kind is repeated at most every `quiet` steps."""

    def __init__(self, cfg, quiet: int = 10):
        self.cfg, self.quiet = cfg, quiet
        self.grouped = ADVANTAGES.entry(cfg.algo.advantage).needs_groups  # equal rewards in a group: no signal
        self.first: dict[str, float] = {}
        self.kl_history: list[float] = []
        self.rewards: list[float] = []
        self.last_warned: dict[str, int] = {}

    def check(self, step: int, m: dict, rollout) -> list[str]:
        found = []
        for key in ("entropy", "response_len/mean", "repetition"):
            if key in m:
                self.first.setdefault(key, m[key])
        if "reward/mean" in m:
            self.rewards.append(m["reward/mean"])
        kl = m.get("kl/seq")
        if kl is not None:
            recent = self.kl_history[-5:]
            average = sum(recent) / len(recent) if recent else 0.0
            if len(recent) >= 3 and kl > 0.5 and kl > 4 * average:
                found.append(("kl", f"KL to the reference jumped to {kl:.3g} nats per completion "
                                    f"({kl / max(average, 1e-9):.1f}× its recent average) — lower train.lr or "
                                    "rl.update_epochs, raise kl.coef, or set kl.target for an adaptive β"))
            self.kl_history.append(kl)
        start = self.first.get("entropy")
        if start and step > 3 and m.get("entropy", start) < 0.25 * start:
            found.append(("entropy", f"entropy fell to {m['entropy']:.3g} from {start:.3g} at the start: the policy is "
                                     "turning deterministic and will stop exploring — raise sampling.temperature, set "
                                     "algo.entropy_coef (e.g. 0.001), use clip-higher (algo.eps_high=0.28) or lower "
                                     "train.lr"))
        if len(self.rewards) >= 6 and sum(self.rewards[-3:]) > sum(self.rewards[:3]):
            length0, rep0 = self.first.get("response_len/mean", 0), self.first.get("repetition", 0)
            longer = m.get("response_len/mean", 0) > 2 * max(length0, 1)
            looping = m.get("repetition", 0) > max(0.5, 2 * rep0)
            if longer or looping:
                what = (f"the mean completion length grew from {length0:.1f} to {m['response_len/mean']:.1f}"
                        if longer else f"repetition rose from {rep0:.2f} to {m['repetition']:.2f}")
                found.append(("hacking", f"reward is rising while {what} — the policy may be exploiting the reward: "
                                         "read some samples, add rl.length_penalty or rl.overlong_buffer, raise "
                                         "kl.coef"))
        if self.grouped and m.get("rollout/zero_variance_frac", 0) >= 1:
            found.append(("equal", "every group's rewards were equal, so this step had no learning signal — the "
                                   "prompts are too easy or too hard for the model: raise rl.generations or "
                                   "sampling.temperature, change the data, or set rl.dynamic_sampling=true"))
        if m.get("clip_frac", 0) > 0.3:
            found.append(("clip", f"{m['clip_frac']:.0%} of tokens were clipped: updates move the policy too far — "
                                  "lower train.lr or rl.update_epochs, or use larger mini-batches"))
        messages = []
        for kind, message in found:
            if step - self.last_warned.get(kind, -self.quiet) >= self.quiet:
                self.last_warned[kind] = step
                messages.append(message)
        return messages
