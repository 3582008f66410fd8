"""PPO on synchronous vector environments — the CleanRL `ppo.py` recipe, with the LLM loop's own math.

Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv:1707.06347. Each update:

    1. rollout   n_steps × num_envs transitions from the current policy (one synchronous vector env)
    2. GAE       advantages A_t and returns A_t + V_t (Schulman et al. 2016, arXiv:1506.02438)
    3. epochs    passes over the rollout in shuffled mini-batches: clipped surrogate, value loss (optionally
                 clipped), entropy bonus, advantages whitened per mini-batch, gradient norm clipped to 0.5
    4. the learning rate decays linearly to 0 over the run

The math is not re-derived here: GAE is `posttrain.algos.advantages.get("gae")`, the surrogate is
`posttrain.algos.policy.get("ppo_clip")`, the critic's loss `posttrain.algos.policy.value_loss` and every
reduction `posttrain.algos.aggregate.aggregate` — the same objects `posttrain rl` (train/rl.py) calls for LLM
PPO (tests/classic/test_classic_ppo.py checks that both loops reach them). To hand a rollout to the LLM-shaped GAE we
lay it out the way the LLM loop lays out responses: every environment's stretch of the rollout is cut into
episode segments, one row each, right-padded, `mask` 1 on real steps, and the value after a row's last step
(`bootstrap`) is

    0             the episode terminated (the pole fell): nothing follows
    V(final_obs)  the time limit truncated it: the episode would have gone on
    V(next obs)   the rollout ended in the middle of the episode: the next rollout goes on with it

which gives exactly CleanRL's per-environment GAE loop (the test compares them on a random rollout).

Defaults (posttrain/config/classic.py, PPOSection) are rl-zoo's CartPole-v1 PPO: 8 envs × 32 steps, 20 epochs
over the batch of 256 as one mini-batch, λ = 0.8, lr 1e-3 decaying linearly, clip 0.2; 100k environment steps.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch.distributions import Categorical

from posttrain.algos import advantages as estimators, policy as policy_losses
from posttrain.algos.aggregate import aggregate
from posttrain.classic import common
from posttrain.errors import ConfigError

DEFAULTS = {"ppo": {"env": "CartPole-v1", "total_steps": 100_000, "lr": 1e-3, "num_envs": 8}}


# ---------------------------------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------------------------------

class Agent(torch.nn.Module):
    """Actor (logits over the discrete actions) and critic (V(s)): two separate tanh MLPs, or with `shared` one
    trunk and two linear heads. Orthogonal initialization as CleanRL / SB3: hidden layers gain √2, the policy
    head 0.01 (a near-uniform first policy), the value head 1."""

    def __init__(self, obs_dim: int, n_actions: int, hidden: int, shared: bool = False):
        super().__init__()
        self.shared = shared
        if shared:
            self.trunk = torch.nn.Sequential(common.mlp([obs_dim, hidden, hidden]), torch.nn.Tanh())
            self.actor, self.critic = torch.nn.Linear(hidden, n_actions), torch.nn.Linear(hidden, 1)
        else:
            self.actor = common.mlp([obs_dim, hidden, hidden, n_actions])
            self.critic = common.mlp([obs_dim, hidden, hidden, 1])
        for m in self.modules():
            if isinstance(m, torch.nn.Linear):
                torch.nn.init.orthogonal_(m.weight, math.sqrt(2))
                torch.nn.init.zeros_(m.bias)
        torch.nn.init.orthogonal_(last_linear(self.actor).weight, 0.01)
        torch.nn.init.orthogonal_(last_linear(self.critic).weight, 1.0)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """obs [M, obs_dim] → (logits [M, n_actions], values [M])."""
        h = self.trunk(obs) if self.shared else obs
        return self.actor(h), self.critic(h).squeeze(-1)

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        return self(obs)[1]

    def greedy(self, obs: np.ndarray) -> int:
        with torch.no_grad():
            return int(self(torch.as_tensor(obs, dtype=torch.float32)[None])[0].argmax())


def last_linear(net: torch.nn.Module) -> torch.nn.Linear:
    return [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]


# ---------------------------------------------------------------------------------------------------------------------
# Rollouts and their advantages (A2C in pg.py collects and scores its rollouts the same way)
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class Rollout:
    obs: torch.Tensor           # [T, N, obs_dim] the observation each action was taken in
    actions: torch.Tensor       # [T, N]
    logps: torch.Tensor         # [T, N] log π_old(a_t | s_t)
    values: torch.Tensor        # [T, N] V_old(s_t)
    rewards: torch.Tensor       # [T, N]
    terminated: torch.Tensor    # [T, N] bool: the episode ended at t (no value after it)
    truncated: torch.Tensor     # [T, N] bool: the time limit cut the episode at t
    final_values: torch.Tensor  # [T, N] V(final_obs) where truncated, else 0
    last_values: torch.Tensor   # [N] V(the observation after the rollout)


class Episodes:
    """Running return and length of each environment's current episode; `finished` collects ended ones."""

    def __init__(self, n: int):
        self.ret, self.len, self.finished = np.zeros(n), np.zeros(n, dtype=np.int64), []

    def step(self, rewards: np.ndarray, done: np.ndarray) -> None:
        self.ret += rewards
        self.len += 1
        for i in np.flatnonzero(done):
            self.finished.append((float(self.ret[i]), int(self.len[i])))
        self.ret[done], self.len[done] = 0.0, 0

    def metrics(self) -> dict:
        """The mean return and length of the episodes finished since the last call ({} if none)."""
        if not self.finished:
            return {}
        out = {"episode/return": float(np.mean([r for r, _ in self.finished])),
               "episode/length": float(np.mean([n for _, n in self.finished])), "episode/count": len(self.finished)}
        self.finished = []
        return out

    def state(self) -> dict:
        return {"ret": self.ret.tolist(), "len": self.len.tolist(), "finished": self.finished}

    def load(self, state: dict) -> None:
        self.ret, self.len = np.array(state["ret"]), np.array(state["len"], dtype=np.int64)
        self.finished = [tuple(x) for x in state["finished"]]


