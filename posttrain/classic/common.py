"""Plumbing the classic algorithms share: environments (and the built-in gridworld), greedy evaluation over N
episodes, the run directory with its metrics, and checkpoints that resume exactly. The run directory follows the
rules every training command follows (run_dir.py: open_run, write_final); checkpoints are written by the same
atomic protocol (checkpoint.save) — nothing here comes from the LLM loops in train/.

A checkpoint holds everything the next step depends on:
    {name}.safetensors    each network's weights              {name}.pt      each optimizer's state
    tensors.safetensors   the replay buffer / rollout arrays   rng.pt         python, numpy, torch RNGs
    state.json            counters, ε, episode statistics and every environment's own state (its RNG, its
                          physical state, its time-limit counter), so the environments continue exactly too.

The algorithm files (`tabular.py`, `dqn.py`, `pg.py`, `ppo.py`, `ddpg.py`, `bc.py`) read top to bottom; only
what is not the algorithm lives here.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from safetensors.torch import load_file, save_file

from posttrain import checkpoint, config as C
from posttrain.run_dir import open_run, write_final
from posttrain.track import Tracker

GRIDWORLD = "GridWorld"


# ---------------------------------------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------------------------------------

class GridWorld(gym.Env):
    """The built-in 4×4 gridworld (Sutton & Barto, example 4.1): states 0..15 row by row, the corners 0 and 15
    are terminal, actions up/right/down/left (0..3), reward −1 per step, a move off the grid stays put.
    `P[s][a]` lists (probability, next state, reward, terminated) like FrozenLake's, so the planning methods
    read both the same way. Under the uniform random policy with γ = 1 the state values are the book's
    0, −14, −20, −22, … (tests/classic/test_classic_tabular.py checks them)."""

    metadata = {"render_modes": []}

    def __init__(self, size: int = 4, max_steps: int = 1_000):
        self.size, self.max_steps = size, max_steps
        n = size * size
        self.observation_space, self.action_space = gym.spaces.Discrete(n), gym.spaces.Discrete(4)
        self.terminal = {0, n - 1}
        self.P = {s: {a: [(1.0, *self._move(s, a))] for a in range(4)} for s in range(n)}
        self.s, self.t = 1, 0

    def _move(self, s: int, a: int) -> tuple[int, float, bool]:
        if s in self.terminal:
            return s, 0.0, True
        row, col = divmod(s, self.size)
        row, col = [(row - 1, col), (row, col + 1), (row + 1, col), (row, col - 1)][a]
        if not (0 <= row < self.size and 0 <= col < self.size):
            row, col = divmod(s, self.size)
        nxt = row * self.size + col
        return nxt, -1.0, nxt in self.terminal

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        starts = [s for s in range(self.size * self.size) if s not in self.terminal]
        self.s, self.t = int(self.np_random.choice(starts)), 0
        return self.s, {}

    def step(self, action):
        _, self.s, reward, terminated = self.P[self.s][int(action)][0]
        self.t += 1
        return self.s, reward, terminated, self.t >= self.max_steps, {}


def make_env(env_id: str, seed: int | None = None, **kwargs) -> gym.Env:
    """One environment, reset with `seed` (so its RNG is seeded) when a seed is given."""
    env = GridWorld(**kwargs) if env_id == GRIDWORLD else gym.make(env_id, **kwargs)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def make_vector_env(env_id: str, num_envs: int, seed: int, **kwargs) -> gym.vector.SyncVectorEnv:
    """`num_envs` copies stepped in lockstep. Autoreset in the same step: when an episode ends, the returned
    observation is already the next episode's first one and the last one is in info["final_obs"]."""
    envs = gym.vector.SyncVectorEnv([lambda: make_env(env_id, **kwargs) for _ in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    envs.reset(seed=[seed + i for i in range(num_envs)])
    envs.action_space.seed(seed)
    return envs


def env_state(env) -> dict:
    """Everything an environment carries between steps, as plain JSON: for every wrapper layer its numeric
    attributes (physical state, time-limit counter …) and the environment's RNG. Works for the classic-control
    and toy-text environments, the gridworld, and synchronous vector envs of them."""
    if isinstance(env, gym.vector.SyncVectorEnv):
        return {"vector": _numeric_attrs(env), "envs": [env_state(e) for e in env.envs]}
    layers, layer = [], env
    while True:
        layers.append(_numeric_attrs(layer))
        if not hasattr(layer, "env"):
            break
        layer = layer.env
    return {"layers": layers, "np_random": env.unwrapped.np_random.bit_generator.state}


def set_env_state(env, state: dict) -> None:
    if isinstance(env, gym.vector.SyncVectorEnv):
        _set_attrs(env, state["vector"])
        for e, s in zip(env.envs, state["envs"]):
            set_env_state(e, s)
        return
    layer = env
    for attrs in state["layers"]:
        _set_attrs(layer, attrs)
        layer = getattr(layer, "env", None)
    env.unwrapped.np_random.bit_generator.state = state["np_random"]


def _numeric_attrs(obj) -> dict:
    out = {}
    for name, value in vars(obj).items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            out[name] = {"array": value.tolist(), "dtype": str(value.dtype), "shape": list(value.shape)}
        elif isinstance(value, np.generic) and value.dtype.kind in "biuf":
            out[name] = {"scalar": value.item(), "dtype": str(value.dtype)}
        elif value is None or isinstance(value, (bool, int, float)):
            out[name] = {"plain": value}
    return out


def _set_attrs(obj, attrs: dict) -> None:
    for name, v in attrs.items():
        if "array" in v:
            value = np.array(v["array"], dtype=v["dtype"]).reshape(v["shape"])
        elif "scalar" in v:
            value = np.dtype(v["dtype"]).type(v["scalar"])
        else:
            value = v["plain"]
        setattr(obj, name, value)


def evaluate(act: Callable[[np.ndarray], Any], env_id: str, episodes: int, seed: int, **kwargs) -> dict:
    """Run `episodes` episodes of `act` (observation → action, normally greedy) on fresh environments seeded
    apart from training's (seed + 10_000 + i). Returns eval/return (mean), its std, min and max, and eval/length."""
    env = make_env(env_id, **kwargs)
    returns, lengths = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + 10_000 + i)
        total, steps, done = 0.0, 0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total, steps, done = total + float(reward), steps + 1, terminated or truncated
        returns.append(total)
        lengths.append(steps)
    env.close()
    r = np.array(returns)
    return {"eval/return": float(r.mean()), "eval/return_std": float(r.std()), "eval/return_min": float(r.min()),
            "eval/return_max": float(r.max()), "eval/length": float(np.mean(lengths))}


def mlp(sizes: list[int], activation: type[torch.nn.Module] = torch.nn.Tanh) -> torch.nn.Sequential:
    """Linear layers of the given sizes with `activation` between them (none after the last)."""
    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return torch.nn.Sequential(*layers)


@torch.no_grad()
def soft_update(target: torch.nn.Module, online: torch.nn.Module, tau: float) -> None:
    """Polyak averaging θ' ← τθ + (1 − τ)θ' parameter by parameter (Lillicrap et al. 2016); τ = 1 is a hard copy.
    E.g. θ' = 0, θ = 1, τ = 0.1 → 0.1; again → 0.19."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.lerp_(o, tau)


# ---------------------------------------------------------------------------------------------------------------------
# The run: directory, metrics, checkpoints
# ---------------------------------------------------------------------------------------------------------------------

class Run:
    """One classic run's directory. `resume` is the checkpoint to continue from (or None); `log` writes a
    metrics line; `save` / `load` write and read exact-resume checkpoints; `finish` writes final/."""

    def __init__(self, cfg, total: int):
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.dir, self.resume = open_run(cfg, command="classic")
        self.start_step = json.loads((self.resume / "state.json").read_text())["step"] if self.resume else 0
        self.tracker = Tracker(self.dir, total_steps=total, start_step=self.start_step,
                               report_to=cfg.log.report_to, progress=cfg.log.progress, config=C.to_dict(cfg))
        self.last_saved = self.start_step

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.tracker.log(step, metrics)

    def due(self, step: int) -> bool:
        """True when checkpoint.every steps have passed since the last checkpoint."""
        every = self.cfg.checkpoint.every
        return every > 0 and step - self.last_saved >= every

    def save(self, step: int, *, modules: dict[str, Any], state: dict, envs: dict[str, Any] | None = None,
             tensors: dict[str, torch.Tensor] | None = None) -> Path:
        """Write a checkpoint atomically: modules (nn.Module → safetensors, optimizer → .pt), tensors, every RNG,
        and state.json with `state` and each environment's state."""
        def write(d: Path) -> None:
            for name, m in modules.items():
                if isinstance(m, torch.nn.Module):
                    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, d / f"{name}.safetensors")
                else:
                    torch.save(m.state_dict(), d / f"{name}.pt")
            if tensors:
                save_file({k: v.contiguous() for k, v in tensors.items()}, d / "tensors.safetensors")
            torch.save(checkpoint.rng_state(), d / "rng.pt")
            envs_state = {name: env_state(e) for name, e in (envs or {}).items()}
            (d / "state.json").write_text(json.dumps({"step": step, **state, "envs": envs_state}))

        self.last_saved = step
        return checkpoint.save(self.dir, step, write, self.cfg.checkpoint.keep_last)

    def load(self, *, modules: dict[str, Any], envs: dict[str, Any] | None = None
             ) -> tuple[dict, dict[str, torch.Tensor]]:
        """Restore modules, RNGs and environments from `self.resume`; returns (state, tensors)."""
        d = self.resume
        for name, m in modules.items():
            if isinstance(m, torch.nn.Module):
                m.load_state_dict(load_file(d / f"{name}.safetensors"))
            else:
                m.load_state_dict(torch.load(d / f"{name}.pt", weights_only=True))
        checkpoint.set_rng_state(torch.load(d / "rng.pt", weights_only=True))
        state = json.loads((d / "state.json").read_text())
        for name, e in (envs or {}).items():
            set_env_state(e, state["envs"][name])
        tensors = load_file(d / "tensors.safetensors") if (d / "tensors.safetensors").exists() else {}
        return state, tensors

    def finish(self, modules: dict[str, torch.nn.Module], summary: dict) -> Path:
        """Write final/ (the networks as safetensors and summary.json) atomically, as the LLM loops do, close the
        metrics and print the result."""
        def write(d: Path) -> None:
            for name, m in modules.items():
                save_file({k: v.contiguous() for k, v in m.state_dict().items()}, d / f"{name}.safetensors")
            (d / "summary.json").write_text(json.dumps(summary, indent=2))

        final = write_final(self.dir, write)
        self.tracker.close()
        shown = ", ".join(f"{k} {v:.4g}" for k, v in summary.items() if isinstance(v, float))
        print(f"done: {shown} — in {final}", flush=True)
        return final


class StepTimer:
    """Environment steps per second since the last call (the `sps` metric)."""

    def __init__(self):
        self.t, self.steps = time.time(), 0

    def __call__(self, step: int) -> float:
        now = time.time()
        rate = (step - self.steps) / max(now - self.t, 1e-9)
        self.t, self.steps = now, step
        return rate
