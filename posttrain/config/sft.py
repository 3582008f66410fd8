"""sft and pretrain: the supervised loop (posttrain/train/sft.py); and the demo, which trains the tiny model."""

from __future__ import annotations

from dataclasses import dataclass, field

from posttrain.config.sections import Config, EnvSection, LLMConfig, ModelConfig, RunConfig, TaskConfig


@dataclass
class SFTSections(RunConfig):
    """sft's own sections, placed before the shared ones (sections.py says why)."""

    env: EnvSection = field(default_factory=EnvSection)
    """env.name=calculator, code or search with the built-in task: train on demonstrations of the environment in use
    (posttrain.envs.builtin.demonstrations) — the tool-use warm start before `posttrain rl env.name=…`. Task
    accuracy by single-turn greedy decoding is then not measured (measure with `posttrain eval env.name=…`)."""


@dataclass
class SFTConfig(LLMConfig, SFTSections):
    """Supervised fine-tuning: masked next-token cross-entropy on assistant tokens (full or LoRA)."""

    output_dir: str = "runs/sft"


@dataclass
class PretrainConfig(SFTConfig):
    """Pretraining from scratch: the SFT loop on a plain-text corpus with every token in the loss."""

    output_dir: str = "runs/pretrain"
    """Run directory: config.yaml, metrics.jsonl, checkpoints/, final/."""
    model: ModelConfig = field(default_factory=lambda: ModelConfig(init="scratch"))
    task: TaskConfig = field(default_factory=lambda: TaskConfig(format="text"))


@dataclass
class DemoConfig(Config):
    """Build the tiny model and the arithmetic task, train it, and print greedy accuracy before and after; or, with
    model=, make a pretrained instruct model better at word problems by RL (posttrain/demo/pretrained.py)."""

    output_dir: str = "runs/demo"
    """Where the demo's runs and plots go."""
    model: str | None = None
    """Unset: the tiny model from random weights (SFT → pairs → RM → DPO → GRPO → PPO). A pretrained instruct
    model (a named model such as smollm2-135m-instruct, a directory or a .gguf file): zero-shot → GRPO with the
    verifier → RFT for the same wall time on arithmetic word problems (about an hour on 2 cores)."""
    env: str = ""
    """With model=: calculator, code or search — the model learns to use that tool instead (zero-shot → SFT on
    demonstrations → GRPO with trajectory vs per-turn credit; posttrain/demo/agent.py, about 35 minutes on 2
    cores with vLLM, 12 of them the zero-shot → SFT → GRPO training)."""
    quick: bool = False
    """A reduced demo (about a minute) used by the tests."""
    seed: int = 0
    """Seed for data, initialization and generation."""