@torch.no_grad()
def collect(agent: Agent, envs, obs: np.ndarray, n_steps: int, episodes: Episodes) -> tuple[Rollout, np.ndarray]:
    """n_steps synchronous steps of every environment, sampling from the policy. Returns the rollout and the
    observation to continue from (autoreset: the next episode's first where one ended)."""
    cols: dict[str, list] = {k: [] for k in ("obs", "actions", "logps", "values", "rewards", "terminated",
                                            "truncated", "final_values")}
    for _ in range(n_steps):
        o = torch.as_tensor(obs, dtype=torch.float32)
        logits, value = agent(o)
        # validate_args=False: the logits are our own network's; the check would double the distribution's cost
        dist = Categorical(logits=logits, validate_args=False)
        action = dist.sample()
        obs, reward, terminated, truncated, info = envs.step(action.numpy())
        final_values = torch.zeros(len(reward))
        if truncated.any():  # the time limit, not the task, ended these: their last state still has a value
            last = np.stack([info["final_obs"][i] for i in np.flatnonzero(truncated)])
            final_values[torch.as_tensor(truncated)] = agent.value(torch.as_tensor(last, dtype=torch.float32))
        episodes.step(reward, terminated | truncated)
        for k, v in (("obs", o), ("actions", action), ("logps", dist.log_prob(action)), ("values", value),
                     ("rewards", torch.as_tensor(reward, dtype=torch.float32)),
                     ("terminated", torch.as_tensor(terminated)), ("truncated", torch.as_tensor(truncated)),
                     ("final_values", final_values)):
            cols[k].append(v)
    last_values = agent.value(torch.as_tensor(obs, dtype=torch.float32))
    return Rollout(**{k: torch.stack(v) for k, v in cols.items()}, last_values=last_values), obs


