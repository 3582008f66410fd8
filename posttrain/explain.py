"""`posttrain explain CONFIG`: the batch arithmetic of an online-RL run, checked before anything is loaded.

Runs that silently do nothing are a classic RL failure: a mini-batch larger than the step, an accumulation
count that rounds to zero, a group size of 1 under a group baseline (every advantage 0). `rl_plan` computes
every number the loop will use and refuses — exit 2, naming the knob — configurations that give zero updates
or do not divide; `posttrain rl` calls the same function before it starts.

    samples per step      = rl.prompts_per_step × rl.generations
    mini-batches per step = samples / rl.mini_batch_size          (0: one mini-batch of all samples)
    micro-batches         = mini-batch / (train.micro_batch_size × processes)   = gradient-accumulation steps
    updates per step      = mini-batches × rl.update_epochs
    tokens per update     ≤ mini-batch × (longest prompt + sampling.max_new_tokens)
"""

from __future__ import annotations

from dataclasses import dataclass

from posttrain import presets
from posttrain.config import RLConfig
from posttrain.errors import ConfigError

GROUP_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp_baseline")
TOKEN_ESTIMATORS = ("gae", "reinforce_pp", "reinforce_pp_baseline")  # take token-level rewards


@dataclass
class RLPlan:
    prompts: int
    generations: int
    samples: int
    mini_batch: int
    mini_batches: int
    micro_batch: int
    accumulation: int
    world_size: int
    updates_per_step: int
    steps: int
    max_new_tokens: int
    longest_prompt: int | None  # None: not tokenized (explain loads nothing)

    @property
    def total_updates(self) -> int:
        return self.steps * self.updates_per_step

    def describe(self) -> str:
        return "\n".join([
            f"samples per step      {self.prompts} prompts × {self.generations} generations = {self.samples}",
            f"mini-batches          {self.samples} / {self.mini_batch} = {self.mini_batches} per epoch",
            f"micro-batches         {self.mini_batch} / ({self.micro_batch} per micro-batch × {self.world_size} "
            f"process(es)) = {self.accumulation} gradient-accumulation steps per update",
            f"updates per step      {self.mini_batches} mini-batches × {self.updates_per_step // self.mini_batches}"
            f" epoch(s) = {self.updates_per_step}",
            f"steps                 {self.steps} → {self.total_updates} optimizer updates, "
            f"{self.steps * self.samples} samples generated",
            f"tokens per update     ≤ {self.mini_batch} × ({self.longest_prompt or 'longest prompt'} + "
            f"{self.max_new_tokens} new tokens)"
            + (f" = {self.mini_batch * (self.longest_prompt + self.max_new_tokens)}" if self.longest_prompt else ""),
        ])


def rl_plan(cfg: RLConfig, world_size: int = 1, num_prompts: int | None = None,
            longest_prompt: int | None = None) -> RLPlan:
    """The batch arithmetic of an expanded RLConfig (presets.expand); ConfigError naming the knob when a
    configuration gives zero updates, does not divide, or combines pieces that cannot work together."""
    rl, train = cfg.rl, cfg.train
    _check_pieces(cfg)
    prompts, generations = rl.prompts_per_step, rl.generations
    if prompts < 1 or generations < 1:
        raise ConfigError(f"rl.prompts_per_step = {prompts} and rl.generations = {generations} must both be ≥ 1")
    if rl.update_epochs < 1:
        raise ConfigError(f"rl.update_epochs = {rl.update_epochs} gives zero updates per step — set it to ≥ 1")
    samples = prompts * generations
    mini = rl.mini_batch_size or samples
    if mini > samples or samples % mini:
        raise ConfigError(f"rl.mini_batch_size = {mini} does not divide the {samples} samples of a step "
                          f"(rl.prompts_per_step {prompts} × rl.generations {generations}) — set it to a divisor "
                          f"of {samples}, or 0 for one mini-batch of all samples")
    micro = train.micro_batch_size
    per_pass = micro * world_size
    if mini % per_pass:
        raise ConfigError(f"a mini-batch of {mini} samples does not split into micro-batches of "
                          f"train.micro_batch_size {micro} × {world_size} process(es) = {per_pass} — set "
                          f"train.micro_batch_size to a divisor of {mini // world_size} (or change "
                          "rl.mini_batch_size)")
    if train.grad_accum != 1 or train.global_batch_size != 0:
        raise ConfigError("train.grad_accum and train.global_batch_size do not apply to rl: accumulation is "
                          "rl.mini_batch_size / (train.micro_batch_size × processes) — leave them at 1 and 0")
    steps = train.max_steps
    if steps == 0 and num_prompts is not None:
        steps = int(train.epochs * num_prompts) // prompts
    if steps < 1 and num_prompts is not None:  # unknown before the prompts are read: checked on the next call
        raise ConfigError(f"{train.epochs} epoch(s) over {num_prompts} prompts at rl.prompts_per_step {prompts} "
                          "gives zero RL steps — set train.max_steps, raise train.epochs or lower "
                          "rl.prompts_per_step")
    mini_batches = samples // mini
    return RLPlan(prompts, generations, samples, mini, mini_batches, micro, mini // per_pass, world_size,
                  mini_batches * rl.update_epochs, steps, cfg.sampling.max_new_tokens, longest_prompt)


