"""dpo and rm: training on preferences — the DPO family (posttrain/train/preference.py) and reward models, outcome
or per step (posttrain/train/reward.py, process_reward.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from posttrain.config.sections import Config, DataConfig, LLMConfig, RunConfig, TrainConfig
from posttrain.errors import ConfigError


@dataclass
class PreferenceConfig(Config):
    """Which preference loss, and its hyper-parameters (posttrain.algos.preference; each loss reads its own)."""

    loss: str = "dpo"
    """dpo, cdpo, robust, ipo, hinge, kto, simpo, orpo, rrhf, rpo, tr_dpo, … (`posttrain dpo --help` lists them)."""
    beta: float = 0.1
    """Strength of the implicit KL to the reference (β); for reference-free losses, the reward scale."""
    # The loss-specific knobs below default to None: the loss's own default (its docstring) applies.
    label_smoothing: float | None = None
    """cdpo / robust / exo_pair: assumed probability ε that a pair's label is flipped (default 0.1; exo 1e-3)."""
    gamma: float | None = None
    """simpo: target reward margin γ (default 0.5)."""
    alpha: float | None = None
    """rpo: weight of the NLL of the chosen response (default 1.0)."""
    lam: float | None = None
    """orpo: weight λ of the odds-ratio term; dpop: weight λ of the penalty for lowering the chosen log-prob."""
    desirable_weight: float | None = None
    """kto: weight of desirable examples (default 1.0)."""
    undesirable_weight: float | None = None
    """kto: weight of undesirable examples (default 1.0)."""
    ref_sync_steps: int = 0
    """tr_dpo: update the reference every τ steps (0: never; tr_dpo needs > 0)."""
    ref_mixup_alpha: float = 0.6
    """tr_dpo: reference ← α·policy + (1 − α)·reference at each update (1: hard replacement)."""


@dataclass
class DPOSections(RunConfig):
    """dpo's own sections, placed before the shared ones (sections.py says why)."""

    preference: PreferenceConfig = field(default_factory=PreferenceConfig)


@dataclass
class DPOConfig(LLMConfig, DPOSections):
    """Preference optimization on prompt/chosen/rejected pairs (or unpaired prompt/completion/label for KTO)."""

    output_dir: str = "runs/dpo"
    """Run directory: config.yaml, metrics.jsonl, reference_logps.safetensors, checkpoints/, final/."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(disable_dropout=True))


@dataclass
class RewardConfig(Config):
    """The reward model's objective."""

    mode: Literal["outcome", "prm"] = "outcome"
    """outcome: Bradley–Terry on prompt/chosen/rejected pairs, one score per response; prm: a process reward model,
    one score per reasoning step, trained with binary cross-entropy on prompt/completions (the steps)/labels rows
    (no data: the task's solutions in the steps format, half with an error). final/ loads with
    AutoModelForTokenClassification."""
    center_rewards_coefficient: float = 0.0
    """outcome: weight of the reward-centering term (r_c + r_r)² (Eisenstein et al. 2023); 0 disables, 0.01 is
    common."""
    step_separator: str = "\n"
    """prm: the text after every step; the step's score is read at its (last) token."""
    labels: Literal["task", "mc"] = "task"
    """prm without data.train_path, where the step labels come from: task — the task's solutions with one injected
    error, labelled exactly; mc — solutions sampled from reward.label_policy, each step labelled by Monte-Carlo
    rollouts (Math-Shepherd: does a completion continued from it reach the right answer). The labelled rows are
    written to RUN_DIR/prm_data.jsonl (reusable as data.train_path). Held-out rows: the task's, labelled exactly."""
    label_policy: str = ""
    """mc: the model that writes the solutions and the rollouts (a model or run directory, e.g. an SFT run's final/).
    Required for mc."""
    mc_solutions: int = 4
    """mc: solutions sampled per training problem (task.num_train problems)."""
    mc_rollouts: int = 8
    """mc: completions sampled from every step of a solution to estimate it (Math-Shepherd's N)."""
    mc_temperature: float = 0.7
    """mc: sampling temperature of the solutions and the rollouts."""
    mc_max_new_tokens: int = 96
    """mc: longest solution or rollout, in tokens."""
    mc_target: Literal["hard", "soft"] = "hard"
    """mc: hard — a step is good (1) when any rollout reaches the right answer, else 0; soft — the fraction that
    does, a float in [0, 1] (binary cross-entropy with soft targets)."""


@dataclass
class RMSections(RunConfig):
    """rm's own sections, placed before the shared ones (sections.py says why)."""

    reward: RewardConfig = field(default_factory=RewardConfig)


@dataclass
class RMConfig(LLMConfig, RMSections):
    """Reward model: a scalar head on the last token of a causal-LM backbone, trained on preference pairs; or
    (reward.mode=prm) a score at the end of every reasoning step, trained on step labels."""

    output_dir: str = "runs/rm"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, final/ (loads with
    AutoModelForSequenceClassification)."""
    seed: int = 0
    """Seeds data order, the new head and every generator."""
    data: DataConfig = field(default_factory=lambda: DataConfig(packing=False))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(disable_dropout=True))

    def validate(self) -> RMConfig:
        """The shared checks, then (reward.mode=prm with reward.labels=mc) the Monte-Carlo labelling's."""
        super().validate()
        r = self.reward
        if r.mode != "prm" or r.labels != "mc":  # an outcome model reads no step labels
            return self
        # reward.labels=mc: refuse, before the run directory is touched, an MC-labelling setup that cannot work
        if not r.label_policy:
            raise ConfigError("reward.labels=mc needs reward.label_policy: the model that writes the solutions and "
                              "rollouts — fix: set reward.label_policy=runs/sft/final (an SFT run on the task's "
                              "steps format), or reward.labels=task")
        if r.label_policy != "tiny" and not Path(r.label_policy).exists():
            raise ConfigError(f"reward.label_policy = {r.label_policy!r} does not exist — fix: point it at a model "
                              "or run directory")
        if self.data.train_path is not None:
            raise ConfigError("reward.labels=mc samples and labels its own solutions to the task's problems, but "
                              "data.train_path gives labelled rows too — fix: drop data.train_path, or "
                              "reward.labels=task")
        for name in ("mc_solutions", "mc_rollouts", "mc_max_new_tokens"):
            if not (isinstance(getattr(r, name), int) and getattr(r, name) >= 1):
                raise ConfigError(f"reward.{name} = {getattr(r, name)!r} must be an integer ≥ 1")
        if not r.mc_temperature >= 0:
            raise ConfigError(f"reward.mc_temperature = {r.mc_temperature!r} must be ≥ 0 (0 means greedy)")
        return self
