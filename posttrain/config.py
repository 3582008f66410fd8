"""Typed configuration: one dataclass per command, built from sections shared by every loop.

A config is resolved in three layers, later wins:

1. the dataclass defaults (each field's docstring is its `--help` text),
2. a YAML file given with `-c file.yaml` (nested mappings mirror the sections),
3. command-line overrides, `section.field=value` or `--section.field value`.

Unknown keys are rejected with a did-you-mean suggestion, wrong types name the key, and `validate()`
checks the values that cannot be expressed as types (positive sizes, ranges). The command line itself is
generated from these dataclasses by `tyro` (see `cli.py`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tyro
import yaml

from posttrain.errors import ConfigError


# ----------------------------------------------------------------------------------------------------------------------
# Sections shared by the training commands
# ----------------------------------------------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    name_or_path: str = "tiny"
    """Hugging Face model directory (or hub id already in the local cache), 'tiny' for the embedded ~1M-parameter
    model, a LoRA adapter directory, or a run directory (its final/). From an adapter, lora.r decides: unset keeps
    training the same adapter, 0 merges it and trains in full, > 0 merges it and trains new adapters on top."""
    init: Literal["pretrained", "scratch"] = "pretrained"
    """'scratch' keeps the architecture but re-initializes every weight (pretraining from scratch)."""
    attn_implementation: str = "sdpa"
    """Attention kernel passed to transformers: sdpa | eager | flash_attention_2."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more compute."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the model directory to run."""


@dataclass
class LoraConfig:
    r: int | None = None
    """LoRA rank. 0: full fine-tuning; > 0: train PEFT LoRA adapters of this rank, the base frozen. Unset: full
    fine-tuning of a full model; when model.name_or_path is a LoRA adapter (or a run whose final/ is one), keep
    training that adapter (the reference of dpo/rl is the starting adapter, frozen). With an adapter, 0 merges it
    into its base and trains the merged model in full, and > 0 merges it and trains fresh adapters on top."""
    alpha: float = 16.0
    """LoRA scaling numerator: the update is scaled by alpha / r."""
    dropout: float = 0.0
    """Dropout on the LoRA branch input."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names to adapt, e.g. q_proj,v_proj; 'all-linear' adapts every linear layer but the output head."""


@dataclass
class TaskConfig:
    name: str = "arith"
    """Built-in task used when data.train_path is empty (and for task accuracy at evaluation): 'arith' (column
    addition/subtraction, one correct solution each), 'sums' (3..6 terms added in any order, many correct solutions)
    or 'code' (32 Python functions to write, scored by hidden unit tests in the sandbox)."""
    max_digits: int = 3
    """Each operand (sums: each term, 1..3) has 1..max_digits digits, the digit count drawn uniformly."""
    ops: str = "+"
    """arith: operators to draw from, a subset of '+-'."""
    steps: bool = False
    """arith: write solutions with one intermediate step per line (scorable by a process reward model)."""
    format: Literal["chat", "text"] = "chat"
    """Training rows the task produces: 'chat' (user/assistant messages) or 'text' (a plain corpus)."""
    num_train: int = 20000
    """Number of generated training problems."""
    num_eval: int = 200
    """Number of generated held-out problems (disjoint from training)."""


@dataclass
class DataConfig:
    train_path: str | None = None
    """Training data: .jsonl/.json/.parquet/.csv. Empty: generate the built-in task."""
    eval_path: str | None = None
    """Held-out data in the same formats. Empty with a task: the task's eval split; empty otherwise: no eval loss."""
    columns: dict[str, str] = field(default_factory=dict)
    """Rename columns to the standard schema, e.g. question:prompt,response:completion."""
    max_length: int | None = None
    """Longest tokenized example (rl: prompt); longer ones follow `truncation`. Unset: the model's context (its
    position table, e.g. max_position_embeddings; rl: minus sampling.max_new_tokens), at most 2048. More than the
    context is an error."""
    truncation: Literal["error", "drop", "truncate"] = "error"
    """Examples longer than max_length: stop with an error, drop them (counted), or cut them."""
    packing: bool = True
    """Pack each micro-batch's examples into as few rows as possible (exact: no attention across examples)."""
    pack_length: int = 0
    """Row capacity when packing. 0: the micro-batch's longest example, so packed rows are never longer than
    padded ones (attention cost grows with the square of the row length); larger values pack more per row."""


