"""Classic RL on gymnasium, one readable file per family — the foundations the LLM side builds on:

    tabular.py   returns, Monte-Carlo and TD(0) / n-step evaluation, value iteration, policy iteration, SARSA,
                 Q-learning (FrozenLake, the built-in GridWorld)
    dqn.py       DQN with replay and a target network (hard or soft updates), Double DQN, Dueling DQN, n-step
    pg.py        REINFORCE with and without a baseline; A2C on synchronous vector environments
    ppo.py       PPO — GAE and the clipped surrogate are `posttrain.algos` functions, the very objects the LLM
                 loop (`posttrain rl`) calls
    ddpg.py      DDPG and TD3 (Pendulum)
    bc.py        behaviour cloning from expert trajectories

`posttrain classic ALGO --env ENV [key=value ...]`; every module has `DEFAULTS[algo]` (environment, steps,
learning rate, environments in parallel) that fill the config fields left at 0 / empty.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import replace

from posttrain.config import ClassicConfig
from posttrain.errors import ConfigError

# algorithm name → module in this package
ALGORITHMS = {
    "value_iteration": "tabular", "policy_iteration": "tabular", "mc": "tabular", "td": "tabular",
    "sarsa": "tabular", "q_learning": "tabular",
    "dqn": "dqn", "double_dqn": "dqn", "dueling_dqn": "dqn",
    "reinforce": "pg", "a2c": "pg",
    "ppo": "ppo",
    "ddpg": "ddpg", "td3": "ddpg",
    "bc": "bc",
}


def module(algo: str):
    if algo not in ALGORITHMS:
        close = difflib.get_close_matches(algo, list(ALGORITHMS), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(ALGORITHMS)}"
        raise ConfigError(f"algo: unknown classic algorithm '{algo}' — {hint}")
    return importlib.import_module(f"posttrain.classic.{ALGORITHMS[algo]}")


def resolve(cfg: ClassicConfig) -> ClassicConfig:
    """Fill the fields left at their 'algorithm default' value (env "", total_steps / lr / num_envs 0) from the
    module's DEFAULTS, and turn the preset names into their switches (double_dqn → dqn.double, dueling_dqn →
    dqn.dueling, td3 → ddpg.td3)."""
    defaults = module(cfg.algo).DEFAULTS[cfg.algo]
    cfg = replace(cfg, env=cfg.env or defaults["env"], total_steps=cfg.total_steps or defaults["total_steps"],
                  lr=cfg.lr or defaults.get("lr", 0.0), num_envs=cfg.num_envs or defaults.get("num_envs", 1))
    if cfg.algo == "double_dqn":
        cfg = replace(cfg, dqn=replace(cfg.dqn, double=True))
    if cfg.algo == "dueling_dqn":
        cfg = replace(cfg, dqn=replace(cfg.dqn, dueling=True))
    if cfg.algo == "td3":
        cfg = replace(cfg, ddpg=replace(cfg.ddpg, td3=True))
    for key in ("total_steps", "num_envs", "eval_episodes"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} = {getattr(cfg, key)} must be at least 1")
    if not 0.0 <= cfg.gamma <= 1.0:
        raise ConfigError(f"gamma = {cfg.gamma} must lie in [0, 1]")
    return cfg


def run(cfg: ClassicConfig) -> dict:
    """Run one classic algorithm; returns its summary (also in RUN_DIR/final/summary.json)."""
    cfg = resolve(cfg)
    return module(cfg.algo).run(cfg)
