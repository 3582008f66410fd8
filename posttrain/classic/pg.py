"""Policy gradients without a trust region: REINFORCE (whole episodes) and A2C (synchronous vector envs).

REINFORCE — Williams 1992, "Simple Statistical Gradient-Following Algorithms for Connectionist Reinforcement
Learning". Play `pg.episodes_per_update` whole episodes, compute every step's return-to-go
G_t = r_t + γ·G_{t+1} (`posttrain.algos.advantages.discounted_returns`: rewards [4, 3, 5, 2] with γ = 1 give
[14, 10, 7, 2]) and step along  ∇ Σ_t A_t·log π(a_t | s_t)  with A_t = G_t, or with `pg.baseline`
A_t = G_t − V(s_t) from a value network regressed on G_t (Sutton & Barto 2018, §13.4): the same expected
gradient, far less variance. Episodes are the rows of a [episodes, longest] batch, like LLM responses.

A2C — Mnih et al. 2016, "Asynchronous Methods for Deep Reinforcement Learning", arXiv:1602.01783, run
synchronously (OpenAI baselines / SB3): every update takes `pg.n_steps` steps in each of `num_envs` environments,
bootstraps the returns from the critic (GAE(λ) with λ = `pg.gae_lambda`; λ = 1 is the n-step return
R_t = r_t + γr_{t+1} + … + γ^k·V(s_{t+k})) and takes ONE gradient step on policy loss + vf_coef·value loss −
ent_coef·entropy. That is PPO with one epoch and no ratio to clip, so A2C collects and scores its rollouts with
PPO's `collect` and `rollout_advantages` (ppo.py): the same shared GAE, the same episode-segment layout.

The losses are the LLM side's: `posttrain.algos.policy.get("vanilla")` (−A·π/π_old, on-policy −A·log π in its
gradient), `posttrain.algos.policy.value_loss`, reduced by `posttrain.algos.aggregate.aggregate` over steps.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch.distributions import Categorical

from posttrain.algos import advantages as estimators, policy as policy_losses
from posttrain.algos.aggregate import aggregate
from posttrain.classic import common
from posttrain.classic.ppo import Agent, Episodes, collect, rollout_advantages

DEFAULTS = {
    "reinforce": {"env": "CartPole-v1", "total_steps": 200_000, "lr": 1e-3, "num_envs": 1},
    "a2c": {"env": "CartPole-v1", "total_steps": 500_000, "lr": 7e-4, "num_envs": 8},
}


def run(cfg) -> dict:
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    return reinforce(cfg) if cfg.algo == "reinforce" else a2c(cfg)


# ---------------------------------------------------------------------------------------------------------------------
# REINFORCE
# ---------------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def play_episode(agent: Agent, env) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One whole episode sampled from the policy: (observations [L, obs_dim], actions [L], rewards [L])."""
    obs, _ = env.reset()
    observations, actions, rewards, done = [], [], [], False
    while not done:
        o = torch.as_tensor(obs, dtype=torch.float32)
        action = int(Categorical(logits=agent(o[None])[0][0], validate_args=False).sample())
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(o)
        actions.append(action)
        rewards.append(float(reward))
        done = terminated or truncated
    return torch.stack(observations), torch.tensor(actions), torch.tensor(rewards)


def pad(rows: list[torch.Tensor]) -> torch.Tensor:
    """Right-pad episodes (each [L, ...]) to [episodes, longest, ...] with zeros."""
    return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)


def reinforce(cfg) -> dict:
    p = cfg.pg
    env = common.make_env(cfg.env, cfg.seed)
    agent = Agent(env.observation_space.shape[0], env.action_space.n, p.hidden)
    optimizer = torch.optim.Adam(agent.parameters() if p.baseline else agent.actor.parameters(), lr=cfg.lr)
    loss_fn = policy_losses.get("vanilla")
    modules = {"agent": agent, "optimizer": optimizer}

    run = common.Run(cfg, total=cfg.total_steps)
    step = run.start_step
    if run.resume:
        run.load(modules=modules, envs={"env": env})
    timer = common.StepTimer()
    timer.steps = step
    evaluated_at = -1

    while step < cfg.total_steps:
        # ---- algorithm: whole episodes, returns-to-go, one gradient step ----------------------------------------
        episodes = [play_episode(agent, env) for _ in range(p.episodes_per_update)]
        lengths = [len(r) for _, _, r in episodes]
        step += sum(lengths)
        run.tracker.advance(sum(lengths))
        obs, actions, rewards = (pad([e[i] for e in episodes]) for i in range(3))
        mask = pad([torch.ones(n) for n in lengths])                        # [E, L] 1 on real steps
        returns = estimators.discounted_returns(rewards, mask, cfg.gamma)  # G_t; the episodes ended: no bootstrap
        logits, values = agent(obs.reshape(-1, obs.shape[-1]))
        dist = Categorical(logits=logits, validate_args=False)
        logps = dist.log_prob(actions.reshape(-1)).reshape(mask.shape)
        values = values.reshape(mask.shape)
        adv = returns - values.detach() if p.baseline else returns
        policy_loss = aggregate(loss_fn(logps, logps.detach(), adv, mask).losses, mask)
        entropy = aggregate(dist.entropy().reshape(mask.shape), mask)
        loss = policy_loss - p.ent_coef * entropy
        metrics = {"policy_loss": policy_loss.item(), "entropy": entropy.item()}
        if p.baseline:  # the baseline's own regression on G_t (its network shares nothing with the policy)
            value_loss = aggregate(policy_losses.value_loss(values, values.detach(), returns, mask)[0], mask)
            loss = loss + value_loss
            metrics["value_loss"] = value_loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        # ---- plumbing: metrics, evaluation, checkpoints ------------------------------------------------------------
        returns_each = [float(r.sum()) for _, _, r in episodes]
        run.log(step, {"loss": loss.item(), **metrics, "episode/return": float(np.mean(returns_each)),
                       "episode/length": float(np.mean(lengths)), "lr": cfg.lr, "sps": timer(step)})
        if cfg.eval_every > 0 and step // cfg.eval_every > (step - sum(lengths)) // cfg.eval_every:
            run.log(step, common.evaluate(agent.greedy, cfg.env, cfg.eval_episodes, cfg.seed))
            evaluated_at = step
        if run.due(step) or step >= cfg.total_steps:
            run.save(step, modules=modules, envs={"env": env}, state={})
    return finish(cfg, run, agent, step, evaluated_at, [env])