@dataclass
class TrainConfig:
    lr: float | None = None
    """Peak learning rate (AdamW). Unset: the command's default for a pretrained model, full | LoRA: sft, rft,
    distill 1e-5 | 1e-4; dpo 5e-7 | 5e-6; rm 1e-5 | 1e-4; rl 1e-6 | 1e-5; from scratch (model.init=scratch) 6e-4."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.99
    """AdamW beta2."""
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """Learning-rate decay after warmup."""
    warmup_steps: int = 0
    """Linear warmup from 0 to lr over this many optimizer steps."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr (cosine and linear)."""
    max_steps: int = 0
    """Optimizer steps to run. 0: derived from epochs."""
    epochs: float = 1.0
    """Passes over the training data, used when max_steps is 0."""
    micro_batch_size: int = 8
    """Examples per forward/backward pass."""
    grad_accum: int = 1
    """Micro-batches per optimizer step and process. Global batch = micro_batch_size × grad_accum × processes."""
    global_batch_size: int = 0
    """Examples per optimizer step over all processes. When set, grad_accum is derived from it
    (global / (micro_batch_size × processes)), so one config gives the same run on any number of processes."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """With several processes (torchrun): ddp replicates the model; fsdp (FSDP2 fully_shard) shards weights,
    gradients and optimizer state across processes."""
    fsdp_cpu_offload: bool = False
    """fsdp: keep sharded parameters and optimizer state in CPU memory between uses."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """Compute precision: bf16 runs forward/backward under autocast with fp32 master weights."""
    max_bad_steps: int = 5
    """Abort after this many consecutive bad steps (each is skipped): a non-finite loss or gradient, or a gradient
    norm above train.bad_grad_norm."""
    bad_grad_norm: float = 0.0
    """A finite blow-up guard: a step whose gradient norm (before clipping) exceeds this counts as bad — skipped,
    weights unchanged, and train.max_bad_steps in a row stop the run with its last checkpoint intact. 0: no bound.
    Set it well above a healthy run's grad_norm in metrics.jsonl (e.g. 100× its typical value)."""
    disable_dropout: bool = False
    """Set every dropout of the trained models to 0 (the model's own, the config's, lora.dropout). On by default
    where log-probs are compared or an on-policy ratio is formed — dpo (policy vs reference), rl (sampler vs trainer,
    the reference, the critic), rm, distill — so that step 1's rewards, ratios and KL are exactly 0/1; off for sft,
    pretrain and rft, which keep the model's dropout as transformers' Trainer does. The saved config records 0."""


@dataclass
class EvalConfig:
    every: int = 0
    """Evaluate every N optimizer steps; 0: only at the end."""
    num_samples: int = 200
    """Held-out problems scored for task accuracy by greedy generation."""
    max_new_tokens: int = 32
    """Generation limit when scoring task accuracy."""
    batch_size: int = 64
    """Prompts per generation batch at evaluation."""
    at_start: bool = False
    """Also evaluate before the first step (the 'before' row of a comparison)."""
    task_accuracy: bool | None = None
    """Score greedy accuracy on the task's held-out problems (task.*). Unset: only when training on the task's own
    data; true: also with data.train_path (e.g. pairs sampled from the task); false: never."""


@dataclass
class CheckpointConfig:
    every: int = 0
    """Save a resumable checkpoint every N optimizer steps; 0: only at the end."""
    keep_last: int = 2
    """Checkpoints kept on disk; older ones are removed after a newer one is complete."""
    resume: bool | Literal["auto"] = False
    """Continue the run in output_dir from its latest checkpoint. true: a checkpoint must exist; auto: resume when
    a complete checkpoint exists, else start the run afresh in the same output_dir (for a job supervisor that
    restarts a killed job with the same command). A resumed run must keep the run's settings, except durations,
    cadences and logging (train.max_steps, train.epochs, total_steps, eval/log/checkpoint.every, …), which are
    applied and recorded under `resumed:` in RUN_DIR/config.yaml."""
    allow_changes: list[str] = field(default_factory=list)
    """Settings a resumed run may change besides durations, cadences and logging, e.g. train.lr; each change is
    applied from the resumed step on and recorded in RUN_DIR/config.yaml. The model, LoRA shape and algorithm
    can never change."""


@dataclass
class LogConfig:
    every: int = 1
    """Write metrics every N optimizer steps."""
    report_to: list[str] = field(default_factory=list)
    """Extra metric sinks besides metrics.jsonl: tensorboard, wandb."""
    progress: bool = True
    """Show a progress bar with ETA on the console."""


@dataclass
class SFTConfig:
    """Supervised fine-tuning: masked next-token cross-entropy on assistant tokens (full or LoRA)."""

    output_dir: str = "runs/sft"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, final/."""
    overwrite: bool = False
    """Replace the posttrain run in output_dir (never a folder that is not one, nor a run in use); without it an
    existing run is an error unless checkpoint.resume."""
    seed: int = 0
    """Seeds data order, initialization and every generator."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)


