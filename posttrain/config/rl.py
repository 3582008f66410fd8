"""rl and rft: online RL from prompts (posttrain/train/rl.py; `explain` prints its batch plan) and rejection-sampling
fine-tuning (posttrain/train/rft.py), both sampling with the rollout engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from posttrain.config.sections import (Config, EnvSection, EvalConfig, LLMConfig, RolloutConfig, RunConfig, TaskConfig,
                                       TrainConfig)
from posttrain.config.sft import SFTConfig
from posttrain.errors import ConfigError
from posttrain.rollout.params import SamplingParams


@dataclass
class AlgoConfig(Config):
    """Which registered functions the online-RL loop composes. `name` is a preset (posttrain/presets.py) that
    fills every field left unset here; any field set explicitly wins over the preset."""

    name: str = "grpo"
    """The preset: ppo, grpo, dr_grpo, dapo, rloo, reinforce_pp, reinforce_pp_baseline, gspo, remax, reinforce, …
    (also `posttrain rl --algo NAME`; `--print-config` shows what it expands to; `posttrain explain` lists all)."""
    advantage: str | None = None
    """Advantage estimator (posttrain.algos.advantages): gae, grpo, dr_grpo, rloo, … (`posttrain explain` lists all).
    Unset: the preset's."""
    policy_loss: str | None = None
    """Policy loss (posttrain.algos.policy): ppo_clip, gspo, vanilla, … (`posttrain explain` lists all). Unset: the
    preset's."""
    aggregate: str | None = None
    """Loss reduction (posttrain.algos.aggregate): token_mean, seq_mean_token_mean, seq_mean_token_sum_norm."""
    critic: Literal["none", "value"] | None = None
    """value: train a value model (PPO's critic, GAE needs it); none: critic-free. Unset: the preset's."""
    eps_low: float | None = None
    """Clip range below 1 for the importance ratio (PPO's ε)."""
    eps_high: float | None = None
    """Clip range above 1 (DAPO's clip-higher uses 0.28 with eps_low 0.2)."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 bounding the loss of negative-advantage tokens (0 or unset: off)."""
    loss_args: dict[str, str] = field(default_factory=dict)
    """Hyperparameters of the policy loss that have no field above, e.g. tau_pos:1.0,tau_neg:1.05 (sapo); each
    must be one the loss declares (`posttrain explain` shows them and their defaults)."""
    grpo_std: Literal["sample", "population"] = "sample"
    """grpo: the group std divides by n − 1 (sample, as TRL and verl) or n (population)."""
    normalize_advantages: bool | None = None
    """Whiten advantages over the whole batch (masked mean 0, std 1); PPO's usual practice."""
    gamma: float = 1.0
    """Discount per token (gae, reinforce_pp)."""
    lam: float = 0.95
    """GAE's λ."""
    entropy_coef: float = 0.0
    """Weight of the entropy bonus (subtracted from the loss); 0 disables."""
    value_clip: float = 0.2
    """Critic: clip the new value to old ± this in the value loss (0 disables)."""
    critic_lr: float = 0.0
    """Critic learning rate; 0: the policy's train.lr."""
    critic_init: str = ""
    """Where the critic's backbone comes from: a reward-model or causal-LM directory. Empty: reward.model when
    set (its score head becomes the value head), else the policy's model."""
    critic_warmup: int = 0
    """PPO: for this many first steps only the critic learns (the policy waits until the values, and so the
    advantages, mean something). 0: both from the first step."""


@dataclass
class KLSection(Config):
    """The KL penalty against the frozen reference model (posttrain.algos.kl)."""

    estimator: str | None = None
    """Per-token estimator (posttrain.algos.kl): k1 (log-ratio), k2 (½ log-ratio²), k3 ((r − 1) − log r), … (`posttrain
    explain` lists all). Unset: the preset's."""
    where: Literal["reward", "loss", "none"] | None = None
    """reward: subtract β·KL per token from the reward (PPO); loss: add β·KL to the loss (GRPO); none: no
    reference model at all. Unset: the preset's."""
    coef: float | None = None
    """β. 0 means no penalty (and no reference model is loaded). Unset: the preset's."""
    target: float = 0.0
    """Adaptive controller: steer β towards this KL per sequence (Ziegler et al. 2019); 0: fixed β."""
    horizon: float = 10000.0
    """Adaptive controller: samples over which β may change by at most 20%."""
    monitor: int = 0
    """With no KL term (kl.where=none or kl.coef=0): score this many of each step's samples against the reference
    and log kl and kl/seq, without a penalty. The samples are evenly spaced over the step (with prompts_per_step
    of them, the first of each group), each an on-policy draw, so their mean estimates the policy's KL. Costs one
    no-grad forward of those samples, and for full fine-tuning a frozen copy of the start. 0: off."""