# ---------------------------------------------------------------------------------------------------------------------
# A2C
# ---------------------------------------------------------------------------------------------------------------------

def a2c(cfg) -> dict:
    p = cfg.pg
    envs = common.make_vector_env(cfg.env, cfg.num_envs, cfg.seed)
    obs, _ = envs.reset(seed=[cfg.seed + i for i in range(cfg.num_envs)])  # the same reset, to get the obs
    agent = Agent(envs.single_observation_space.shape[0], envs.single_action_space.n, p.hidden, shared=p.shared)
    optimizer = torch.optim.RMSprop(agent.parameters(), lr=cfg.lr, alpha=0.99, eps=1e-5) if p.rmsprop else \
        torch.optim.Adam(agent.parameters(), lr=cfg.lr)
    batch = p.n_steps * cfg.num_envs
    num_updates = math.ceil(cfg.total_steps / batch)
    loss_fn = policy_losses.get("vanilla")
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
        lr = cfg.lr * (1 - (step // batch) / num_updates) if p.anneal_lr else cfg.lr
        for group in optimizer.param_groups:
            group["lr"] = lr

        # ---- algorithm: n steps in every env, bootstrapped advantages, one gradient step --------------------------
        rollout, obs = collect(agent, envs, obs, p.n_steps, episodes)
        step += batch
        run.tracker.advance(batch)
        adv = rollout_advantages(rollout, cfg.gamma, p.gae_lambda).reshape(batch, 1)
        returns = adv + rollout.values.reshape(batch, 1)
        logits, values = agent(rollout.obs.reshape(batch, -1))  # the same parameters that acted: on-policy
        dist = Categorical(logits=logits, validate_args=False)
        logps = dist.log_prob(rollout.actions.reshape(batch))[:, None]
        values = values[:, None]
        mask = torch.ones(batch, 1)  # one transition per row
        policy_loss = aggregate(loss_fn(logps, logps.detach(), adv, mask).losses, mask)
        value_loss = aggregate(policy_losses.value_loss(values, values.detach(), returns, mask)[0], mask)
        entropy = aggregate(dist.entropy()[:, None], mask)
        loss = policy_loss - p.ent_coef * entropy + p.vf_coef * value_loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(agent.parameters(), p.max_grad_norm)
        optimizer.step()

        # ---- plumbing: metrics, evaluation, checkpoints ------------------------------------------------------------
        run.log(step, {"loss": loss.item(), "policy_loss": policy_loss.item(), "value_loss": value_loss.item(),
                       "entropy": entropy.item(), **episodes.metrics(), "lr": lr, "sps": timer(step)})
        if cfg.eval_every > 0 and step // cfg.eval_every > (step - batch) // cfg.eval_every:
            run.log(step, common.evaluate(agent.greedy, cfg.env, cfg.eval_episodes, cfg.seed))
            evaluated_at = step
        if run.due(step) or step >= cfg.total_steps:
            run.save(step, modules=modules, envs={"envs": envs},
                     state={"obs": obs.tolist(), "episodes": episodes.state()})
    return finish(cfg, run, agent, step, evaluated_at, [envs])


def finish(cfg, run, agent: Agent, step: int, evaluated_at: int, envs: list) -> dict:
    """The final greedy evaluation (logged unless this step was just evaluated), final/ and the summary."""
    result = common.evaluate(agent.greedy, cfg.env, cfg.eval_episodes, cfg.seed)
    if evaluated_at != step:
        run.log(step, result)
    for e in envs:
        e.close()
    summary = {**result, "env_steps": step}
    run.finish({"agent": agent}, summary)
    return summary
