"""Built-in rewards, chosen by name (reward.function=code_tests): trusted code of this package, run in the trainer's
process as a VerifierReward; what they execute of the model's output they execute in posttrain.sandbox."""

from __future__ import annotations

import importlib

from posttrain.errors import ConfigError
from posttrain.rewards.contract import RewardSource, VerifierReward
from posttrain.sandbox import Limits

# name → "module:function" of a built-in reward, called as fn(prompt, completion, limits=sandbox.Limits(…), **row)
BUILTIN_REWARDS = {"code_tests": "posttrain.tasks.code:code_tests"}  # the fraction of the row's `tests` that pass


def builtin_reward(name: str, timeout_s: float = 10.0, batched: bool = False) -> RewardSource:
    """A built-in reward by name, e.g. reward.function=code_tests (with prompt rows that carry `tests`). It runs in
    this process — it is trusted code, and what it executes it sandboxes — with timeout_s as the sandbox's wall
    clock and CPU limit."""
    if batched:
        raise ConfigError(f"the built-in reward {name} scores one sample at a time — fix: "
                          "reward.function_batched=false")
    if not timeout_s > 0:
        raise ConfigError(f"reward.timeout_s must be positive, got {timeout_s}")
    module, _, function = BUILTIN_REWARDS[name].partition(":")
    fn = getattr(importlib.import_module(module), function)
    limits = Limits(wall_s=timeout_s, cpu_s=timeout_s)
    return VerifierReward(lambda prompt, completion, **row: fn(prompt, completion, limits=limits, **row), name=name)