@dataclass
class RLBatchConfig(Config):
    """How much is generated per step and how it is cut into optimizer updates (`posttrain explain` shows it)."""

    prompts_per_step: int = 8
    """Prompts drawn per RL step."""
    generations: int | None = None
    """Completions sampled per prompt (the group size of group baselines). Unset: the preset's."""
    mini_batch_size: int = 0
    """Samples per optimizer update; 0: all samples of the step (one update per epoch)."""
    update_epochs: int = 1
    """Passes over the step's samples (PPO epochs). With 1 epoch and one mini-batch the update is on-policy."""
    dynamic_sampling: bool | None = None
    """DAPO: drop groups whose rewards are all equal and draw more prompts until the step is full."""
    max_sampling_rounds: int = 4
    """Dynamic sampling: generation rounds per step at most (the step goes on with what it has)."""
    overlong_buffer: float | None = None
    """DAPO's soft overlong punishment: a penalty growing linearly to −1 over the last fraction of
    sampling.max_new_tokens (L_cache = overlong_buffer × L_max); 0 disables."""
    mask_truncated: bool = False
    """Leave completions cut at sampling.max_new_tokens out of the loss (DAPO's overlong filtering)."""
    length_penalty: float = 0.0
    """Subtract length_penalty × (completion tokens / max_new_tokens) from every reward; 0 disables."""
    recompute_old_logprobs: bool = False
    """Recompute π_old with a forward pass instead of reusing the sampler's log-probs (they are reused when the
    sampler's distribution is the policy's: no top-k/top-p/min-p/repetition penalty)."""
    correction: str | None = None
    """Rollout correction for the sampler–trainer mismatch (posttrain.algos.correction): none, tis, seq_tis, mis,
    seq_mis, geo_mask. π_old is then recomputed by the trainer and each token's loss weighed (or dropped) by
    π_old / π_sampler. Unset: tis with rollout.engine=vllm, none with the built-in engine (whose log-probs are the
    trainer's to ~1e-6). Needs the sampler's distribution to be the policy's (no top-k/top-p/min-p/penalty)."""
    correction_cap: float | None = None
    """C of the correction (truncation cap, or the mask's bounds [1/C, C]). Unset: the method's default."""


@dataclass
class RLRewardConfig(Config):
    """Where rewards come from; several sources are added with their weights (posttrain.rewards)."""

    verifier: bool = True
    """Score completions with the built-in task's verifier (needs the task's answers: task prompts, or a prompt
    file with the columns the verifier reads, e.g. `answer`)."""
    function: str = ""
    """User reward code, 'path/to/file.py:function_name' — fn(prompt, completion, **row) -> float | None, run in a
    separate process with a timeout — or a built-in reward: 'code_tests' (the fraction of the row's `tests`, assert
    statements, that pass on the completion's Python code, run in the sandbox)."""
    function_batched: bool = False
    """The function takes lists (TRL's convention: fn(prompts, completions, **columns) -> list)."""
    timeout_s: float = 10.0
    """Seconds a user reward call may take (and loading its file); past it the worker is killed with every process
    it started, and the sample is unscorable."""
    model: str = ""
    """A trained reward model (an `rm` run directory or its final/), scoring prompt + completion."""
    verifier_weight: float = 1.0
    """Weight of the verifier's reward."""
    function_weight: float = 1.0
    """Weight of the user function's reward."""
    model_weight: float = 1.0
    """Weight of the reward model's score."""
    max_unscored_fraction: float = 0.5
    """Abort the run when more than this fraction of a step's samples could not be scored."""


