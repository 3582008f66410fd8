"""Typed configuration: one dataclass per command, built from sections shared by every loop.

    loader.py       defaults ← YAML (-c) ← overrides; unknown keys with a did-you-mean; config.yaml out
    sections.py     the shared sections, and the bases: Config (validate), RunConfig, LLMConfig
    sft.py          sft, pretrain (and the demo)        preference.py   dpo, rm
    rl.py           rl (and explain), rft               distill.py      distill
    inference.py    eval, generate, chat, export, plot  classic.py      classic
    defaults.py     train.lr and data.max_length from the model

Every config class has `validate()`: the checks on values that types cannot express, each error naming the key
and the fix. The CLI calls it for every command; the command line itself is generated from these dataclasses by
`tyro` (see cli.py). `SamplingParams`, the engine's contract and the `sampling` section, lives next to the samplers
(posttrain/rollout/params.py) and is re-exported here.
"""

from posttrain.config.classic import (BCSection, ClassicChoice, ClassicConfig, DDPGSection, DQNSection, PGSection,
                                      PPOSection, TabularSection)
from posttrain.config.defaults import (LEARNING_RATES, MAX_LENGTH_CAP, SCRATCH_LR, command_of,
                                       resolve_defaults)
from posttrain.config.distill import DistillConfig, DistillSection
from posttrain.config.inference import (EVAL_STRATEGIES, BeamConfig, ChatConfig, EvaluateConfig, ExportConfig,
                                        GenerateConfig, PlotConfig, SearchConfig)
from posttrain.config.loader import (apply_resumed, coerce, field_paths, from_dict, load_yaml, save_yaml, to_dict,
                                     unknown_key_error)
from posttrain.config.preference import DPOConfig, DPOSections, PreferenceConfig, RewardConfig, RMConfig, RMSections
from posttrain.config.rl import (AlgoConfig, KLSection, RFTConfig, RFTSection, RLBatchConfig, RLConfig,
                                 RLRewardConfig, RLSections)
from posttrain.config.sections import (CheckpointConfig, Config, DataConfig, EvalConfig, LLMConfig, LogConfig,
                                       LoraConfig, ModelConfig, RolloutConfig, RunConfig, TaskConfig, TrainConfig)
from posttrain.config.sft import DemoConfig, PretrainConfig, SFTConfig
from posttrain.rollout.params import SamplingParams


def validate(cfg: Config) -> None:
    """`cfg.validate()`, for scripts written against the former module-level function."""
    cfg.validate()


__all__ = [
    "AlgoConfig", "BCSection", "BeamConfig", "ChatConfig", "CheckpointConfig", "ClassicChoice", "ClassicConfig",
    "Config", "DDPGSection", "DPOConfig", "DPOSections", "DQNSection", "DataConfig", "DemoConfig", "DistillConfig",
    "DistillSection", "EVAL_STRATEGIES", "EvalConfig", "EvaluateConfig", "ExportConfig", "GenerateConfig",
    "KLSection", "LEARNING_RATES", "LLMConfig", "LogConfig", "LoraConfig", "MAX_LENGTH_CAP", "ModelConfig",
    "PGSection", "PPOSection", "PlotConfig", "PreferenceConfig", "PretrainConfig", "RFTConfig", "RFTSection",
    "RLBatchConfig", "RLConfig", "RLRewardConfig", "RLSections", "RMConfig", "RMSections", "RewardConfig",
    "RolloutConfig", "RunConfig", "SCRATCH_LR", "SFTConfig", "SamplingParams", "SearchConfig", "TabularSection",
    "TaskConfig", "TrainConfig", "apply_resumed", "coerce", "command_of", "field_paths", "from_dict", "load_yaml",
    "resolve_defaults", "save_yaml", "to_dict", "unknown_key_error", "validate",
]
