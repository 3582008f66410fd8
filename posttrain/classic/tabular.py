"""Tabular RL: what every later algorithm approximates, on environments small enough to hold in a table.

    value_iteration    V(s) ← max_a Σ p·(r + γV(s')) until no value moves by more than θ     (planning, needs P)
    policy_iteration   evaluate π exactly-enough, make it greedy, repeat until it is stable   (planning, needs P)
    mc                 first-visit Monte-Carlo evaluation of the uniform random policy       (from episodes)
    td                 TD(0), or n-step TD with tabular.n > 1, evaluation of the same policy (from episodes)
    sarsa              on-policy TD control, ε-greedy, decaying ε                            (from episodes)
    q_learning         off-policy TD control: the target takes max_a Q(s', a)                (from episodes)

Sutton & Barto, "Reinforcement Learning: An Introduction" (2nd ed.): §4.1, 4.3, 4.4 (DP), §5.1 (first-visit
MC), §6.1, 7.1 (TD, n-step TD), §6.4 (SARSA), §6.5 (Q-learning).

Environments: FrozenLake-v1 (deterministic unless tabular.slippery) and the built-in 4×4 GridWorld
(`--env GridWorld`, Sutton & Barto example 4.1). Both expose the model P[s][a] = [(p, s', r, terminated)], which
the planning methods read and the learning methods never touch. The evaluation methods report how far their
estimate is from the exact value of the same policy (`value_error`, the largest |V̂(s) − V(s)|).

For these methods `total_steps` counts episodes (sweeps for the planning methods) and `eval_every` episodes.
"""

from __future__ import annotations

import numpy as np
import torch
from safetensors.torch import save_file

from posttrain.algos.advantages import discounted_returns
from posttrain.classic import common

DEFAULTS = {
    "value_iteration": {"env": "FrozenLake-v1", "total_steps": 1_000},
    "policy_iteration": {"env": "FrozenLake-v1", "total_steps": 100},
    "mc": {"env": common.GRIDWORLD, "total_steps": 5_000},
    "td": {"env": common.GRIDWORLD, "total_steps": 5_000},
    "sarsa": {"env": "FrozenLake-v1", "total_steps": 2_000},
    "q_learning": {"env": "FrozenLake-v1", "total_steps": 2_000},
}


# ---------------------------------------------------------------------------------------------------------------------
# Planning with the model P (dynamic programming)
# ---------------------------------------------------------------------------------------------------------------------

def backup(P: dict, V: np.ndarray, s: int, a: int, gamma: float) -> float:
    """One-step lookahead Σ_{s'} p·(r + γ·V(s')), with V(s') = 0 after a terminating transition."""
    return sum(p * (r + (0.0 if done else gamma * V[s2])) for p, s2, r, done in P[s][a])


def value_iteration(P: dict, n_states: int, n_actions: int, gamma: float, theta: float = 1e-10,
                    max_sweeps: int = 1_000) -> tuple[np.ndarray, np.ndarray, int]:
    """Bellman optimality sweeps V(s) ← max_a backup(s, a), in place, until the largest change is ≤ θ.
    Returns (V, the greedy policy, sweeps).

    Example (tests): a chain 0 → 1 → 2 (terminal) with reward 1 per move and a "stay" action with reward 0,
    γ = 0.9: V(1) = 1, V(0) = 1 + 0.9·1 = 1.9, and the policy moves."""
    V = np.zeros(n_states)
    for sweep in range(1, max_sweeps + 1):
        delta = 0.0
        for s in range(n_states):
            best = max(backup(P, V, s, a, gamma) for a in range(n_actions))
            delta, V[s] = max(delta, abs(best - V[s])), best
        if delta <= theta:
            break
    return V, greedy_policy(P, V, n_states, n_actions, gamma), sweep


def greedy_policy(P: dict, V: np.ndarray, n_states: int, n_actions: int, gamma: float) -> np.ndarray:
    """π(s) = argmax_a backup(s, a) (the first best action on ties)."""
    return np.array([int(np.argmax([backup(P, V, s, a, gamma) for a in range(n_actions)]))
                     for s in range(n_states)])


def evaluate_policy(P: dict, policy: np.ndarray, n_states: int, gamma: float, theta: float = 1e-10,
                    max_sweeps: int = 100_000) -> np.ndarray:
    """Iterative policy evaluation V(s) ← Σ_a π(a|s)·backup(s, a). `policy` is [S] (deterministic actions) or
    [S, A] (action probabilities). With γ = 1 it needs a policy that ends every episode (the uniform random policy
    on GridWorld does)."""
    probs = np.eye(len(P[0]))[policy] if policy.ndim == 1 else policy
    V = np.zeros(n_states)
    for _ in range(max_sweeps):
        delta = 0.0
        for s in range(n_states):
            v = sum(probs[s, a] * backup(P, V, s, a, gamma) for a in range(probs.shape[1]) if probs[s, a] > 0)
            delta, V[s] = max(delta, abs(v - V[s])), v
        if delta <= theta:
            break
    return V