@dataclass
class PreferenceConfig:
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
class DPOConfig:
    """Preference optimization on prompt/chosen/rejected pairs (or unpaired prompt/completion/label for KTO)."""

    output_dir: str = "runs/dpo"
    """Run directory: config.yaml, metrics.jsonl, reference_logps.safetensors, checkpoints/, final/."""
    overwrite: bool = False
    """Replace the posttrain run in output_dir (never a folder that is not one, nor a run in use); without it an
    existing run is an error unless checkpoint.resume."""
    seed: int = 0
    """Seeds data order, initialization and every generator."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(disable_dropout=True))
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)


@dataclass
class RewardConfig:
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
class RMConfig:
    """Reward model: a scalar head on the last token of a causal-LM backbone, trained on preference pairs; or
    (reward.mode=prm) a score at the end of every reasoning step, trained on step labels."""

    output_dir: str = "runs/rm"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, final/ (loads with
    AutoModelForSequenceClassification)."""
    overwrite: bool = False
    """Replace the posttrain run in output_dir (never a folder that is not one, nor a run in use); without it an
    existing run is an error unless checkpoint.resume."""
    seed: int = 0
    """Seeds data order, the new head and every generator."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(packing=False))
    train: TrainConfig = field(default_factory=lambda: TrainConfig(disable_dropout=True))
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)


@dataclass
class AlgoConfig:
    """Which registered functions the online-RL loop composes. `name` is a preset (posttrain/presets.py) that
    fills every field left unset here; any field set explicitly wins over the preset."""

    name: str = "grpo"
    """The preset: ppo, grpo, dr_grpo, dapo, rloo, reinforce_pp, reinforce_pp_baseline, gspo, remax, reinforce, …
    (also `posttrain rl --algo NAME`; `--print-config` shows what it expands to; `posttrain explain` lists all)."""
    advantage: str | None = None
    """Advantage estimator (posttrain.algos.advantages): gae, grpo, dr_grpo, rloo, reinforce_pp,
    reinforce_pp_baseline, remax, reinforce. Unset: the preset's."""
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
class KLSection:
    """The KL penalty against the frozen reference model (posttrain.algos.kl)."""

    estimator: Literal["k1", "k2", "k3"] | None = None
    """Per-token estimator: k1 (log-ratio), k2 (½ log-ratio²), k3 ((r − 1) − log r). Unset: the preset's."""
    where: Literal["reward", "loss", "none"] | None = None
    """reward: subtract β·KL per token from the reward (PPO); loss: add β·KL to the loss (GRPO); none: no
    reference model at all. Unset: the preset's."""
    coef: float | None = None
    """β. 0 means no penalty (and no reference model is loaded). Unset: the preset's."""
    target: float = 0.0
    """Adaptive controller: steer β towards this KL per sequence (Ziegler et al. 2019); 0: fixed β."""
    horizon: float = 10000.0
    """Adaptive controller: samples over which β may change by at most 20%."""


@dataclass
class RLBatchConfig:
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


@dataclass
class RLRewardConfig:
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
class RFTSection:
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


@dataclass
class RLConfig:
    """Online RL from prompts: PPO with a critic, or the critic-free family (GRPO, Dr. GRPO, DAPO, RLOO,
    REINFORCE++, GSPO, ReMax) — presets of one loop."""

    output_dir: str = "runs/rl"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, final/."""
    overwrite: bool = False
    """Replace the posttrain run in output_dir (never a folder that is not one, nor a run in use); without it an
    existing run is an error unless checkpoint.resume."""
    seed: int = 0
    """Seeds prompt order, every sample, new heads."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    kl: KLSection = field(default_factory=KLSection)
    rl: RLBatchConfig = field(default_factory=RLBatchConfig)
    reward: RLRewardConfig = field(default_factory=RLRewardConfig)
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(max_new_tokens=32))
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig())
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(micro_batch_size=16, max_steps=100,
                                                                   schedule="constant", disable_dropout=True))
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)