def rollout_advantages(r: Rollout, gamma: float, lam: float) -> torch.Tensor:
    """GAE(γ, λ) of a [T, N] rollout through the shared estimator: each environment's steps are cut into episode
    segments (rows, right-padded to T), with `bootstrap` 0 after a termination, V(final_obs) after a truncation
    and V(next obs) where the rollout cuts the episode. Returns advantages [T, N].

    Example (T = 4, one env, terminated at t = 1): rows [s0 s1 · ·] with bootstrap 0 and [s2 s3 · ·] with
    bootstrap V(next obs); GAE never looks across the episode boundary.
    """
    steps, n_envs = r.rewards.shape
    ends = r.terminated | r.truncated
    ends[-1] = True  # the rollout's end cuts every environment's last segment
    # number the segments environment by environment (env 0's steps first): a step's row is the count of segment
    # ends before it, its column its distance from where its segment starts
    flat_ends = ends.T.reshape(-1)
    row_flat = flat_ends.long().cumsum(0) - flat_ends.long()
    starts = torch.nonzero(torch.cat([torch.tensor([True]), flat_ends[:-1]])).squeeze(1)
    col_flat = torch.arange(steps * n_envs) - starts[row_flat]
    row_of, col_of = row_flat.reshape(n_envs, steps).T, col_flat.reshape(n_envs, steps).T
    n_rows = len(starts)
    after = torch.where(r.terminated, 0.0, torch.where(r.truncated, r.final_values, r.last_values.expand(steps, -1)))
    bootstrap = after.T.reshape(-1)[flat_ends]

    def rows(x: torch.Tensor) -> torch.Tensor:  # [T, N] → [segments, T]
        out = torch.zeros(n_rows, steps, dtype=x.dtype)
        out[row_of, col_of] = x
        return out

    inputs = estimators.AdvantageInputs(
        rewards=torch.zeros(n_rows), mask=rows(torch.ones_like(r.rewards)), group_index=torch.arange(n_rows),
        token_rewards=rows(r.rewards), values=rows(r.values), bootstrap=bootstrap)
    return estimators.get("gae")(inputs, gamma=gamma, lam=lam)[row_of, col_of]


def update(agent: Agent, optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor], p) -> dict[str, float]:
    """`p.epochs` passes over the rollout `flat` (obs, actions, logps, values, adv, returns; [batch] each) in
    `p.minibatches` shuffled mini-batches: clipped surrogate − entropy bonus + value loss, gradient norm clipped.
    Returns the losses and diagnostics averaged over every mini-batch."""
    loss_fn = policy_losses.get("ppo_clip")
    batch = len(flat["actions"])
    totals: dict[str, float] = {}
    for _ in range(p.epochs):
        for idx in torch.randperm(batch).chunk(p.minibatches):
            mb = {k: v[idx] for k, v in flat.items()}
            logits, values = agent(mb["obs"])
            dist = Categorical(logits=logits, validate_args=False)
            # one transition per row: the [B, T] losses of the LLM side with T = 1
            mask = torch.ones(len(idx), 1)
            a = estimators.whiten(mb["adv"][:, None], mask) if p.norm_adv else mb["adv"][:, None]
            out = loss_fn(dist.log_prob(mb["actions"])[:, None], mb["logps"][:, None], a, mask, eps_low=p.clip)
            v_losses, _ = policy_losses.value_loss(values[:, None], mb["values"][:, None], mb["returns"][:, None],
                                                   mask, clip=p.vf_clip or None)
            policy_loss = aggregate(out.losses, mask)
            value_loss = aggregate(v_losses, mask)
            entropy = aggregate(dist.entropy()[:, None], mask)
            loss = policy_loss - p.ent_coef * entropy + p.vf_coef * value_loss
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(agent.parameters(), p.max_grad_norm)
            optimizer.step()
            ratio = out.ratio
            for k, v in (("loss", loss), ("policy_loss", policy_loss), ("value_loss", value_loss),
                         ("entropy", entropy), ("approx_kl", ((ratio - 1) - ratio.log()).mean()),
                         ("clip_frac", (out.clipped_low | out.clipped_high).float().mean())):
                totals[k] = totals.get(k, 0.0) + v.item() / (p.epochs * p.minibatches)
    return totals


