#!/usr/bin/env python
"""Classic PPO and DQN on CartPole-v1: posttrain (`posttrain.classic`) against Stable-Baselines3, the same
hyperparameters and environment steps, five seeds.

    python benchmarks/classic_vs_sb3.py                       # ppo and dqn, seeds 0–4, each algorithm's budget
    python benchmarks/classic_vs_sb3.py --algos ppo --seeds 0 # one run of each tool

For each (algorithm, seed) both tools train from scratch with posttrain's defaults for that algorithm
(`posttrain classic ALGO --print` shows nothing more: they are the config's defaults), translated into SB3's
arguments by `sb3_ppo` / `sb3_dqn` below (network widths and activations, optimizer, learning-rate schedule,
batch and epoch layout, ε schedule, target updates, gradient clipping). Both are evaluated by the same function
(`posttrain.classic.common.evaluate`: deterministic actions, evaluation seeds 10,000+ apart from training):

    steps to 475   the first evaluation (every --eval-every environment steps, --eval-episodes episodes) whose
                   mean return is ≥ 475
    final return   the mean over --eval-episodes episodes after the last step (the final network, no picking)
    train s        wall time of the run minus the time spent in those evaluations (one torch thread each)

and the table ends with, per tool, the mean final return, the seeds that reached 475, the median steps to
475 (a seed that never reached it counts as infinite) and the mean training seconds, with SB3's time ÷ ours.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from posttrain import classic
from posttrain.classic import common
from posttrain.config import ClassicConfig

TARGET = 475.0


class EvalClock:
    """Wraps common.evaluate to add up the seconds spent evaluating (subtracted from the training time)."""

    def __init__(self):
        self.seconds, self.inner = 0.0, common.evaluate

    def __call__(self, *args, **kwargs):
        t = time.perf_counter()
        out = self.inner(*args, **kwargs)
        self.seconds += time.perf_counter() - t
        return out


def ours(cfg: ClassicConfig) -> dict:
    clock = EvalClock()
    common.evaluate = clock
    try:
        t = time.perf_counter()
        summary = classic.run(cfg)
        wall = time.perf_counter() - t
    finally:
        common.evaluate = clock.inner
    records = [json.loads(x) for x in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    reached = [r["step"] for r in records if r.get("eval/return", 0) >= TARGET]
    return {"final": summary["eval/return"], "steps_to_target": reached[0] if reached else None,
            "train_s": wall - clock.seconds}


def sb3_ppo(cfg: ClassicConfig, env):
    from stable_baselines3 import PPO
    p = cfg.ppo
    batch = p.n_steps * cfg.num_envs // p.minibatches
    lr = (lambda progress: progress * cfg.lr) if p.anneal_lr else cfg.lr  # SB3's progress runs 1 → 0
    return PPO("MlpPolicy", env, learning_rate=lr, n_steps=p.n_steps, batch_size=batch, n_epochs=p.epochs,
               gamma=cfg.gamma, gae_lambda=p.gae_lambda, clip_range=p.clip, clip_range_vf=p.vf_clip or None,
               normalize_advantage=p.norm_adv, ent_coef=p.ent_coef, vf_coef=p.vf_coef,
               max_grad_norm=p.max_grad_norm,
               policy_kwargs={"net_arch": {"pi": [p.hidden] * 2, "vf": [p.hidden] * 2},
                              "activation_fn": torch.nn.Tanh, "ortho_init": True},
               seed=cfg.seed, device="cpu", verbose=0)


def sb3_dqn(cfg: ClassicConfig, env):
    from stable_baselines3 import DQN
    d = cfg.dqn
    lr = (lambda progress: progress * cfg.lr) if d.anneal_lr else cfg.lr
    return DQN("MlpPolicy", env, learning_rate=lr, buffer_size=d.buffer_size, learning_starts=d.learning_starts,
               batch_size=d.batch_size, tau=d.tau, gamma=cfg.gamma, train_freq=d.train_every,
               gradient_steps=d.gradient_steps, target_update_interval=d.target_every if d.tau >= 1 else 1,
               exploration_fraction=d.eps_fraction, exploration_initial_eps=d.eps_start,
               exploration_final_eps=d.eps_end, max_grad_norm=d.max_grad_norm,
               policy_kwargs={"net_arch": [d.hidden] * 2}, seed=cfg.seed, device="cpu", verbose=0)


def sb3(cfg: ClassicConfig, eval_every: int) -> dict:
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env(cfg.env, n_envs=cfg.num_envs, seed=cfg.seed)
    model = (sb3_ppo if cfg.algo == "ppo" else sb3_dqn)(cfg, env)
    clock, reached = EvalClock(), []

    def act(obs):
        return model.predict(obs, deterministic=True)[0]

    class Probe(BaseCallback):
        """Evaluates where posttrain does: DQN at exact multiples of eval_every, PPO after the first update at or
        past each multiple (an on-policy rollout is not cut for an evaluation, in either tool)."""

        def probe(self) -> None:
            if self.num_timesteps // eval_every > self.last // eval_every:
                self.last = self.num_timesteps
                if clock(act, cfg.env, cfg.eval_episodes, cfg.seed)["eval/return"] >= TARGET and not reached:
                    reached.append(self.num_timesteps)

        def _on_training_start(self) -> None:
            self.last = 0

        def _on_step(self) -> bool:
            if cfg.algo != "ppo":
                self.probe()
            return True

        def _on_rollout_start(self) -> None:  # PPO: after the previous rollout's update
            if cfg.algo == "ppo":
                self.probe()

    t = time.perf_counter()
    model.learn(total_timesteps=cfg.total_steps, callback=Probe())
    final = clock(act, cfg.env, cfg.eval_episodes, cfg.seed)["eval/return"]
    if final >= TARGET and not reached:  # the final evaluation counts, as in posttrain's metrics
        reached.append(model.num_timesteps)
    wall = time.perf_counter() - t
    return {"final": final, "steps_to_target": reached[0] if reached else None, "train_s": wall - clock.seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--algos", default="ppo,dqn")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--eval-every", type=int, default=10_000)
    ap.add_argument("--eval-episodes", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for algo in args.algos.split(","):
            for seed in map(int, args.seeds.split(",")):
                cfg = classic.resolve(ClassicConfig(algo=algo, seed=seed, output_dir=f"{tmp}/{algo}{seed}",
                                                    eval_every=args.eval_every, eval_episodes=args.eval_episodes))
                cfg = replace(cfg, log=replace(cfg.log, progress=False))
                for tool, fn in (("posttrain", lambda: ours(cfg)), ("sb3", lambda: sb3(cfg, args.eval_every))):
                    r = fn()
                    rows.append({"algo": algo, "tool": tool, "seed": seed, "steps": cfg.total_steps, **r})
                    print(json.dumps(rows[-1]), flush=True)
    print_table(rows)


def print_table(rows: list[dict]) -> None:
    print(f"\n{'algo':<5} {'tool':<10} {'seed':>4} {'env steps':>9} {'final return':>12} {'steps to 475':>12} "
          f"{'train s':>8}")
    for r in rows:
        reached = r["steps_to_target"] if r["steps_to_target"] is not None else "never"
        print(f"{r['algo']:<5} {r['tool']:<10} {r['seed']:>4} {r['steps']:>9} {r['final']:>12.1f} {reached:>12} "
              f"{r['train_s']:>8.1f}")
    print()
    for algo in dict.fromkeys(r["algo"] for r in rows):
        summary = {}
        for tool in ("posttrain", "sb3"):
            rs = [r for r in rows if r["algo"] == algo and r["tool"] == tool]
            steps = [r["steps_to_target"] if r["steps_to_target"] is not None else math.inf for r in rs]
            median = statistics.median(steps)
            summary[tool] = {"final": statistics.mean(r["final"] for r in rs),
                             "reached": f"{sum(x < math.inf for x in steps)}/{len(rs)}",
                             "median": "never" if median == math.inf else f"{median:,.0f}",
                             "train_s": statistics.mean(r["train_s"] for r in rs)}
        ours, sb3 = summary["posttrain"], summary["sb3"]
        print(f"{algo}: mean final return posttrain {ours['final']:.1f} / SB3 {sb3['final']:.1f}; seeds reaching 475 "
              f"{ours['reached']} / {sb3['reached']}; median steps to 475 {ours['median']} / {sb3['median']}; "
              f"mean train s {ours['train_s']:.1f} / {sb3['train_s']:.1f} (SB3 time ÷ ours "
              f"{sb3['train_s'] / ours['train_s']:.2f}×)")

if __name__ == "__main__":
    main()