def _check_pieces(cfg: RLConfig) -> None:
    """Combinations that cannot train: each error names the knob and the fix."""
    from posttrain.algos import advantages, aggregate, policy

    algo, rl = cfg.algo, cfg.rl
    for key, registry in (("algo.advantage", advantages.ADVANTAGES), ("algo.policy_loss", policy.POLICY_LOSSES)):
        name = getattr(algo, key.split(".")[1])
        if name not in registry:
            raise ConfigError(f"{key} = '{name}' is not registered — valid: {', '.join(sorted(registry))}")
    if algo.aggregate not in aggregate.MODES:
        raise ConfigError(f"algo.aggregate = '{algo.aggregate}' — valid: {', '.join(aggregate.MODES)}")
    if algo.advantage == "gae" and algo.critic != "value":
        raise ConfigError("algo.advantage=gae needs a critic — set algo.critic=value, or pick a critic-free "
                          "estimator (grpo, rloo, reinforce_pp, …)")
    if algo.critic == "value" and algo.advantage != "gae":
        raise ConfigError(f"algo.critic=value is only used by algo.advantage=gae (now '{algo.advantage}') — set "
                          "algo.critic=none or algo.advantage=gae")
    if algo.critic_warmup and algo.critic != "value":
        raise ConfigError(f"algo.critic_warmup = {algo.critic_warmup} trains a critic first, and this algorithm has "
                          "none — set algo.critic_warmup=0, or use a critic (algo.critic=value, algo.advantage=gae)")
    if algo.critic_warmup < 0:
        raise ConfigError(f"algo.critic_warmup = {algo.critic_warmup} must be ≥ 0 (steps)")
    if algo.advantage in GROUP_ESTIMATORS and rl.generations < 2:
        raise ConfigError(f"algo.advantage={algo.advantage} compares the completions of one prompt, and "
                          f"rl.generations = {rl.generations} gives every one advantage 0 — set rl.generations ≥ 2")
    if rl.dynamic_sampling and rl.generations < 2:
        raise ConfigError("rl.dynamic_sampling drops groups with equal rewards; with rl.generations = 1 every "
                          "group is dropped — set rl.generations ≥ 2 or rl.dynamic_sampling=false")
    if cfg.sampling.n != 1:
        raise ConfigError(f"sampling.n = {cfg.sampling.n}: in rl the group size is rl.generations — leave "
                          "sampling.n at 1")
    if cfg.sampling.greedy:
        raise ConfigError("sampling.temperature = 0 (or top_k = 1) is greedy decoding: every completion of a "
                          "prompt is the same and nothing is explored — set sampling.temperature > 0 (e.g. 1.0)")
    if cfg.kl.coef < 0 or (cfg.kl.where != "none" and cfg.kl.coef == 0 and cfg.kl.target > 0):
        raise ConfigError(f"kl.coef = {cfg.kl.coef}: must be ≥ 0, and > 0 as the start of an adaptive "
                          "controller (kl.target > 0)")
    if not 0 <= rl.overlong_buffer < 1:
        raise ConfigError(f"rl.overlong_buffer = {rl.overlong_buffer} must be in [0, 1): a fraction of "
                          "sampling.max_new_tokens")
    if not 0 < cfg.reward.max_unscored_fraction <= 1:
        raise ConfigError(f"reward.max_unscored_fraction = {cfg.reward.max_unscored_fraction} must be in (0, 1]")
    if not (cfg.reward.verifier or cfg.reward.function or cfg.reward.model):
        raise ConfigError("no reward source: set reward.verifier=true (the task's verifier), reward.function="
                          "file.py:fn, or reward.model=RM_DIR")
    if cfg.rollout.engine != "hf":
        raise ConfigError("rollout.engine=vllm is not wired into the rl loop yet (it needs weight syncing after "
                          "every update) — use rollout.engine=hf")


def needs_reference(cfg: RLConfig) -> bool:
    return cfg.kl.where != "none" and cfg.kl.coef > 0


def run(cfg: RLConfig) -> RLPlan:
    """Print the expanded algorithm and the batch arithmetic of an rl config (no model is loaded)."""
    from posttrain.data import load_rows

    cfg = presets.expand(cfg)
    num_prompts = len(load_rows(cfg.data.train_path, columns=cfg.data.columns).rows) if cfg.data.train_path \
        else cfg.task.num_train
    plan = rl_plan(cfg, world_size=1, num_prompts=num_prompts)
    a = cfg.algo
    kl = f"{cfg.kl.estimator} in the {cfg.kl.where}, β = {cfg.kl.coef}" + \
        (f" (adaptive, target {cfg.kl.target})" if cfg.kl.target else "") if needs_reference(cfg) else "off"
    print(f"algorithm             {a.name}: advantage {a.advantage}, policy loss {a.policy_loss} "
          f"(ε {a.eps_low}/{a.eps_high}), aggregate {a.aggregate}, critic {a.critic}, KL {kl}")
    print(plan.describe())
    return plan