# ---------------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------------

def run(cfg) -> dict:
    p = cfg.ppo
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    envs = common.make_vector_env(cfg.env, cfg.num_envs, cfg.seed)
    obs, _ = envs.reset(seed=[cfg.seed + i for i in range(cfg.num_envs)])  # the same reset, to get the obs
    agent = Agent(envs.single_observation_space.shape[0], envs.single_action_space.n, p.hidden)
    # fused: one kernel updates every parameter; on these small nets a step costs a third of the per-tensor loop's
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.lr, eps=1e-5, fused=True)
    batch = p.n_steps * cfg.num_envs
    num_updates = math.ceil(cfg.total_steps / batch)
    if batch < p.minibatches:
        raise ConfigError(f"ppo.minibatches = {p.minibatches} is more than the {batch} transitions of a rollout "
                         "(n_steps × num_envs) — fix: fewer minibatches or a longer rollout")
    episodes = Episodes(cfg.num_envs)
    modules = {"agent": agent, "optimizer": optimizer}

    run = common.Run(cfg, total=cfg.total_steps)
    step = run.start_step
    if run.resume:
        state, _ = run.load(modules=modules, envs={"envs": envs})
        obs = np.array(state["obs"], dtype=np.float32)
        episodes.load(state["episodes"])
    timer = common.StepTimer()
    timer.steps = step
    evaluated_at = -1

    while step < cfg.total_steps:
        updates_done = step // batch
        lr = cfg.lr * (1 - updates_done / num_updates) if p.anneal_lr else cfg.lr
        for group in optimizer.param_groups:
            group["lr"] = lr

        # ---- algorithm: a rollout and its advantages ------------------------------------------------------------
        rollout, obs = collect(agent, envs, obs, p.n_steps, episodes)
        step += batch
        run.tracker.advance(batch)
        adv = rollout_advantages(rollout, cfg.gamma, p.gae_lambda)
        returns = adv + rollout.values  # the critic's targets (GAE's λ-returns)

        # ---- algorithm: epochs of clipped updates over shuffled mini-batches ----------------------------------------
        flat = {"obs": rollout.obs.reshape(batch, -1), "actions": rollout.actions.reshape(batch),
                "logps": rollout.logps.reshape(batch), "values": rollout.values.reshape(batch),
                "adv": adv.reshape(batch), "returns": returns.reshape(batch)}
        totals = update(agent, optimizer, flat, p)

        # ---- plumbing: metrics, evaluation, checkpoints ------------------------------------------------------------
        explained = 1 - (flat["returns"] - flat["values"]).var() / flat["returns"].var().clamp(min=1e-8)
        run.log(step, {**totals, **episodes.metrics(), "explained_variance": float(explained), "lr": lr,
                       "sps": timer(step)})
        if cfg.eval_every > 0 and step // cfg.eval_every > (step - batch) // cfg.eval_every:
            run.log(step, common.evaluate(agent.greedy, cfg.env, cfg.eval_episodes, cfg.seed))
            evaluated_at = step
        if run.due(step) or step >= cfg.total_steps:
            run.save(step, modules=modules, envs={"envs": envs},
                     state={"obs": obs.tolist(), "episodes": episodes.state()})

    result = common.evaluate(agent.greedy, cfg.env, cfg.eval_episodes, cfg.seed)
    if evaluated_at != step:
        run.log(step, result)
    envs.close()
    summary = {**result, "env_steps": step}
    run.finish({"agent": agent}, summary)
    return summary
