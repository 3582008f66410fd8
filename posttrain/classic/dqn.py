"""DQN and its two best-known repairs, on one gymnasium environment with a discrete action space.

    dqn          Mnih et al. 2015, "Human-level control through deep reinforcement learning": Q-learning with a
                 neural network, stabilised by a replay buffer (decorrelated minibatches) and a target network
                 Q' (a lagged copy that provides the regression target):  y = r + γ max_a' Q'(s', a').
    double_dqn   van Hasselt, Guez & Silver 2016, "Deep RL with Double Q-learning": the max above picks and values
                 the action with the same noisy estimates, so it is biased upward; let the online network pick and
                 the target network value:  y = r + γ Q'(s', argmax_a' Q(s', a')).
    dueling_dqn  Wang et al. 2016, "Dueling Network Architectures": two heads over a shared trunk, a state value V
                 and advantages A, combined as Q = V + A − mean_a A (the mean makes the split identifiable).

Worked numbers for one transition with r = 1, γ = 0.9, next-state values Q'(s', ·) = [1, 3] from the target
network and Q(s', ·) = [5, 2] from the online one: DQN's target is 1 + 0.9·3 = 3.7; Double DQN's online argmax is
action 0, valued by the target network at 1, so its target is 1 + 0.9·1 = 1.9.

n-step returns (Sutton 1988; Rainbow, Hessel et al. 2018): the buffer stores the discounted sum of n rewards, the
state n steps later and γ^n, so the target is  y = Σ_{i<n} γ^i r_i + γ^n max_a' Q'(s_n, a').  At an episode's
end the remaining shorter windows are flushed: after a *termination* the discount is 0 (there is no future);
after a *truncation* by the time limit the episode merely stopped being observed, so the target still bootstraps
from the last observation with γ^m, m the steps actually taken.

Everything else is the standard recipe: ε-greedy exploration decaying linearly over `eps_fraction` of the run,
Huber loss, gradient-norm clipping, hard target copies every `target_every` environment steps or Polyak averaging
θ' ← τθ + (1 − τ)θ' after each gradient step. The defaults follow rl-zoo's tuned CartPole-v1 DQN.

`posttrain classic dqn --env CartPole-v1` · `double_dqn` · `dueling_dqn`; options under `dqn.` (ClassicConfig.dqn).
"""

from __future__ import annotations

import copy
import random

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from posttrain.classic import common
from posttrain.classic.common import soft_update
from posttrain.config import ClassicConfig
from posttrain.errors import ConfigError

DEFAULTS = {algo: {"env": "CartPole-v1", "total_steps": 50_000, "lr": 2.3e-3, "num_envs": 1}
            for algo in ("dqn", "double_dqn", "dueling_dqn")}

LOG_EVERY = 1_000
"""Environment steps between training-metric records (loss, q, epsilon, sps: means over the window)."""


# ---------------------------------------------------------------------------------------------------------------------
# Algorithm: the Q-network, the TD target, the target-network update, n-step transitions
# ---------------------------------------------------------------------------------------------------------------------