@dataclass
class SearchConfig:
    """Test-time search settings of `posttrain eval` (posttrain.search). Sampling, pass@k, maj@k, best-of-N and the
    weighted vote share the same n samples per problem; step-level beam search and MCTS get a token budget per
    problem — by default what best-of-N spent on it, so the table compares them at equal generated tokens."""

    n: int = 8
    """Samples per problem (N of best-of-N, k of maj@k)."""
    temperature: float = 0.5
    """Sampling temperature of every sampled strategy (greedy is T = 0). Lower votes closer to greedy, higher finds
    more right answers for a scorer to pick (demo SFT model: maj@8 0.445 / pass@8 0.605 at 0.3, 0.415 / 0.65 at 0.5)."""
    top_p: float = 1.0
    """Nucleus sampling for every sampled strategy; 1 disables."""
    max_new_tokens: int = 72
    """Longest solution, in tokens (and the longest rollout)."""
    max_step_tokens: int = 32
    """Longest step (one line) when searching step by step."""
    pass_k: list[int] = field(default_factory=lambda: [1, 4])
    """pass@k rows (each k ≤ n; pass@n is always shown). An oracle: it needs the reference answer."""
    budget_tokens: int = 0
    """Generated tokens per problem for step-level beam search and MCTS; 0: what best-of-N spent on that problem."""
    beam_width: int = 2
    """Step-level beam search: partial solutions kept after each step (B)."""
    beam_expansions: int = 4
    """Step-level beam search: next steps sampled per kept partial solution (k)."""
    mcts_children: int = 4
    """MCTS: next steps sampled when a leaf is expanded."""
    mcts_selection: Literal["uct", "puct"] = "puct"
    """MCTS: UCT (Q + c·sqrt(ln N_parent / N)) or PUCT (Q + c·P·sqrt(N_parent) / (1 + N), P from the policy). On the
    demo's SFT model with an MC-labelled PRM, PUCT's policy prior made the difference: 0.450 against UCT's 0.305."""
    mcts_c: float = 1.0
    """MCTS: exploration constant c (values are in [0, 1])."""
    mcts_evaluation: Literal["prm", "rollout"] = "prm"
    """MCTS: value of a new node — the PRM's score of the partial solution, or a rollout (complete it by sampling)
    scored by the reward model (else the PRM)."""
    mcts_max_iterations: int = 64
    """MCTS: iterations per problem at most (the token budget usually stops it first)."""
    max_steps: int = 16
    """Beam search and MCTS: steps per solution at most."""
    prm_aggregate: Literal["min", "product", "last"] = "min"
    """How a PRM's step scores make a solution's score."""
    answer_marker: str = "answer:"
    """A step holding this text finishes a solution (the arith task's steps format ends with "answer: N")."""

    def validate(self) -> SearchConfig:
        """Raise ConfigError naming the first bad field and the fix; return self."""
        positive = ("n", "max_new_tokens", "max_step_tokens", "beam_width", "beam_expansions", "mcts_children",
                    "mcts_max_iterations", "max_steps")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"search.{name} = {value!r} must be an integer ≥ 1 — fix: "
                                  f"search.{name}=1 or more")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ConfigError(f"search.temperature = {self.temperature!r} must be > 0 (greedy is its own row) — fix: "
                              "e.g. search.temperature=0.7")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"search.top_p = {self.top_p!r} must be in (0, 1] — fix: search.top_p=1")
        if self.budget_tokens < 0:
            raise ConfigError(f"search.budget_tokens = {self.budget_tokens} must be ≥ 0 — fix: 0 matches best-of-N")
        bad = [k for k in self.pass_k if not (isinstance(k, int) and 1 <= k <= self.n)]
        if bad:
            raise ConfigError(f"search.pass_k = {self.pass_k}: {bad} not in 1..search.n ({self.n}) — fix: drop them "
                              "or raise search.n")
        if not (math.isfinite(self.mcts_c) and self.mcts_c >= 0):
            raise ConfigError(f"search.mcts_c = {self.mcts_c!r} must be ≥ 0 — fix: e.g. search.mcts_c=1")
        if not self.answer_marker:
            raise ConfigError("search.answer_marker must not be empty — fix: the final step's text, e.g. answer:")
        return self


EVAL_STRATEGIES = ("greedy", "sampling", "pass@k", "maj@k", "best_of_n", "weighted_vote", "beam", "mcts")