@dataclass
class RLSections(RunConfig):
    """rl's own sections, placed before the shared ones (sections.py says why)."""

    algo: AlgoConfig = field(default_factory=AlgoConfig)
    kl: KLSection = field(default_factory=KLSection)
    rl: RLBatchConfig = field(default_factory=RLBatchConfig)
    reward: RLRewardConfig = field(default_factory=RLRewardConfig)
    env: EnvSection = field(default_factory=EnvSection)
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=32))
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig())


@dataclass
class RLConfig(LLMConfig, RLSections):
    """Online RL from prompts: PPO with a critic, or the critic-free family (GRPO, Dr. GRPO, DAPO, RLOO,
    REINFORCE++, GSPO, ReMax) — presets of one loop."""

    output_dir: str = "runs/rl"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, final/."""
    seed: int = 0
    """Seeds prompt order, every sample, new heads."""
    train: TrainConfig = field(default_factory=lambda: TrainConfig(micro_batch_size=16, max_steps=100,
                                                                   schedule="constant", disable_dropout=True))


@dataclass
class RFTSection(Config):
    """The rejection-sampling loop (posttrain/train/rft.py): per round, sample k = sampling.n completions per
    prompt, keep the verified-correct ones, fine-tune on them."""

    rounds: int = 2
    """Sample → keep the verified-correct → SFT, this many times; each round samples from the last round's model."""
    keep_per_prompt: int = 1
    """Distinct correct completions kept per prompt and round (repeats are dropped first). Yuan et al. keep every
    distinct reasoning path; where a problem has one right path (arith), the extra "correct" ones are right answers
    after wrong steps."""
    prompts_per_round: int = 0
    """Training prompts sampled per round: 0 — all of them every round (STaR); N — the next N of the shuffled
    stream, a fresh slice each round."""
    restart_from_base: bool = False
    """STaR: every round fine-tunes the original model on the kept samples of all rounds so far; false: it
    continues from the last round's model on this round's samples."""
    max_seconds: float = 0.0
    """A wall-time budget, counted from this process's start (0: none): a round is not started when the seconds
    used so far plus the last round's would exceed it, so the run ends within the budget (the first round always
    runs). rft.rounds stays the upper limit. For comparing with another method at the same wall time."""


@dataclass
class RFTConfig(SFTConfig):
    """Rejection-sampling fine-tuning (RFT, STaR): sample k completions per prompt, keep the verified-correct ones,
    fine-tune on them (train.* is each round's SFT), repeat."""

    output_dir: str = "runs/rft"
    """Run directory: config.yaml, metrics.jsonl (one line per round), round_N/ (samples, kept rows, the SFT run),
    checkpoints/ (round boundaries), final/ (the last round's model)."""
    rft: RFTSection = field(default_factory=RFTSection)
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.5, n=4, max_new_tokens=72))
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig(batch_size=256))
    task: TaskConfig = field(default_factory=lambda: TaskConfig(steps=True, num_train=1000))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(schedule="constant", micro_batch_size=16))
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(at_start=True, max_new_tokens=72))

    def validate(self) -> RFTConfig:
        """The shared checks, then sampling.* (k = sampling.n), rollout.* and rft.*."""
        super().validate()
        if not (isinstance(self.sampling.n, int) and self.sampling.n >= 1):
            raise ConfigError(f"sampling.n = {self.sampling.n!r}: k, the completions sampled per prompt, must be an "
                              "integer ≥ 1 — fix: e.g. sampling.n=4")
        self.sampling.validate()
        self.rollout.validate()
        for name in ("rounds", "keep_per_prompt"):
            value = getattr(self.rft, name)
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"rft.{name} = {value!r} must be an integer ≥ 1")
        if not (isinstance(self.rft.prompts_per_round, int) and self.rft.prompts_per_round >= 0):
            raise ConfigError(f"rft.prompts_per_round = {self.rft.prompts_per_round!r} must be an integer ≥ 0 "
                              "(0: every training prompt each round)")
        if not (isinstance(self.rft.max_seconds, (int, float)) and self.rft.max_seconds >= 0):
            raise ConfigError(f"rft.max_seconds = {self.rft.max_seconds!r} must be a number ≥ 0 (0: no time limit)")
        return self