def dueling_q(value: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """Q = V + A − mean_a A  (Wang et al. 2016, eq. 9). value [B, 1], advantage [B, A] → Q [B, A].
    V alone cannot be read off Q = V + A (add c to V, subtract it from A); centring A pins it: mean_a Q = V.
    E.g. V = 2, A = [1, 3] → Q = [1, 3] + 2 − 2 = [1, 3], whose mean is V = 2."""
    return value + advantage - advantage.mean(dim=-1, keepdim=True)


class QNetwork(nn.Module):
    """obs [B, obs_dim] → Q [B, n_actions]: two ReLU hidden layers, then one linear head (DQN) or the dueling
    value and advantage heads."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int, dueling: bool):
        super().__init__()
        self.dueling = dueling
        if dueling:
            self.trunk = nn.Sequential(common.mlp([obs_dim, hidden, hidden], nn.ReLU), nn.ReLU())
            self.value, self.advantage = nn.Linear(hidden, 1), nn.Linear(hidden, n_actions)
        else:
            self.q = common.mlp([obs_dim, hidden, hidden, n_actions], nn.ReLU)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        if not self.dueling:
            return self.q(obs)
        h = self.trunk(obs)
        return dueling_q(self.value(h), self.advantage(h))


def td_target(rewards: torch.Tensor, discounts: torch.Tensor, next_q_target: torch.Tensor,
              next_q_online: torch.Tensor | None = None) -> torch.Tensor:
    """The regression target y [B] from n-step rewards [B], discounts [B] (γ^n, or 0 after a termination) and
    the next state's action values [B, A]. DQN: y = R + d · max_a Q'(s', a). Double DQN (next_q_online given):
    y = R + d · Q'(s', argmax_a Q(s', a)). Worked numbers in the module docstring."""
    if next_q_online is None:
        next_value = next_q_target.max(dim=1).values
    else:
        next_value = next_q_target.gather(1, next_q_online.argmax(dim=1, keepdim=True)).squeeze(1)
    return rewards + discounts * next_value


class NStep:
    """Turns the stream of single steps into n-step transitions (obs, action, R, obs_n, discount).

    `push` takes one environment step and returns the transitions that became complete: normally the one that
    started n steps ago; at an episode's end every pending one, each with its shorter window. With n = 3, γ = 0.5
    and rewards 1, 2, 3, 4 ending in a termination at the 4th step: (s0, 1 + 0.5·2 + 0.25·3 = 2.75, s3, 0.125)
    after step 3, then (s1, 4.5, s4, 0), (s2, 5, s4, 0), (s3, 4, s4, 0). Had the 4th step been a truncation,
    the last three discounts would be 0.125, 0.25 and 0.5 (the target bootstraps from s4)."""

    def __init__(self, n: int, gamma: float):
        self.n, self.gamma = n, gamma
        self.pending: list[tuple[np.ndarray, int, float]] = []  # (obs, action, reward) not yet emitted

    def push(self, obs, action: int, reward: float, next_obs, terminated: bool, truncated: bool) -> list[tuple]:
        self.pending.append((np.asarray(obs), int(action), float(reward)))
        if terminated or truncated:
            out = [self._transition(i, next_obs, terminated) for i in range(len(self.pending))]
            self.pending = []
            return out
        if len(self.pending) == self.n:
            out = [self._transition(0, next_obs, False)]
            self.pending.pop(0)
            return out
        return []

    def _transition(self, start: int, next_obs, terminated: bool) -> tuple:
        window = self.pending[start:]
        ret = sum(self.gamma ** i * r for i, (_, _, r) in enumerate(window))
        discount = 0.0 if terminated else self.gamma ** len(window)
        obs, action, _ = window[0]
        return obs, action, ret, np.asarray(next_obs), discount

    def state(self) -> list:
        return [[o.tolist(), a, r] for o, a, r in self.pending]

    def load(self, pending: list, dtype) -> None:
        self.pending = [(np.asarray(o, dtype=dtype), a, r) for o, a, r in pending]


class ReplayBuffer:
    """A circular buffer of n-step transitions in preallocated tensors; the oldest is overwritten when full.
    Uniform sampling with torch's global generator, so a checkpoint's RNG state replays the same minibatches."""

    def __init__(self, capacity: int, obs_dim: int):
        self.capacity, self.pos, self.size = capacity, 0, 0
        self.data = {"obs": torch.zeros(capacity, obs_dim), "action": torch.zeros(capacity, dtype=torch.long),
                     "reward": torch.zeros(capacity), "next_obs": torch.zeros(capacity, obs_dim),
                     "discount": torch.zeros(capacity)}

    def add(self, obs, action, reward, next_obs, discount) -> None:
        for key, value in zip(self.data, (obs, action, reward, next_obs, discount)):
            self.data[key][self.pos] = torch.as_tensor(value, dtype=self.data[key].dtype)
        self.pos, self.size = (self.pos + 1) % self.capacity, min(self.size + 1, self.capacity)

    def sample(self, batch_size: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(self.size, (batch_size,))
        return {k: v[idx] for k, v in self.data.items()}

    def load(self, tensors: dict[str, torch.Tensor], pos: int, size: int) -> None:
        self.data = {k: tensors[f"buffer/{k}"] for k in self.data}
        self.pos, self.size = pos, size


def gradient_step(q: QNetwork, target: QNetwork, optimizer: torch.optim.Optimizer, batch: dict,
                  double: bool, max_grad_norm: float) -> tuple[float, float]:
    """One Huber regression step of Q(s, a) toward the (fixed) TD target. Returns (loss, mean Q(s, a))."""
    with torch.no_grad():
        next_online = q(batch["next_obs"]) if double else None
        y = td_target(batch["reward"], batch["discount"], target(batch["next_obs"]), next_online)
    q_taken = q(batch["obs"]).gather(1, batch["action"][:, None]).squeeze(1)
    loss = F.smooth_l1_loss(q_taken, y)  # Huber, δ = 1: the gradient of a large TD error is clipped to ±1
    optimizer.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(q.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item(), q_taken.mean().item()


def epsilon(step: int, cfg: ClassicConfig) -> float:
    """Linear decay from eps_start to eps_end over the first eps_fraction · total_steps steps, then flat."""
    d = cfg.dqn
    progress = min(step / max(d.eps_fraction * cfg.total_steps, 1.0), 1.0)
    return d.eps_start + progress * (d.eps_end - d.eps_start)


# ---------------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------------

def _check(cfg: ClassicConfig, env) -> None:
    d = cfg.dqn
    if not hasattr(env.action_space, "n"):
        raise ConfigError(f"{cfg.algo} needs a discrete action space; {cfg.env} has {env.action_space} — fix: "
                          "use ddpg or td3 for continuous actions")
    if len(env.observation_space.shape or ()) != 1:
        raise ConfigError(f"{cfg.algo} needs a flat vector observation; {cfg.env} has {env.observation_space} — "
                          "fix: a Box-observation environment such as CartPole-v1 (FrozenLake: q_learning)")
    if d.n_step < 1 or not 0.0 < d.tau <= 1.0 or d.batch_size < 1 or d.train_every < 1 or d.target_every < 1:
        raise ConfigError("dqn: n_step, batch_size, train_every, target_every must be ≥ 1 and tau in (0, 1] — "
                          f"got n_step={d.n_step}, batch_size={d.batch_size}, train_every={d.train_every}, "
                          f"target_every={d.target_every}, tau={d.tau}")
    if d.buffer_size < d.batch_size:
        raise ConfigError(f"dqn.buffer_size ({d.buffer_size}) must hold at least one batch ({d.batch_size})")


# One function on purpose (≈86 lines): the whole algorithm reads top to bottom, CleanRL-style (DESIGN §4).
def run(cfg: ClassicConfig) -> dict:
    d = cfg.dqn
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    env = common.make_env(cfg.env)
    _check(cfg, env)
    obs, _ = env.reset(seed=cfg.seed)
    obs_dim, n_actions = env.observation_space.shape[0], int(env.action_space.n)

    q = QNetwork(obs_dim, n_actions, d.hidden, d.dueling)
    target = copy.deepcopy(q)
    optimizer = torch.optim.Adam(q.parameters(), lr=cfg.lr)
    buffer, nstep = ReplayBuffer(d.buffer_size, obs_dim), NStep(d.n_step, cfg.gamma)

    def greedy(o) -> int:
        with torch.no_grad():
            return int(q(torch.as_tensor(o, dtype=torch.float32)[None]).argmax(dim=1).item())

    run_ = common.Run(cfg, total=cfg.total_steps)
    step, ep_return, ep_len, window = 0, 0.0, 0, [0.0, 0.0, 0]  # window: Σ loss, Σ q, gradient steps
    modules = {"q": q, "target": target, "optimizer": optimizer}
    if run_.resume:
        state, tensors = run_.load(modules=modules, envs={"env": env})
        step, ep_return, ep_len, window = state["step"], state["ep_return"], state["ep_len"], state["window"]
        obs = np.asarray(state["obs"], dtype=env.observation_space.dtype)
        buffer.load(tensors, state["buffer_pos"], state["buffer_size"])
        nstep.load(state["nstep"], env.observation_space.dtype)
    timer = common.StepTimer()
    timer.steps = step

    while step < cfg.total_steps:
        # ---- act: uniform random until learning starts, then ε-greedy
        if d.anneal_lr:  # linear decay to 0: the late updates only polish, so the final network stays put
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * (1.0 - step / cfg.total_steps)
        eps = epsilon(step, cfg)
        if step < d.learning_starts or np.random.random() < eps:
            action = np.random.randint(n_actions)
        else:
            action = greedy(obs)
        next_obs, reward, terminated, truncated, _ = env.step(action)
        step += 1
        for transition in nstep.push(obs, action, reward, next_obs, terminated, truncated):
            buffer.add(*transition)
        ep_return, ep_len = ep_return + float(reward), ep_len + 1
        if terminated or truncated:
            run_.log(step, {"episode/return": ep_return, "episode/length": ep_len})
            (obs, _), ep_return, ep_len = env.reset(), 0.0, 0
        else:
            obs = next_obs

        # ---- learn: gradient_steps minibatch updates every train_every steps, then the target network
        if step >= d.learning_starts and step % d.train_every == 0 and buffer.size >= d.batch_size:
            for _ in range(d.gradient_steps):
                loss, q_mean = gradient_step(q, target, optimizer, buffer.sample(d.batch_size), d.double,
                                             d.max_grad_norm)
                window = [window[0] + loss, window[1] + q_mean, window[2] + 1]
                if d.tau < 1.0:
                    soft_update(target, q, d.tau)
        if d.tau == 1.0 and step % d.target_every == 0:
            target.load_state_dict(q.state_dict())

        # ---- plumbing: metrics, evaluation, checkpoints
        run_.tracker.advance(1)
        if step % LOG_EVERY == 0:
            metrics = {"epsilon": epsilon(step, cfg), "lr": optimizer.param_groups[0]["lr"], "sps": timer(step)}
            if window[2]:
                metrics.update({"loss": window[0] / window[2], "q": window[1] / window[2]})
            run_.log(step, metrics)
            window = [0.0, 0.0, 0]
        if cfg.eval_every > 0 and step % cfg.eval_every == 0 and step < cfg.total_steps:
            run_.log(step, common.evaluate(greedy, cfg.env, cfg.eval_episodes, cfg.seed))
        if run_.due(step) or step == cfg.total_steps:
            run_.save(step, modules=modules, envs={"env": env},
                      tensors={f"buffer/{k}": v for k, v in buffer.data.items()},
                      state={"ep_return": ep_return, "ep_len": ep_len, "window": window, "obs": obs.tolist(),
                             "epsilon": epsilon(step, cfg), "buffer_pos": buffer.pos, "buffer_size": buffer.size,
                             "nstep": nstep.state()})

    env.close()
    result = common.evaluate(greedy, cfg.env, cfg.eval_episodes, cfg.seed)
    run_.log(step, result)
    summary = {**result, "env_steps": step}
    run_.finish({"q": q}, summary)
    return summary