@dataclass
class EvaluateConfig:
    """Evaluate a policy on held-out problems: accuracy, pass@k, maj@k, and a compute-matched table of test-time
    strategies (greedy, sampling, majority vote, best-of-N and weighted vote with a reward model or PRM, step-level
    beam search and MCTS with a PRM) with the generated tokens each spends per problem."""

    model: str = "tiny"
    """The policy: a model directory, a LoRA adapter directory, a run directory (its final/), or 'tiny'."""
    reward_model: str | None = None
    """An outcome reward model (`posttrain rm` run directory or its final/): best-of-N, weighted vote, rollouts."""
    prm: str | None = None
    """A process reward model (`posttrain rm reward.mode=prm` run directory or its final/): step search, MCTS."""
    data_path: str | None = None
    """Problems: rows with `prompt` and `answer` (scored by the task's verifier). Empty: the task's held-out ones."""
    num_problems: int = 0
    """Evaluate the first N problems; 0: all (the task gives task.num_eval)."""
    strategies: list[str] = field(default_factory=lambda: list(EVAL_STRATEGIES))
    """Rows of the table, any of: greedy, sampling, pass@k, maj@k, best_of_n, weighted_vote, beam, mcts."""
    output_dir: str = "runs/eval"
    """Where results.json, results.md (the table) and completions.jsonl (every chosen completion) go."""
    chat_template: Literal["auto", "on", "off"] = "auto"
    """Format prompts with the tokenizer's chat template: auto uses it when the tokenizer has one."""
    seed: int = 0
    """Seeds every sample, expansion and rollout (independent of batching)."""
    search: SearchConfig = field(default_factory=SearchConfig)
    rollout: RolloutConfig = field(default_factory=lambda: RolloutConfig())
    task: TaskConfig = field(default_factory=lambda: TaskConfig(steps=True))


@dataclass
class PretrainConfig(SFTConfig):
    """Pretraining from scratch: the SFT loop on a plain-text corpus with every token in the loss."""

    output_dir: str = "runs/pretrain"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, final/."""
    model: ModelConfig = field(default_factory=lambda: ModelConfig(init="scratch"))
    task: TaskConfig = field(default_factory=lambda: TaskConfig(format="text"))


@dataclass
class DistillSection:
    """What the student learns from the teacher, and how (posttrain/train/distill.py, posttrain.algos.distill)."""

    teacher: str = ""
    """The teacher: a model directory or a run directory (its final/). Required. logit and on_policy compare the two
    models token by token, so they must share the student's tokenizer (their padded vocabularies may differ)."""
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


@dataclass
class DemoConfig:
    """Build the tiny model and the arithmetic task, train it, and print greedy accuracy before and after."""

    output_dir: str = "runs/demo"
    """Where the demo's runs and plots go."""
    quick: bool = False
    """A reduced demo (about a minute) used by the tests."""
    seed: int = 0
    """Seed for data, initialization and generation."""


@dataclass
class SamplingParams:
    """How to pick each next token, and when to stop.

    temperature 0 means greedy (so does top_k 1). stop_token_ids empty → the engine stops at the
    tokenizer's eos; n is the number of samples drawn per prompt (GRPO's group size).
    """

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 disables."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens with probability ≥ top_p; 1 disables."""
    min_p: float = 0.0
    """Drop tokens less likely than min_p × the most likely one; 0 disables."""
    repetition_penalty: float = 1.0
    """Penalize tokens already in the prompt or completion (CTRL); 1 disables."""
    max_new_tokens: int = 64
    """Longest completion, in tokens."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Extra stop token ids (the tokenizer's eos always stops)."""
    stop_strings: list[str] = field(default_factory=list)
    """Stop strings: a completion ends (and is cut) where one appears."""
    n: int = 1
    """Completions per prompt (GRPO's group size)."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    def validate(self) -> SamplingParams:
        """Raise ConfigError naming the first out-of-range field; return self so calls can chain."""
        checks = [
            ("temperature", math.isfinite(self.temperature) and self.temperature >= 0,
             "must be ≥ 0 (0 means greedy)"),
            ("top_k", isinstance(self.top_k, int) and self.top_k >= 0, "must be an integer ≥ 0 (0 disables)"),
            ("top_p", 0.0 <= self.top_p <= 1.0, "must be in [0, 1] (1 disables)"),
            ("min_p", 0.0 <= self.min_p <= 1.0, "must be in [0, 1] (0 disables)"),
            ("repetition_penalty", math.isfinite(self.repetition_penalty) and self.repetition_penalty > 0,
             "must be > 0 (1 disables)"),
            ("max_new_tokens", isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
             "must be an integer ≥ 1"),
            ("stop_token_ids", all(isinstance(i, int) and i >= 0 for i in self.stop_token_ids),
             "must be a list of token ids ≥ 0"),
            ("stop_strings", all(isinstance(s, str) and s for s in self.stop_strings),
             "must be a list of non-empty strings"),
            ("n", isinstance(self.n, int) and self.n >= 1, "must be an integer ≥ 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"sampling.{name} = {getattr(self, name)!r} {rule}")
        return self


@dataclass
class RolloutConfig:
    """Which engine generates, and how (posttrain.rollout.backends)."""

    engine: Literal["hf", "vllm"] = "hf"
    """hf: the built-in engine on any HF model in this process; vllm: vLLM (pip install 'posttrain[vllm]', CUDA)."""
    batch_size: int = 64
    """Sequences the built-in engine generates together."""
    compile: bool = False
    """Built-in engine: static KV cache and a torch.compile'd decode step (compiles once, then faster)."""
    vllm_gpu_memory_utilization: float = 0.5
    """vLLM: fraction of GPU memory for weights and KV cache."""
    vllm_tensor_parallel_size: int = 1
    """vLLM: GPUs per engine (tensor parallelism)."""

    def validate(self) -> RolloutConfig:
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(f"rollout.batch_size = {self.batch_size!r} must be an integer ≥ 1")
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            raise ConfigError(f"rollout.vllm_gpu_memory_utilization = {self.vllm_gpu_memory_utilization!r} "
                              "must be in (0, 1]")
        return self