def policy_iteration(P: dict, n_states: int, n_actions: int, gamma: float, theta: float = 1e-10,
                     max_iterations: int = 100) -> tuple[np.ndarray, np.ndarray, int]:
    """Evaluate π, improve it greedily, stop when the greedy policy no longer changes (§4.3). Starts from
    "always action 0". Returns (V, policy, iterations)."""
    policy = np.zeros(n_states, dtype=np.int64)
    for iteration in range(1, max_iterations + 1):
        V = evaluate_policy(P, policy, n_states, gamma, theta)
        improved = greedy_policy(P, V, n_states, n_actions, gamma)
        # keep the current action where it is still among the best (ties would otherwise flip forever)
        keep = [backup(P, V, s, policy[s], gamma) >= backup(P, V, s, improved[s], gamma) - 1e-12
                for s in range(n_states)]
        improved = np.where(keep, policy, improved)
        if np.array_equal(improved, policy):
            break
        policy = improved
    return V, policy, iteration


# ---------------------------------------------------------------------------------------------------------------------
# Learning from episodes
# ---------------------------------------------------------------------------------------------------------------------

def episode_returns(rewards: list[float], gamma: float) -> list[float]:
    """G_t = r_t + γ·G_{t+1} for one finished episode — the shared `discounted_returns` the LLM side uses.
    Example: rewards [4, 3, 5, 2], γ = 1 → [14, 10, 7, 2]."""
    r = torch.tensor([rewards], dtype=torch.float64)
    return discounted_returns(r, torch.ones_like(r), gamma)[0].tolist()


def epsilon_greedy(Q: np.ndarray, s: int, eps: float, rng: np.random.Generator) -> int:
    """A random action with probability ε, else the best one (random among ties, so an all-zero table explores)."""
    if rng.random() < eps:
        return int(rng.integers(Q.shape[1]))
    best = np.flatnonzero(Q[s] == Q[s].max())
    return int(rng.choice(best))


def td_control_episode(env, Q: np.ndarray, eps: float, alpha: float, gamma: float, rng: np.random.Generator,
                       sarsa: bool) -> tuple[float, int]:
    """One episode of SARSA (target r + γQ(s', a'), a' the action it will take) or Q-learning (target
    r + γ·max Q(s', ·)); terminal transitions have target r. Returns (episode return, length)."""
    s, _ = env.reset()
    a = epsilon_greedy(Q, s, eps, rng)
    total, steps, done = 0.0, 0, False
    while not done:
        s2, r, terminated, truncated, _ = env.step(a)
        a2 = epsilon_greedy(Q, s2, eps, rng)
        future = 0.0 if terminated else gamma * (Q[s2, a2] if sarsa else Q[s2].max())
        Q[s, a] += alpha * (r + future - Q[s, a])
        s, a, total, steps, done = s2, a2, total + r, steps + 1, terminated or truncated
    return total, steps


def random_episode(env, rng: np.random.Generator) -> tuple[list[int], list[float], bool]:
    """States, rewards and whether it terminated, for one episode of the uniform random policy."""
    s, _ = env.reset()
    states, rewards, done, terminated = [], [], False, False
    while not done:
        s2, r, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        states.append(s)
        rewards.append(float(r))
        s, done = s2, terminated or truncated
    states.append(s)
    return states, rewards, terminated


def first_visit_mc(V: np.ndarray, counts: np.ndarray, states: list[int], rewards: list[float], gamma: float):
    """Average of the returns following the first visit to each state (§5.1), as a running mean."""
    returns = episode_returns(rewards, gamma)
    seen = set()
    for t, s in enumerate(states[:-1]):
        if s in seen:
            continue
        seen.add(s)
        counts[s] += 1
        V[s] += (returns[t] - V[s]) / counts[s]


def n_step_td(V: np.ndarray, states: list[int], rewards: list[float], terminated: bool, n: int, alpha: float,
              gamma: float):
    """n-step TD (§7.1) over a finished episode: V(s_t) ← V(s_t) + α·(G_{t:t+n} − V(s_t)) with
    G_{t:t+n} = r_t + … + γ^{n−1} r_{t+n−1} + γ^n V(s_{t+n}) (no bootstrap past a termination). n = 1 is TD(0).
    Updates are applied in time order, as online TD would (each target uses the values so far)."""
    T = len(rewards)
    for t in range(T):
        end = min(t + n, T)
        g = sum(gamma ** (k - t) * rewards[k] for k in range(t, end))
        if end < T or not terminated:
            g += gamma ** (end - t) * V[states[end]]
        V[states[t]] += alpha * (g - V[states[t]])


