"""distill: a teacher into a student — logit (KL, JSD), on-policy (GKD) or chain-of-thought
(posttrain/train/distill.py, posttrain.algos.distill)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from posttrain.config.sections import Config, RolloutConfig, TrainConfig
from posttrain.config.sft import SFTConfig
from posttrain.errors import ConfigError


@dataclass
class DistillSection(Config):
    """What the student learns from the teacher, and how (posttrain/train/distill.py, posttrain.algos.distill)."""

    teacher: str = ""
    """The teacher: a model directory, a run directory (its final/) or a .gguf file. Required. logit and on_policy
    compare the two models token by token, so they must share the student's tokenizer (their padded vocabularies may
    differ)."""
    mode: Literal["logit", "on_policy", "cot"] = "logit"
    """logit: the student matches the teacher's next-token distributions on the data's completions (+ CE);
    on_policy: GKD — on a fraction `lam` of steps the student samples the completions and the teacher scores them;
    cot: the teacher writes solutions for the training prompts and the student is fine-tuned on them (SFT)."""
    loss: str = "forward_kl"
    """Per-token divergence: forward_kl (KL(teacher‖student), Hinton), reverse_kl (KL(student‖teacher)), jsd
    (generalized JSD(β), GKD)."""
    temperature: float = 1.0
    """τ: both models' logits are divided by τ and the divergence is multiplied by τ² (Hinton et al. 2015)."""
    beta: float = 0.5
    """jsd: the mixture weight β in (0, 1); small β behaves like forward_kl, β near 1 like reverse_kl."""
    alpha: float = 0.5
    """logit: loss = alpha·divergence + (1 − alpha)·cross-entropy on the data's tokens (1: divergence only)."""
    lam: float = 0.5
    """on_policy: probability, per step, that the student samples the completions (GKD's λ); otherwise the data's."""
    sample_temperature: float = 1.0
    """Sampling temperature of the student's completions (on_policy) and of the teacher's solutions (cot)."""
    max_new_tokens: int = 64
    """Longest completion sampled by the student (on_policy) or the teacher (cot), in tokens."""
    filter: Literal["verified", "none"] = "verified"
    """cot: keep only solutions the task's verifier accepts (verified), or every finished solution (none)."""
    samples_per_prompt: int = 1
    """cot: solutions the teacher samples per training prompt."""
    generation_batch_size: int = 64
    """Sequences generated together (on_policy, cot)."""


@dataclass
class DistillConfig(SFTConfig):
    """Knowledge distillation from a teacher into the student (model.*): logit (forward/reverse KL, JSD; τ² scaling),
    on-policy (GKD) or chain-of-thought (the teacher's verified solutions, then SFT)."""

    output_dir: str = "runs/distill"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, final/ (cot: rationales.jsonl and student/)."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(disable_dropout=True))
    distill: DistillSection = field(default_factory=DistillSection)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """on_policy: the engine the student samples with (vLLM is started once and synced before each sampling)."""

    def validate(self) -> DistillConfig:
        """The shared checks, then the first bad distill.* value, named with what to set."""
        from posttrain.algos import distill as divergences  # the loss registry (torch) only when checking

        super().validate()
        d = self.distill
        if not d.teacher:
            raise ConfigError("distill.teacher is required — fix: distill.teacher=DIR, a model directory or a run "
                              "directory (e.g. a larger model trained with `posttrain sft`)")
        if d.mode != "cot" and d.loss not in divergences.DISTILL_LOSSES:
            raise ConfigError(f"distill.loss = {d.loss!r} is not a distillation loss — valid: "
                              f"{', '.join(sorted(divergences.DISTILL_LOSSES))}")
        loss = divergences.DISTILL_LOSSES.entry(d.loss) if d.mode != "cot" else None
        checks = [
            ("temperature", d.temperature > 0, "must be > 0 (1: the models' own distributions)"),
            ("beta", loss is None or "beta" not in loss.hparams or 0 < d.beta < 1,
             f"must be in (0, 1) for {d.loss} (at 0 or 1 the mixture equals one side and the loss is 0: use "
             "forward_kl or reverse_kl)"),
            ("alpha", 0 <= d.alpha <= 1, "must be in [0, 1]"),
            ("lam", 0 <= d.lam <= 1, "must be in [0, 1]"),
            ("sample_temperature", d.sample_temperature >= 0, "must be ≥ 0 (0: greedy)"),
            ("max_new_tokens", d.max_new_tokens >= 1, "must be ≥ 1"),
            ("samples_per_prompt", d.samples_per_prompt >= 1, "must be ≥ 1"),
            ("generation_batch_size", d.generation_batch_size >= 1, "must be ≥ 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"distill.{name} = {getattr(d, name)!r} {rule}")
        return self
