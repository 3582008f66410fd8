"""`posttrain explain CONFIG`: what an online-RL run will do — its pieces and their hyperparameters, and the batch
arithmetic — checked before anything is loaded (posttrain/train/plan.py does the work; `posttrain rl` runs the same
checks). Every registered piece is listed at the end, so a user sees what else can be plugged in.
"""

from __future__ import annotations

from dataclasses import replace

from posttrain import presets
from posttrain.algos import advantages, aggregate, correction, kl, policy
from posttrain.config import RLConfig
from posttrain.train.plan import RLPlan, correction_arguments, correction_name, needs_reference, pieces, rl_plan


def run(cfg: RLConfig) -> RLPlan:
    """Print the expanded algorithm and the batch arithmetic of an rl config (no model is loaded)."""
    from posttrain.data import load_rows

    cfg = presets.expand(cfg)
    num_prompts = len(load_rows(cfg.data.train_path, columns=cfg.data.columns).rows) if cfg.data.train_path \
        else cfg.task.num_train
    plan = rl_plan(cfg, world_size=1, num_prompts=num_prompts)
    a = cfg.algo
    kl_term = f"{cfg.kl.estimator} in the {cfg.kl.where}, β = {cfg.kl.coef}" + \
        (f" (adaptive, target {cfg.kl.target})" if cfg.kl.target else "") if needs_reference(cfg) else \
        f"off (monitored on {cfg.kl.monitor} samples per step)" if cfg.kl.monitor else "off"
    def correction_of(engine: str) -> str:
        with_engine = replace(cfg, rollout=replace(cfg.rollout, engine=engine))
        name = correction_name(with_engine)
        return name + (f" (cap {correction_arguments(with_engine)['cap']:g})" if name != "none" else "")
    correction_text = correction_of(cfg.rollout.engine)
    if cfg.rollout.engine == "auto" and correction_of("vllm") != correction_of("hf"):  # decided when the run starts
        correction_text = f"{correction_of('vllm')} if rollout.engine=auto chooses vLLM, else {correction_of('hf')}"
    print(f"algorithm             {a.name}: advantage {a.advantage}, policy loss {a.policy_loss}, "
          f"aggregate {a.aggregate}, critic {a.critic}, KL {kl_term}, rollout correction {correction_text}")
    if cfg.env.name:
        print(f"episodes              env {cfg.env.name}: up to {cfg.env.max_turns} model turns and {cfg.env.max_tokens} "
              f"tokens after the prompt per sample; the environment's tokens are masked out of the loss"
              + (f"; {cfg.env.progress_reward:g} per needed value a tool turn finds" if cfg.env.progress_reward
                 else ""))
    print("\n".join(pieces(cfg)))
    print(plan.describe())
    print("registered")
    for key, names in (("algo.name", presets.PRESETS), ("algo.advantage", advantages.ADVANTAGES),
                       ("algo.policy_loss", policy.POLICY_LOSSES), ("algo.aggregate", aggregate.AGGREGATIONS),
                       ("kl.estimator", kl.ESTIMATORS), ("rl.correction", correction.CORRECTIONS)):
        print(f"  {key:<20}{', '.join(names)}")
    return plan