@dataclass
class BeamConfig:
    """Beam search instead of sampling (posttrain.rollout.beam; HF's num_beams semantics)."""

    num_beams: int = 1
    """Beams kept per step; 1 disables beam search (the sampling section applies)."""
    length_penalty: float = 1.0
    """Hypotheses are ranked by logprob / length ** length_penalty."""
    early_stopping: Literal["true", "false", "never"] = "false"
    """true: stop once num_beams hypotheses are finished; false: HF's heuristic; never: exact search."""
    num_return_sequences: int = 1
    """Best hypotheses written per prompt (≤ num_beams)."""


@dataclass
class GenerateConfig:
    """Generate completions for a file of prompts (or the built-in task) and write them as JSONL."""

    model: str = "tiny"
    """A model directory, a LoRA adapter directory, a run directory (its final/), or 'tiny'."""
    data_path: str | None = None
    """Prompts: rows with `prompt` (a string or messages) or `messages` (a conversation: the model writes the next
    assistant turn through the chat template; a last message that is the assistant's is dropped). Empty: the task's
    held-out problems."""
    output: str = "runs/generate.jsonl"
    """Where the completions go (one JSON object per line)."""
    num_prompts: int = 0
    """Use only the first N prompts; 0: all."""
    chat_template: Literal["auto", "on", "off"] = "auto"
    """Format prompts with the tokenizer's chat template: auto uses it when the tokenizer has one."""
    seed: int = 0
    """Seeds every sample (per prompt and sample index, independent of batching)."""
    sampling: SamplingParams = field(default_factory=SamplingParams)
    beam: BeamConfig = field(default_factory=BeamConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    task: TaskConfig = field(default_factory=TaskConfig)


@dataclass
class ChatConfig:
    """Talk to a model in the terminal, with its chat template. /reset clears the conversation, /exit leaves."""

    model: str = "tiny"
    """A model directory, a LoRA adapter directory, a run directory (its final/), or 'tiny'."""
    system: str = ""
    """An optional system message."""
    seed: int = 0
    """Seed for sampling."""
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.7, max_new_tokens=256))
    rollout: RolloutConfig = field(default_factory=RolloutConfig)


@dataclass
class ExportConfig:
    """Write a plain Hugging Face model directory from a run (LoRA adapters merged into the base). A reward model
    keeps its head (AutoModelForSequenceClassification; a PRM AutoModelForTokenClassification) and the pad token."""

    run_dir: tyro.conf.Positional[str]
    """A run directory (its final/ or latest checkpoint is used) or a model/adapter directory."""
    out: tyro.conf.Positional[str]
    """Output directory for the merged model and tokenizer."""


@dataclass
class PlotConfig:
    """Draw PNG curves of a run's metrics.jsonl into RUN_DIR/plots/."""

    run_dir: tyro.conf.Positional[str]
    """The run directory holding metrics.jsonl."""


# ----------------------------------------------------------------------------------------------------------------------
# YAML overlay, dotted overrides, validation
# ----------------------------------------------------------------------------------------------------------------------