# ---------------------------------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------------------------------

def env_kwargs(cfg) -> dict:
    return {"is_slippery": cfg.tabular.slippery} if cfg.env.startswith("FrozenLake") else {}


def run(cfg) -> dict:
    env = common.make_env(cfg.env, seed=cfg.seed, **env_kwargs(cfg))
    if not hasattr(env.unwrapped, "P"):
        from posttrain.errors import ConfigError
        raise ConfigError(f"env: {cfg.env} is not a tabular environment — fix: --env FrozenLake-v1 or GridWorld "
                          "(or another toy-text environment with discrete states)")
    P, nS, nA = env.unwrapped.P, env.observation_space.n, env.action_space.n
    run_ = common.Run(cfg, total=cfg.total_steps)
    tab, summary = cfg.tabular, {}

    def evaluate(policy: np.ndarray) -> dict:
        return common.evaluate(lambda s: int(policy[s]), cfg.env, cfg.eval_episodes, cfg.seed, **env_kwargs(cfg))

    if cfg.algo in ("value_iteration", "policy_iteration"):
        plan = value_iteration if cfg.algo == "value_iteration" else policy_iteration
        V, policy, sweeps = plan(P, nS, nA, cfg.gamma, tab.theta, cfg.total_steps)
        summary = {**evaluate(policy), "sweeps": sweeps}
        run_.log(sweeps, summary)
        tables = {"V": torch.tensor(V), "policy": torch.tensor(policy)}
    elif cfg.algo in ("mc", "td"):
        uniform = np.full((nS, nA), 1.0 / nA)
        exact = evaluate_policy(P, uniform, nS, cfg.gamma, tab.theta)
        V, counts, rng, start = np.zeros(nS), np.zeros(nS), np.random.default_rng(cfg.seed), 0
        if run_.resume:
            state, tensors = run_.load(modules={}, envs={"env": env})
            V, counts, start = tensors["V"].numpy().copy(), tensors["counts"].numpy().copy(), state["step"]
            rng.bit_generator.state = state["rng"]
        for episode in range(start + 1, cfg.total_steps + 1):
            states, rewards, terminated = random_episode(env, rng)
            if cfg.algo == "mc":
                first_visit_mc(V, counts, states, rewards, cfg.gamma)
            else:
                n_step_td(V, states, rewards, terminated, tab.n, tab.alpha, cfg.gamma)
            if episode % cfg.log.every == 0 or episode == cfg.total_steps:
                run_.log(episode, {"value_error": float(np.abs(V - exact).max()), "episode/return": sum(rewards)})
            if run_.due(episode):
                run_.save(episode, modules={}, state={"rng": rng.bit_generator.state}, envs={"env": env},
                          tensors={"V": torch.tensor(V), "counts": torch.tensor(counts)})
            run_.tracker.advance()
        summary = {"value_error": float(np.abs(V - exact).max()), "episodes": cfg.total_steps}
        tables = {"V": torch.tensor(V), "V_exact": torch.tensor(exact)}
    else:  # sarsa, q_learning
        Q, eps, rng, start = np.zeros((nS, nA)), tab.eps_start, np.random.default_rng(cfg.seed), 0
        if run_.resume:
            state, tensors = run_.load(modules={}, envs={"env": env})
            Q, eps, start = tensors["Q"].numpy().copy(), state["eps"], state["step"]
            rng.bit_generator.state = state["rng"]
        for episode in range(start + 1, cfg.total_steps + 1):
            ret, length = td_control_episode(env, Q, eps, tab.alpha, cfg.gamma, rng, sarsa=cfg.algo == "sarsa")
            eps = max(tab.eps_end, eps * tab.eps_decay)
            metrics = {"episode/return": ret, "episode/length": length, "epsilon": eps}
            if cfg.eval_every and episode % cfg.eval_every == 0:
                metrics.update(evaluate(Q.argmax(1)))
            if episode % cfg.log.every == 0 or episode == cfg.total_steps or "eval/return" in metrics:
                run_.log(episode, metrics)
            if run_.due(episode):
                run_.save(episode, modules={}, state={"rng": rng.bit_generator.state, "eps": eps},
                          envs={"env": env}, tensors={"Q": torch.tensor(Q)})
            run_.tracker.advance()
        summary = {**evaluate(Q.argmax(1)), "episodes": cfg.total_steps}
        tables = {"Q": torch.tensor(Q), "policy": torch.tensor(Q.argmax(1))}
    final = run_.finish({}, summary)
    save_file({k: v.contiguous() for k, v in tables.items()}, final / "tables.safetensors")
    return summary
