"""Behaviour cloning: supervised learning of an expert's actions (CartPole-v1 by default).

Record `bc.episodes` episodes of an expert, then fit π(s) to the expert's action in every visited state:
cross-entropy over the actions for a discrete action space (a classifier), mean squared error for a continuous
one (a regressor, squashed into the action box like the DDPG actor). Pomerleau 1991 (ALVINN) is the classic;
Ross et al. 2011 (DAgger) explain its weakness: the learner only sees the expert's states, so an early mistake
leads it into states nobody showed it, and errors compound — O(εT²) over a horizon T instead of O(εT). On
CartPole the expert keeps the pole near upright, the learner imitates it well enough to stay there, and 10
episodes (5,000 states) are plenty.

Here `total_steps` counts **gradient steps** (minibatches of `bc.batch_size` demonstration pairs), not
environment steps: the only environment steps are the expert's recording and the evaluations.

The expert:
  - `bc.expert=RUN_DIR`: a trained classic policy — dqn / double_dqn / dueling_dqn (the greedy action of its
    Q-network), ppo, reinforce, a2c (the most likely action of its actor), ddpg / td3 (its deterministic actor),
    rebuilt from RUN_DIR/config.yaml and RUN_DIR/final/*.safetensors;
  - otherwise a scripted controller:
      CartPole-v1: push right when θ + 0.5·θ̇ + 0.01·x + 0.1·ẋ > 0 (the pole leans, or is falling, right; the
        small cart terms stop it drifting off the track) — 500, the maximum, on every seed tried;
      Pendulum-v1: energy pumping then a PD hold. With gymnasium's dynamics θ̈ = 15·sin θ + 3u (θ = 0 upright)
        the energy H = θ̇²/2 + 15·cos θ is 15 for the pendulum at rest on top; below the top it pushes with
        u = 0.3·(15 − H)·θ̇ (clipped to ±2): along θ̇ while H < 15, adding energy, against it while H > 15;
        once cos θ > 0.9 it holds with u = −(10θ + 2θ̇). About −130 to −150 on average (DDPG/TD3 after 10k
        steps: about −110; random: about −1200). Cloning it needs more than CartPole: 20 episodes and 5,000
        gradient steps measured −146 (expert −150 on those seeds).

Logged: `expert/return` (mean over the recorded episodes), `loss` (and `accuracy` for discrete actions) every
`LOG_EVERY` gradient steps, `eval/return` of the learner.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from posttrain import config as C
from posttrain.classic import common
from posttrain.config import ClassicConfig
from posttrain.errors import ConfigError

DEFAULTS = {"bc": {"env": "CartPole-v1", "total_steps": 2_000, "lr": 1e-3, "num_envs": 1}}

LOG_EVERY = 50  # gradient steps per metrics line (the mean loss over them)


# ---------------------------------------------------------------------------------------------------------------------
# Experts: obs → action
# ---------------------------------------------------------------------------------------------------------------------

def cartpole_expert(obs: np.ndarray) -> int:
    x, x_dot, theta, theta_dot = obs
    return int(theta + 0.5 * theta_dot + 0.01 * x + 0.1 * x_dot > 0)


def pendulum_expert(obs: np.ndarray) -> np.ndarray:
    cos, sin, theta_dot = obs
    theta = np.arctan2(sin, cos)
    if cos > 0.9:  # near the top: PD hold
        u = -(10.0 * theta + 2.0 * theta_dot)
    else:  # swing up: push along θ̇ while below the top's energy, against it above (saturates at ±2)
        energy = theta_dot ** 2 / 2 + 15.0 * cos
        u = 0.3 * (15.0 - energy) * theta_dot
    return np.clip([u], -2.0, 2.0).astype(np.float32)


SCRIPTED = {"CartPole-v1": cartpole_expert, "Pendulum-v1": pendulum_expert}


def trained_expert(run_dir: str, env) -> Callable[[np.ndarray], object]:
    """The greedy policy of a finished classic run, rebuilt from its config.yaml and final/ weights."""
    from safetensors.torch import load_file

    d = Path(run_dir)
    if not (d / "config.yaml").is_file() or not (d / "final").is_dir():
        raise ConfigError(f"bc.expert = {run_dir}: not a finished classic run (needs config.yaml and final/) — "
                          "fix: point it at a run directory of `posttrain classic ALGO`, or leave it empty")
    ecfg = C.load_yaml(d / "config.yaml", ClassicConfig)
    obs_dim = env.observation_space.shape[0]
    if ecfg.algo in ("dqn", "double_dqn", "dueling_dqn"):
        from posttrain.classic.dqn import QNetwork
        net = QNetwork(obs_dim, env.action_space.n, ecfg.dqn.hidden, ecfg.dqn.dueling or ecfg.algo == "dueling_dqn")
        net.load_state_dict(load_file(d / "final" / "q.safetensors"))
        head = net
    elif ecfg.algo in ("ppo", "reinforce", "a2c"):
        from posttrain.classic.ppo import Agent
        hidden = ecfg.ppo.hidden if ecfg.algo == "ppo" else ecfg.pg.hidden
        weights = load_file(d / "final" / "agent.safetensors")
        net = Agent(obs_dim, env.action_space.n, hidden, shared=any(k.startswith("trunk.") for k in weights))
        net.load_state_dict(weights)
        head = lambda o: net(o)[0]  # noqa: E731 — the actor's logits
    elif ecfg.algo in ("ddpg", "td3"):
        from posttrain.classic.ddpg import Actor, greedy
        net = Actor(obs_dim, env.action_space.shape[0], ecfg.ddpg.hidden, env.action_space.low, env.action_space.high)
        net.load_state_dict(load_file(d / "final" / "actor.safetensors"))
        return greedy(net)
    else:
        raise ConfigError(f"bc.expert = {run_dir}: a {ecfg.algo} run has no network policy to imitate — fix: use a "
                          "dqn, ppo, reinforce, a2c, ddpg or td3 run")

    @torch.no_grad()
    def act(obs: np.ndarray) -> int:
        return int(head(torch.as_tensor(obs, dtype=torch.float32)[None])[0].argmax())
    return act


def record(expert: Callable, env_id: str, episodes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, list]:
    """`episodes` expert episodes on seeds seed, seed + 1, … (evaluation uses seed + 10,000 + i) → (obs [N, d],
    actions [N] or [N, a], returns)."""
    env = common.make_env(env_id)
    obs_rows, act_rows, returns = [], [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        total, done = 0.0, False
        while not done:
            action = expert(obs)
            obs_rows.append(np.asarray(obs, dtype=np.float32))
            act_rows.append(action)
            obs, reward, terminated, truncated, _ = env.step(action)
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    actions = torch.as_tensor(np.array(act_rows))
    return torch.as_tensor(np.stack(obs_rows)), actions, returns


# ---------------------------------------------------------------------------------------------------------------------
# The learner and the loop
# ---------------------------------------------------------------------------------------------------------------------

class Policy(torch.nn.Module):
    """obs → logits (discrete) or an action squashed into [low, high] by tanh (continuous)."""

    def __init__(self, obs_dim: int, out_dim: int, hidden: int, low=None, high=None):
        super().__init__()
        self.net = common.mlp([obs_dim, hidden, hidden, out_dim])
        self.continuous = low is not None
        if self.continuous:
            self.register_buffer("scale", torch.as_tensor((high - low) / 2, dtype=torch.float32))
            self.register_buffer("centre", torch.as_tensor((high + low) / 2, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.net(obs)
        return self.centre + self.scale * torch.tanh(out) if self.continuous else out

    @torch.no_grad()
    def act(self, obs: np.ndarray):
        out = self(torch.as_tensor(obs, dtype=torch.float32))
        return out.numpy() if self.continuous else int(out.argmax())


def run(cfg: ClassicConfig) -> dict:
    b = cfg.bc
    env = common.make_env(cfg.env)
    if b.expert:
        expert = trained_expert(b.expert, env)
    elif cfg.env in SCRIPTED:
        expert = SCRIPTED[cfg.env]
    else:
        raise ConfigError(f"bc on {cfg.env}: no scripted expert (there are for {', '.join(SCRIPTED)}) — fix: "
                          "bc.expert=RUN_DIR of a trained classic policy on this environment")
    continuous = hasattr(env.action_space, "low")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    obs_dim = env.observation_space.shape[0]
    policy = (Policy(obs_dim, env.action_space.shape[0], b.hidden, env.action_space.low, env.action_space.high)
              if continuous else Policy(obs_dim, env.action_space.n, b.hidden))
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    env.close()

    run = common.Run(cfg, total=cfg.total_steps)
    if run.resume:
        state, data = run.load(modules={"policy": policy, "optimizer": optimizer})
        step, expert_returns, window = state["step"], state["expert_returns"], state["window"]
        obs, actions = data["obs"], data["actions"]
    else:
        # ---- the demonstrations
        obs, actions, expert_returns = record(expert, cfg.env, b.episodes, cfg.seed)
        step, window = 0, []
        run.log(0, {"expert/return": float(np.mean(expert_returns)), "expert/episodes": len(expert_returns),
                    "expert/transitions": len(obs)})

    def checkpoint_now(step: int) -> None:
        run.save(step, modules={"policy": policy, "optimizer": optimizer}, tensors={"obs": obs, "actions": actions},
                 state={"expert_returns": expert_returns, "window": window})

    # ---- supervised steps: a random minibatch of (state, expert action) pairs each
    while step < cfg.total_steps:
        idx = torch.randint(0, len(obs), (b.batch_size,))
        out = policy(obs[idx])
        if continuous:
            loss, accuracy = F.mse_loss(out, actions[idx].float()), 0.0  # no accuracy for a regressor
        else:
            loss = F.cross_entropy(out, actions[idx].long())
            accuracy = (out.argmax(-1) == actions[idx]).float().mean().item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        run.tracker.advance(1)
        window.append([loss.item(), accuracy])  # this log interval's losses (checkpointed: it may span one)
        if step % LOG_EVERY == 0 or step == cfg.total_steps:
            metrics = {"loss": float(np.mean([w[0] for w in window]))}
            if not continuous:
                metrics["accuracy"] = float(np.mean([w[1] for w in window]))
            run.log(step, metrics)
            window = []
        if cfg.eval_every > 0 and step % cfg.eval_every == 0:
            run.log(step, common.evaluate(policy.act, cfg.env, cfg.eval_episodes, cfg.seed))
        if run.due(step):
            checkpoint_now(step)

    if run.last_saved != step:
        checkpoint_now(step)
    summary = {"algo": cfg.algo, "env": cfg.env, "gradient_steps": step, "env_steps": int(len(obs)),
               "expert/return": float(np.mean(expert_returns)),
               **common.evaluate(policy.act, cfg.env, cfg.eval_episodes, cfg.seed)}
    run.finish({"policy": policy}, summary)
    return summary