def field_paths(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every leaf key of a config class as 'section.field' → its type."""
    paths = {}
    for f in dataclasses.fields(cls):
        ftype = _hints(cls)[f.name]
        if dataclasses.is_dataclass(ftype):
            paths.update(field_paths(ftype, prefix + f.name + "."))
        else:
            paths[prefix + f.name] = ftype
    return paths


def unknown_key_error(key: str, valid: list[str], source: str) -> ConfigError:
    """A ConfigError for an unknown key, with the closest valid keys as a suggestion."""
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else f"valid keys: {', '.join(valid)}"
    return ConfigError(f"{source}: unknown config key '{key}' — {hint}")


def from_dict(cls: type, values: dict, source: str = "config", prefix: str = "", base: Any = None):
    """Build `cls` from a nested mapping, starting from `base` (or the defaults); unknown keys are errors."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'top level'}' must be a mapping of keys to values")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
    kwargs = {} if base is None else {n: getattr(base, n) for n in names}
    for key, value in values.items():
        if key not in names:
            valid = [prefix + k for k in field_paths(cls)]
            raise unknown_key_error(prefix + str(key), valid, source)
        ftype = hints[key]
        if dataclasses.is_dataclass(ftype):  # a section starts from this command's default for it, e.g. rm's data
            section = kwargs.get(key, _field_default(fields[key]))
            kwargs[key] = from_dict(ftype, value, source, prefix + key + ".", section)
        else:
            kwargs[key] = coerce(value, ftype, f"{source}: {prefix}{key}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field (export/plot) is missing
        raise ConfigError(f"{source}: {e}") from None


def _field_default(f: dataclasses.Field) -> Any:
    """The value a field gets when it is not given (None for a required one)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def load_yaml(path: str | Path, cls: type):
    """Read a YAML config file into `cls`, naming the file in every error."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p} — fix: check the path given to -c")
    try:
        values = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from None
    return from_dict(cls, apply_resumed(values), source=str(p))


def apply_resumed(values: dict) -> dict:
    """A run's config.yaml keeps the settings it started with and, under `resumed:`, each resume's changes
    ({step, changes: {key: {from, to}}}); the settings in effect at the end are the first with the changes applied
    in order. Other config files pass through unchanged."""
    if not isinstance(values, dict) or "resumed" not in values:
        return values
    resumed = values["resumed"] or []
    values = copy.deepcopy({k: v for k, v in values.items() if k != "resumed"})
    for entry in resumed:
        for key, change in (entry.get("changes") or {}).items():
            *sections, name = key.split(".")
            node = values
            for section in sections:
                node = node.setdefault(section, {})
            node[name] = change["to"]
    return values


