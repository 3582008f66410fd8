"""DDPG and TD3: off-policy actor-critic for continuous actions (Pendulum-v1 by default).

DDPG (Lillicrap et al. 2016, "Continuous control with deep reinforcement learning"): a deterministic actor
μ(s) = centre + half_range · tanh(f(s)) and a critic Q(s, a). The critic regresses on the one-step target

    y = r + γ · (1 − terminated) · Q'(s', μ'(s'))

and the actor climbs the critic, maximizing Q(s, μ(s)) (the deterministic policy gradient ∇_a Q · ∇_θ μ).
Q' and μ' are slowly-moving copies, θ' ← τθ + (1 − τ)θ' after each update (τ = 0.005 moves a target 0.5% of
the way per step, so it trails the online network by ~1/τ = 200 updates). Transitions go to a replay buffer;
exploration is the actor's action plus Gaussian noise, after `learning_starts` steps of uniform random actions.

TD3 (Fujimoto et al. 2018, "Addressing Function Approximation Error in Actor-Critic Methods"), `ddpg.td3=true`
or `posttrain classic td3`, fixes DDPG's overestimation with three changes:
  - twin critics, and the target takes the smaller one:  y = r + γ (1 − d) · min(Q'₁, Q'₂)(s', ã);
  - target-policy smoothing: ã = clip(μ'(s') + clip(σ̃·ε, −c, c), low, high), ε ~ N(0, 1), so the target
    averages Q over a small neighbourhood of the target action instead of trusting a sharp peak;
  - delayed policy updates: the actor and the targets move once per `policy_delay` (2) critic updates.
Worked numbers (Pendulum, actions in [−2, 2], half range 2): σ̃ = 0.2·2 = 0.4, c = 0.5·2 = 1; with μ'(s') = 1.8
and ε = 3 the noise 1.2 is clipped to 1.0 and the action 2.8 to 2.0; with Q'₁ = 5, Q'₂ = 3, r = −1, γ = 0.99 the
target is −1 + 0.99·3 = 1.97 (tests/classic/test_classic_ddpg.py).

Termination versus truncation: Pendulum never terminates; its 200-step time limit truncates. A truncated
episode's last state still has a future, so its target bootstraps (d = 0); only `terminated` zeroes it.

Noise scales (exploration `noise`, `target_noise`, `noise_clip`) are fractions of the half range — the actor's
tanh scale — as in the TD3 paper (0.1 · max_action). One environment; one gradient step per environment step.
Random actions, exploration noise and minibatches all draw from torch's RNG, which the checkpoint carries, so a
resumed run continues exactly.

Reaches (the defaults, 10,000 steps, 20 evaluation episodes; random is about −1200, the scripted swing-up in
bc.py about −130): DDPG −110 / −133 / −132 and TD3 −114 / −137 / −201 on seeds 0 / 1 / 2, 1–1.5 minutes each
on one shared CPU thread (TD3, whose actor moves half as often, starts slower: seed 2 needs more steps).
DDPG already evaluates at about −100 after 5,000 steps (the learning check in tests/classic/test_classic_ddpg.py).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from posttrain.classic import common
from posttrain.classic.common import soft_update
from posttrain.config import ClassicConfig
from posttrain.errors import ConfigError

DEFAULTS = {
    "ddpg": {"env": "Pendulum-v1", "total_steps": 10_000, "lr": 1e-3, "num_envs": 1},
    "td3": {"env": "Pendulum-v1", "total_steps": 10_000, "lr": 1e-3, "num_envs": 1},
}


# ---------------------------------------------------------------------------------------------------------------------
# Networks
# ---------------------------------------------------------------------------------------------------------------------

class Actor(torch.nn.Module):
    """μ(s) = centre + half_range · tanh(f(s)): always inside the action box."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, low: np.ndarray, high: np.ndarray):
        super().__init__()
        self.net = common.mlp([obs_dim, hidden, hidden, act_dim], torch.nn.ReLU)
        self.register_buffer("scale", torch.as_tensor((high - low) / 2, dtype=torch.float32))
        self.register_buffer("centre", torch.as_tensor((high + low) / 2, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.centre + self.scale * torch.tanh(self.net(obs))


class Critic(torch.nn.Module):
    """Q(s, a): the state and the action concatenated into one MLP."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.net = common.mlp([obs_dim + act_dim, hidden, hidden, 1], torch.nn.ReLU)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=-1)).squeeze(-1)


# ---------------------------------------------------------------------------------------------------------------------
# The algorithm's math
# ---------------------------------------------------------------------------------------------------------------------

def smoothed_action(action: torch.Tensor, eps: torch.Tensor, std: torch.Tensor, clip: torch.Tensor,
                    low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """TD3 target-policy smoothing: action + clip(std·ε, −clip, clip), kept inside [low, high]. ε ~ N(0, 1) is
    passed in so the function is pure (the test hands it ε = 3)."""
    noise = torch.maximum(torch.minimum(eps * std, clip), -clip)
    return torch.maximum(torch.minimum(action + noise, high), low)


def td_target(reward: torch.Tensor, terminated: torch.Tensor, next_q: list[torch.Tensor],
              gamma: float) -> torch.Tensor:
    """y = r + γ · (1 − terminated) · min_i Q'_i(s', a'). One critic is DDPG; two are TD3's clipped double Q.
    `terminated` (not `truncated`) cuts the bootstrap: a time-limit cut leaves the future in place."""
    q = torch.stack(next_q).min(dim=0).values
    return reward + gamma * (1.0 - terminated) * q


# ---------------------------------------------------------------------------------------------------------------------
# The update
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class Nets:
    """The actor, one (DDPG) or two (TD3) critics, their slowly-moving targets and the two optimizers."""

    actor: Actor
    critics: list[Critic]
    actor_target: Actor
    critic_targets: list[Critic]
    actor_opt: torch.optim.Optimizer
    critic_opt: torch.optim.Optimizer
    low: torch.Tensor   # the action box
    high: torch.Tensor

    @classmethod
    def build(cls, obs_dim: int, act_dim: int, d, lr: float, low: np.ndarray, high: np.ndarray) -> "Nets":
        actor = Actor(obs_dim, act_dim, d.hidden, low, high)
        critics = [Critic(obs_dim, act_dim, d.hidden) for _ in range(2 if d.td3 else 1)]
        return cls(actor, critics, copy.deepcopy(actor), [copy.deepcopy(c) for c in critics],
                   torch.optim.Adam(actor.parameters(), lr=lr),
                   torch.optim.Adam([p for c in critics for p in c.parameters()], lr=lr),
                   torch.as_tensor(low, dtype=torch.float32), torch.as_tensor(high, dtype=torch.float32))

    def modules(self) -> dict:
        """Everything a checkpoint holds, by name."""
        return {"actor": self.actor, "actor_target": self.actor_target, "actor_opt": self.actor_opt,
                "critic_opt": self.critic_opt, **{f"critic{i}": c for i, c in enumerate(self.critics)},
                **{f"critic{i}_target": c for i, c in enumerate(self.critic_targets)}}


def learn(nets: Nets, b: dict, cfg: ClassicConfig, actor_turn: bool) -> tuple[float, float, float | None]:
    """One critic step on the minibatch `b` toward the (TD3: smoothed, clipped double-Q) target; on the actor's
    turn also one actor step up the first critic and a Polyak move of every target.
    Returns (critic loss, mean Q, actor loss or None)."""
    d, low, high = cfg.ddpg, nets.low, nets.high
    scale = (high - low) / 2
    with torch.no_grad():
        next_action = nets.actor_target(b["next_obs"])
        if d.td3:
            next_action = smoothed_action(next_action, torch.randn_like(next_action), d.target_noise * scale,
                                          d.noise_clip * scale, low, high)
        y = td_target(b["reward"], b["terminated"], [c(b["next_obs"], next_action) for c in nets.critic_targets],
                      cfg.gamma)
    qs = [c(b["obs"], b["action"]) for c in nets.critics]
    value_loss = sum(F.mse_loss(q, y) for q in qs)
    nets.critic_opt.zero_grad()
    value_loss.backward()
    nets.critic_opt.step()
    if not actor_turn:
        return value_loss.item(), qs[0].mean().item(), None
    policy_loss = -nets.critics[0](b["obs"], nets.actor(b["obs"])).mean()  # TD3: the first critic only
    nets.actor_opt.zero_grad()
    policy_loss.backward()
    nets.actor_opt.step()
    soft_update(nets.actor_target, nets.actor, d.tau)
    for t, c in zip(nets.critic_targets, nets.critics):
        soft_update(t, c, d.tau)
    return value_loss.item(), qs[0].mean().item(), policy_loss.item()


# ---------------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------------

# One function on purpose (≈85 lines): the whole algorithm reads top to bottom, CleanRL-style (DESIGN §4).
def run(cfg: ClassicConfig) -> dict:
    d = cfg.ddpg
    if cfg.num_envs != 1:
        raise ConfigError(f"num_envs = {cfg.num_envs}: ddpg/td3 step one environment — fix: num_envs=1")
    env = common.make_env(cfg.env)
    if not hasattr(env.action_space, "low"):
        raise ConfigError(f"env {cfg.env} has discrete actions — ddpg/td3 need a continuous (Box) action space, "
                          "e.g. --env Pendulum-v1; for discrete actions use dqn")
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low_np, high_np = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)

    # ---- setup: networks, targets, optimizers, buffer
    nets = Nets.build(obs_dim, act_dim, d, cfg.lr, low_np, high_np)
    actor, critics, low, high = nets.actor, nets.critics, nets.low, nets.high
    scale = (high - low) / 2
    n = d.buffer_size  # the replay buffer: circular, one tensor per field (saved in checkpoints)
    buffer = {"obs": torch.zeros(n, obs_dim), "action": torch.zeros(n, act_dim), "reward": torch.zeros(n),
              "next_obs": torch.zeros(n, obs_dim), "terminated": torch.zeros(n)}
    modules = nets.modules()

    run = common.Run(cfg, total=cfg.total_steps)
    s = {"pos": 0, "size": 0, "updates": 0, "ep_return": 0.0, "ep_length": 0,
         "value_loss": 0.0, "policy_loss": 0.0, "q": 0.0, "losses": 0, "actor_updates": 0}
    if run.resume:
        state, tensors = run.load(modules=modules, envs={"env": env})
        buffer.update(tensors)
        s.update(state["loop"])
        obs = np.array(state["obs"], dtype=np.float32)
        step = state["step"]
    else:
        obs, _ = env.reset(seed=cfg.seed)
        step = 0

    def checkpoint_now(step: int) -> None:
        run.save(step, modules=modules, envs={"env": env}, tensors=buffer,
                 state={"loop": s, "obs": obs.tolist()})

    timer = common.StepTimer()
    while step < cfg.total_steps:
        # ---- act: uniform random while the buffer fills, then μ(s) + Gaussian noise, clipped to the box
        if step < d.learning_starts:
            action = low + (high - low) * torch.rand(act_dim)
        else:
            with torch.no_grad():
                action = actor(torch.as_tensor(obs, dtype=torch.float32))
            action = torch.clamp(action + d.noise * scale * torch.randn(act_dim), low, high)
        next_obs, reward, terminated, truncated, _ = env.step(action.numpy().astype(env.action_space.dtype))
        store(buffer, s, obs, action, reward, next_obs, terminated)
        s["ep_return"] += float(reward)
        s["ep_length"] += 1
        obs = next_obs
        step += 1
        run.tracker.advance(1)

        # ---- learn: one critic step per environment step; the actor and the targets every policy_delay
        if step > d.learning_starts:
            idx = torch.randint(0, s["size"], (d.batch_size,))
            s["updates"] += 1
            value_loss, q, policy_loss = learn(nets, {k: v[idx] for k, v in buffer.items()}, cfg,
                                               actor_turn=s["updates"] % (d.policy_delay if d.td3 else 1) == 0)
            s["value_loss"] += value_loss
            s["q"] += q
            s["losses"] += 1
            if policy_loss is not None:
                s["policy_loss"] += policy_loss
                s["actor_updates"] += 1

        # ---- log at each episode's end (losses averaged over the episode), evaluate, checkpoint
        if terminated or truncated:
            run.log(step, {**end_episode(s), "sps": timer(step)})
            obs, _ = env.reset()
        if cfg.eval_every > 0 and step % cfg.eval_every == 0:
            run.log(step, common.evaluate(greedy(actor), cfg.env, cfg.eval_episodes, cfg.seed))
        if run.due(step):
            checkpoint_now(step)

    if run.last_saved != step:
        checkpoint_now(step)
    summary = {"algo": cfg.algo, "env": cfg.env, "env_steps": step, "updates": s["updates"],
               **common.evaluate(greedy(actor), cfg.env, cfg.eval_episodes, cfg.seed)}
    run.finish({"actor": actor, **{f"critic{i}": c for i, c in enumerate(critics)}}, summary)
    env.close()
    return summary


def store(buffer: dict[str, torch.Tensor], s: dict, obs, action, reward, next_obs, terminated) -> None:
    """Write one transition at the buffer's position `s["pos"]` and advance it (overwriting the oldest when
    full). next_obs is the true last state even when the time limit truncated the episode."""
    i, n = s["pos"], len(buffer["reward"])
    buffer["obs"][i] = torch.as_tensor(obs)
    buffer["action"][i] = action
    buffer["reward"][i] = float(reward)
    buffer["next_obs"][i] = torch.as_tensor(next_obs)
    buffer["terminated"][i] = float(terminated)
    s["pos"], s["size"] = (i + 1) % n, min(s["size"] + 1, n)


def end_episode(s: dict) -> dict:
    """The finished episode's return and length, with the losses averaged over its updates; resets the tallies."""
    metrics = {"episode/return": s["ep_return"], "episode/length": s["ep_length"]}
    if s["losses"]:
        metrics.update({"value_loss": s["value_loss"] / s["losses"], "q": s["q"] / s["losses"]})
    if s["actor_updates"]:
        metrics["policy_loss"] = s["policy_loss"] / s["actor_updates"]
    s.update(ep_return=0.0, ep_length=0, value_loss=0.0, policy_loss=0.0, q=0.0, losses=0, actor_updates=0)
    return metrics


def greedy(actor: Actor):
    """The evaluation policy: μ(s) without noise."""
    @torch.no_grad()
    def act(obs: np.ndarray) -> np.ndarray:
        return actor(torch.as_tensor(obs, dtype=torch.float32)).numpy()
    return act
