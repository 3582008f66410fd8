"""The commands that use a model without training it: eval (accuracy and test-time search), generate, chat,
export and plot."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import tyro

from posttrain.config.sections import Config, EnvSection, RolloutConfig, TaskConfig
from posttrain.errors import ConfigError
from posttrain.rollout.params import SamplingParams


@dataclass
class SearchConfig(Config):
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
class EvaluateConfig(Config):
    """Evaluate a policy on held-out problems: accuracy, pass@k, maj@k, and a compute-matched table of test-time
    strategies (greedy, sampling, majority vote, best-of-N and weighted vote with a reward model or PRM, step-level
    beam search and MCTS with a PRM) with the generated tokens each spends per problem."""

    model: str = "tiny"
    """The policy: a model directory, a LoRA adapter directory, a run directory (its final/), a .gguf file or a
    named model (model.name_or_path's help), or 'tiny'."""
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
    env: EnvSection = field(default_factory=EnvSection)
    """env.name set: one more row, "greedy + tools" — greedy multi-turn episodes with the environment's tools,
    the final answers scored like every other row (success rate), with tool-call rate, errors and turns."""

    def validate(self) -> EvaluateConfig:
        """search.*, the strategies, num_problems and rollout.*."""
        self.search.validate()
        unknown = [s for s in self.strategies if s not in EVAL_STRATEGIES]
        if unknown or not self.strategies:
            raise ConfigError(f"strategies = {self.strategies}: {unknown or 'empty'} — fix: choose from "
                              f"{', '.join(EVAL_STRATEGIES)}")
        if self.num_problems < 0:
            raise ConfigError(f"num_problems = {self.num_problems} must be ≥ 0 — fix: 0 evaluates every problem")
        self.rollout.validate()
        self.env.validate()
        return self


@dataclass
class BeamConfig(Config):
    """Beam search instead of sampling (posttrain.rollout.beam; HF's num_beams semantics)."""

    num_beams: int = 1
    """Beams kept per step; 1 disables beam search (the sampling section applies)."""
    length_penalty: float = 1.0
    """Hypotheses are ranked by logprob / length ** length_penalty."""
    early_stopping: Literal["true", "false", "never"] = "false"
    """true: stop once num_beams hypotheses are finished; false: HF's heuristic; never: exact search."""
    num_return_sequences: int = 1
    """Best hypotheses written per prompt (≤ num_beams)."""

    def validate(self) -> BeamConfig:
        """Checked when beam search runs (num_beams > 1)."""
        if not 1 <= self.num_return_sequences <= self.num_beams:
            raise ConfigError(f"beam.num_return_sequences = {self.num_return_sequences} must be in 1..beam.num_beams "
                              f"({self.num_beams})")
        return self


@dataclass
class GenerateConfig(Config):
    """Generate completions for a file of prompts (or the built-in task) and write them as JSONL."""

    model: str = "tiny"
    """A model directory, a LoRA adapter directory, a run directory (its final/), a .gguf file or a named model
    (model.name_or_path's help), or 'tiny'."""
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

    def validate(self) -> GenerateConfig:
        """sampling.*, then beam.* when beam search runs, else rollout.* (the engine's)."""
        self.sampling.validate()
        if self.beam.num_beams > 1:  # beam search replaces the engine
            self.beam.validate()
        else:
            self.rollout.validate()
        return self


@dataclass
class ChatConfig(Config):
    """Talk to a model in the terminal, with its chat template. /reset clears the conversation, /exit leaves."""

    model: str = "tiny"
    """A model directory, a LoRA adapter directory, a run directory (its final/), a .gguf file or a named model
    (model.name_or_path's help), or 'tiny'."""
    system: str = ""
    """An optional system message."""
    seed: int = 0
    """Seed for sampling."""
    sampling: SamplingParams = field(default_factory=lambda: SamplingParams(temperature=0.7, max_new_tokens=256))
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    def validate(self) -> ChatConfig:
        """sampling.* and rollout.*."""
        self.sampling.validate()
        self.rollout.validate()
        return self


@dataclass
class ExportConfig(Config):
    """Write a plain Hugging Face model directory from a run (LoRA adapters merged into the base). A reward model
    keeps its head (AutoModelForSequenceClassification; a PRM AutoModelForTokenClassification) and the pad token."""

    run_dir: tyro.conf.Positional[str]
    """A run directory (its final/ or latest checkpoint is used), a model/adapter directory, or a .gguf file or named
    model (written as the plain directory it converts to)."""
    out: tyro.conf.Positional[str]
    """Output directory for the merged model and tokenizer."""


@dataclass
class PlotConfig(Config):
    """Draw PNG curves of a run's metrics.jsonl into RUN_DIR/plots/."""

    run_dir: tyro.conf.Positional[str]
    """The run directory holding metrics.jsonl."""


# ----------------------------------------------------------------------------------------------------------------------
# YAML overlay, dotted overrides, validation