def coerce(value: Any, ftype: Any, where: str) -> Any:
    """Check (and gently convert) a YAML value against a field type; the error names the key."""
    origin, args = typing.get_origin(ftype), typing.get_args(ftype)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for option in inner[:-1]:  # e.g. bool | Literal["auto"]: the first type the value fits
            try:
                return coerce(value, option, where)
            except ConfigError:
                pass
        return coerce(value, inner[-1], where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, args[0], where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if ftype is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if ftype is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if ftype is float and isinstance(value, str):
        try:
            return float(value)  # YAML reads "1e-3" as a string
        except ValueError:
            pass
    if ftype in (int, float, str) and not (isinstance(value, ftype) and not isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {ftype.__name__}, got {value!r}")
    return value


def to_dict(cfg: Any) -> dict:
    """The config as plain nested dicts (what config.yaml stores)."""
    return dataclasses.asdict(cfg)


def save_yaml(cfg: Any, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ----------------------------------------------------------------------------------------------------------------------
# Defaults that depend on the model: learning rate and length
# ----------------------------------------------------------------------------------------------------------------------

# train.lr when unset: (full fine-tuning, LoRA) of a pretrained model, per command. README's table gives the sources
# (TRL, LLaMA-Factory, the alignment handbook). LoRA's rate is ten times higher: its updates start at zero and are
# scaled by alpha / r. The tiny model's own tuned rates are set explicitly where it is trained (demo, examples).
LEARNING_RATES: dict[str, tuple[float, float]] = {
    "sft": (1e-5, 1e-4), "pretrain": (1e-5, 1e-4), "rft": (1e-5, 1e-4), "distill": (1e-5, 1e-4),
    "dpo": (5e-7, 5e-6), "rm": (1e-5, 1e-4), "rl": (1e-6, 1e-5),
}
SCRATCH_LR = 6e-4  # model.init=scratch: random weights take a pretraining rate (GPT-3 Small, nanoGPT)
MAX_LENGTH_CAP = 2048  # data.max_length when unset is the model's context, but no more than this


def command_of(cfg: Any) -> str:
    """The command a training config belongs to (subclasses first: PretrainConfig is an SFTConfig)."""
    for cls, name in ((PretrainConfig, "pretrain"), (RFTConfig, "rft"), (DistillConfig, "distill"),
                      (SFTConfig, "sft"), (DPOConfig, "dpo"), (RMConfig, "rm"), (RLConfig, "rl")):
        if isinstance(cfg, cls):
            return name
    raise TypeError(f"not a training config: {type(cfg).__name__}")


def resolve_defaults(cfg: Any, context: int | None, trains_adapter: bool | None = None) -> list[str]:
    """Fill in train.lr and data.max_length where they are unset, and check data.max_length against the model's
    context (`context`: its position table, None when unknown). Changes cfg in place, so config.yaml records the
    values used; returns a line per value chosen, for the run's log. `trains_adapter`: whether the run trains
    LoRA adapters (lora.r > 0, or lora.r unset on a model that is an adapter); default lora.r > 0.

    Example (the embedded model has 512 positions):
        >>> cfg = SFTConfig(); resolve_defaults(cfg, 512); (cfg.train.lr, cfg.data.max_length)
        ['train.lr = 1e-05 (the sft default for full fine-tuning)', "data.max_length = 512 (the model's context)"]
        (1e-05, 512)
    """
    notes = []
    if cfg.train.lr is None:
        command = command_of(cfg)
        lora = trains_adapter if trains_adapter is not None else bool(cfg.lora.r)
        if cfg.model.init == "scratch":
            cfg.train.lr, why = SCRATCH_LR, "training from scratch"
        else:
            cfg.train.lr = LEARNING_RATES[command][lora]
            why = f"the {command} default for {'LoRA' if lora else 'full fine-tuning'}"
        notes.append(f"train.lr = {cfg.train.lr:g} ({why})")
    reserved = cfg.sampling.max_new_tokens if isinstance(cfg, RLConfig) else 0  # rl: the completion follows
    also = f" + sampling.max_new_tokens = {reserved}" if reserved else ""
    if cfg.data.max_length is None:
        limits = {f"the cap, {MAX_LENGTH_CAP}": MAX_LENGTH_CAP}
        if context:
            limits["the model's context" + (" less sampling.max_new_tokens" if reserved else "")] = context - reserved
        if cfg.data.pack_length:
            limits["data.pack_length"] = cfg.data.pack_length
        why, cfg.data.max_length = min(limits.items(), key=lambda item: item[1])
        if cfg.data.max_length < 1:
            raise ConfigError(f"sampling.max_new_tokens = {reserved} leaves no room for a prompt in the model's "
                              f"{context} positions — fix: sampling.max_new_tokens={context // 2}")
        notes.append(f"data.max_length = {cfg.data.max_length} ({why})")
    elif context and cfg.data.max_length + reserved > context:
        raise ConfigError(f"data.max_length = {cfg.data.max_length}{also} is more than the model's context, "
                          f"{context} positions (its position table): a longer example would fail inside the model "
                          f"— fix: data.max_length={context - reserved}")
    return notes


def validate(cfg: SFTConfig) -> None:
    """Checks on values that types cannot express. Each error names the key and what to set."""
    positive = {
        "train.micro_batch_size": cfg.train.micro_batch_size, "train.grad_accum": cfg.train.grad_accum,
        "eval.batch_size": cfg.eval.batch_size,
        "checkpoint.keep_last": cfg.checkpoint.keep_last, "log.every": cfg.log.every,
    }
    if cfg.data.max_length is not None:  # unset: resolve_defaults takes the model's context
        positive["data.max_length"] = cfg.data.max_length
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} = {value} must be at least 1")
    non_negative = {
        "train.max_steps": cfg.train.max_steps, "train.warmup_steps": cfg.train.warmup_steps,
        "eval.every": cfg.eval.every, "checkpoint.every": cfg.checkpoint.every, "lora.r": cfg.lora.r or 0,
        "train.max_grad_norm": cfg.train.max_grad_norm, "data.pack_length": cfg.data.pack_length,
        "train.weight_decay": cfg.train.weight_decay, "train.global_batch_size": cfg.train.global_batch_size,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key} = {value} must not be negative")
    if cfg.train.lr is not None and not cfg.train.lr > 0:  # unset: resolve_defaults picks the command's
        raise ConfigError(f"train.lr = {cfg.train.lr} must be positive")
    if cfg.train.max_steps == 0 and not cfg.train.epochs > 0:
        raise ConfigError("train.epochs must be positive when train.max_steps is 0 — set one of them")
    if cfg.data.max_length is not None and 0 < cfg.data.pack_length < cfg.data.max_length:
        raise ConfigError(f"data.pack_length = {cfg.data.pack_length} is below data.max_length = "
                          f"{cfg.data.max_length}: a full-length example would not fit — raise it or set 0")
    sinks = {"tensorboard", "wandb"}
    for sink in cfg.log.report_to:
        if sink not in sinks:
            raise ConfigError(f"log.report_to: unknown sink '{sink}' — valid: {', '.join(sorted(sinks))}")
    if cfg.task.ops == "" or set(cfg.task.ops) - set("+-"):
        raise ConfigError(f"task.ops = {cfg.task.ops!r} must be a non-empty subset of '+-'")


# ----------------------------------------------------------------------------------------------------------------------

def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)
