"""What an online-RL run will do, checked before anything is loaded: its pieces and its batch arithmetic.

Runs that silently do nothing are a classic RL failure: a mini-batch larger than the step, an accumulation
count that rounds to zero, a group size of 1 under a group baseline (every advantage 0). `rl_plan` computes
every number the loop will use and refuses — exit 2, naming the knob — configurations that give zero updates
or do not divide; `posttrain rl` and `posttrain explain` call it before anything else.

    samples per step      = rl.prompts_per_step × rl.generations
    mini-batches per step = samples / rl.mini_batch_size          (0: one mini-batch of all samples)
    micro-batches         = mini-batch / (train.micro_batch_size × processes)   = gradient-accumulation steps
    updates per step      = mini-batches × rl.update_epochs
    tokens per update     ≤ mini-batch × (longest prompt + sampling.max_new_tokens)

The pieces are registered functions (posttrain.algos.registry); what each needs — groups, a critic, a greedy
baseline, its hyperparameters — is read from its entry, so no name of an estimator or a loss appears here.
Hyperparameters: a registered function gets each one it declares from the algo field of that name (or the
field its entry names, e.g. grpo's `std` is algo.grpo_std) when the field is set, else, for the policy loss,
from algo.loss_args, else the declared default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from posttrain.algos import advantages, aggregate, correction, kl, policy
from posttrain.algos.registry import Entry
from posttrain.config import AlgoConfig, RLConfig
from posttrain.errors import ConfigError


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
    check_pieces(cfg)
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


# ---------------------------------------------------------------------------------------------------------------------
# The pieces: registered, compatible, and their hyperparameters
# ---------------------------------------------------------------------------------------------------------------------

def check_pieces(cfg: RLConfig) -> None:
    """Combinations that cannot train: each error names the knob and the fix."""
    algo, rl = cfg.algo, cfg.rl
    for key, registry in (("algo.advantage", advantages.ADVANTAGES), ("algo.policy_loss", policy.POLICY_LOSSES),
                          ("kl.estimator", kl.ESTIMATORS)):
        section, attr = key.split(".")
        name = getattr(getattr(cfg, section), attr)
        if name not in registry:
            raise ConfigError(f"{key} = '{name}' is not registered — valid: {', '.join(sorted(registry))}")
    if algo.aggregate not in aggregate.AGGREGATIONS:
        raise ConfigError(f"algo.aggregate = '{algo.aggregate}' — valid: {', '.join(aggregate.MODES)}")
    estimator = advantages.ADVANTAGES.entry(algo.advantage)
    if estimator.needs_critic and algo.critic != "value":
        raise ConfigError(f"algo.advantage={algo.advantage} needs a critic — set algo.critic=value, or pick a "
                          f"critic-free estimator ({', '.join(advantages.ADVANTAGES.select(needs_critic=False))})")
    if algo.critic == "value" and not estimator.needs_critic:
        critics = advantages.ADVANTAGES.select(needs_critic=True)
        raise ConfigError(f"algo.critic=value is only used by algo.advantage={' or '.join(critics)} (now "
                          f"'{algo.advantage}') — set algo.critic=none or algo.advantage={critics[0]}")
    if algo.critic_warmup and algo.critic != "value":
        raise ConfigError(f"algo.critic_warmup = {algo.critic_warmup} trains a critic first, and this algorithm has "
                          "none — set algo.critic_warmup=0, or use a critic (algo.critic=value, algo.advantage=gae)")
    if algo.critic_warmup < 0:
        raise ConfigError(f"algo.critic_warmup = {algo.critic_warmup} must be ≥ 0 (steps)")
    if estimator.needs_groups and rl.generations < 2:
        raise ConfigError(f"algo.advantage={algo.advantage} compares the completions of one prompt, and "
                          f"rl.generations = {rl.generations} gives every one advantage 0 — set rl.generations ≥ 2")
    _check_loss_values(algo)
    _check_sampling_and_rewards(cfg)


def _check_sampling_and_rewards(cfg: RLConfig) -> None:
    rl = cfg.rl
    cfg.env.validate()
    estimator = advantages.ADVANTAGES.entry(cfg.algo.advantage)
    if estimator.needs_turns and not cfg.env.name:
        raise ConfigError(f"advantage {cfg.algo.advantage} gives each turn of a multi-turn episode its own credit; "
                          "this run has single-turn samples — fix: set env.name (e.g. env.name=calculator), or "
                          "algo.advantage=grpo")
    if estimator.needs_turns and cfg.kl.where == "reward" and needs_reference(cfg):
        raise ConfigError(f"advantage {cfg.algo.advantage} reads per-turn rewards, where a KL penalty in the reward "
                          "has no place — fix: kl.where=loss")
    if cfg.env.name and estimator.needs_greedy_baseline:
        raise ConfigError(f"advantage {cfg.algo.advantage} needs a greedy completion per prompt; with env.name a "
                          "sample is a multi-turn episode — fix: --algo grpo (or rloo), or env.name=''")
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
    correction.CORRECTIONS.entry(correction_name(cfg))  # an unknown name exits 2 listing the valid ones
    if correction_name(cfg) != "none" and cfg.sampling.truncates:
        raise ConfigError(f"rl.correction = {correction_name(cfg)} weighs by π_old / π_sampler, and with top-k, "
                          "top-p, min-p or a repetition penalty the sampler's distribution is not the policy's — fix: "
                          "rl.correction=none, or sample with sampling.top_k=0 sampling.top_p=1.0")
    if cfg.rl.correction_cap is not None and not cfg.rl.correction_cap >= 1:
        raise ConfigError(f"rl.correction_cap = {cfg.rl.correction_cap}: the cap C (and the bounds [1/C, C]) must "
                          "be ≥ 1 — fix: e.g. rl.correction_cap=2")
    if cfg.kl.monitor < 0:
        raise ConfigError(f"kl.monitor = {cfg.kl.monitor}: the samples per step scored against the reference "
                          "must be ≥ 0 (0: off)")
    if not 0 <= rl.overlong_buffer < 1:
        raise ConfigError(f"rl.overlong_buffer = {rl.overlong_buffer} must be in [0, 1): a fraction of "
                          "sampling.max_new_tokens")
    if not 0 < cfg.reward.max_unscored_fraction <= 1:
        raise ConfigError(f"reward.max_unscored_fraction = {cfg.reward.max_unscored_fraction} must be in (0, 1]")
    if not (cfg.reward.verifier or cfg.reward.function or cfg.reward.model):
        raise ConfigError("no reward source: set reward.verifier=true (the task's verifier), reward.function="
                          "file.py:fn, or reward.model=RM_DIR")


def correction_name(cfg: RLConfig) -> str:
    """rl.correction, or its default: tis for vLLM when its log-probs are the policy's, else none."""
    if cfg.rl.correction is not None:
        return cfg.rl.correction
    return "tis" if cfg.rollout.engine == "vllm" and not cfg.sampling.truncates else "none"


def correction_arguments(cfg: RLConfig) -> dict[str, Any]:
    """The correction's keyword arguments: its declared cap, or rl.correction_cap."""
    entry = correction.CORRECTIONS.entry(correction_name(cfg))
    return {"cap": cfg.rl.correction_cap if cfg.rl.correction_cap is not None else entry.hparams["cap"]}


def needs_reference(cfg: RLConfig) -> bool:
    """A KL term is on: the frozen reference is loaded and scored."""
    return cfg.kl.where != "none" and cfg.kl.coef > 0


def scores_reference(cfg: RLConfig) -> bool:
    """The frozen reference is scored: for a KL term, or only to log the KL (kl.monitor)."""
    return needs_reference(cfg) or cfg.kl.monitor > 0


def advantage_arguments(algo: AlgoConfig) -> dict[str, Any]:
    """The keyword arguments of the configured advantage estimator (see the module docstring for the order)."""
    return hyperparameters(advantages.ADVANTAGES.entry(algo.advantage), algo)


def loss_arguments(algo: AlgoConfig) -> dict[str, Any]:
    """The keyword arguments of the configured policy loss; algo.loss_args is checked against what it declares."""
    entry = policy.POLICY_LOSSES.entry(algo.policy_loss)
    fields = {f.name for f in dataclasses.fields(algo)}
    free = [name for name in entry.hparams if entry.fields.get(name, name) not in fields]
    for key in algo.loss_args:
        if entry.fields.get(key, key) in fields:
            raise ConfigError(f"algo.loss_args: {key} is the field algo.{entry.fields.get(key, key)} — set that "
                              "instead")
        if key not in free:
            raise ConfigError(f"algo.loss_args: '{key}' is not a hyperparameter of policy loss '{entry.name}' — "
                              f"valid: {', '.join(free) or 'none (it takes no algo.loss_args)'}")
    return hyperparameters(entry, algo, algo.loss_args)


def _check_loss_values(algo: AlgoConfig) -> None:
    """The policy loss on one token with the run's hyperparameters: a value it refuses (e.g. dual_clip ≤ 1) stops
    the run here, naming the key, instead of at the first update."""
    import torch

    kwargs = loss_arguments(algo)
    one = torch.ones(1, 1)
    try:
        policy.get(algo.policy_loss)(torch.zeros(1, 1), torch.zeros(1, 1), one, one, **kwargs)
    except ValueError as e:
        raise ConfigError(f"algo.policy_loss={algo.policy_loss} with {kwargs}: {e}") from None


def hyperparameters(entry: Entry, algo: AlgoConfig, extra: dict | None = None) -> dict[str, Any]:
    """Each hyperparameter `entry` declares: its algo field when it has one that is set, else extra[name]
    (converted to the default's type), else the declared default."""
    out = {}
    for name, default in entry.hparams.items():
        field = entry.fields.get(name, name)
        value = getattr(algo, field, None)
        if value is None and extra and name in extra:
            value = _convert(f"algo.loss_args.{name}", extra[name], default)
        out[name] = default if value is None else value
    return out


def _convert(key: str, value, default):
    """A loss_args value (text from the command line or YAML) as the type of the declared default."""
    kind = type(default) if default is not None else float
    if kind is bool:
        if str(value).lower() in ("true", "false"):
            return str(value).lower() == "true"
    else:
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    raise ConfigError(f"{key} = {value!r} is not a {kind.__name__}")


def pieces(cfg: RLConfig) -> list[str]:
    """One line per piece of an expanded config: its name, its hyperparameters and what its entry declares."""
    algo = cfg.algo

    def args(values: dict) -> str:
        return f" ({', '.join(f'{k} {v}' for k, v in values.items())})" if values else ""

    estimator = advantages.ADVANTAGES.entry(algo.advantage)
    needs = [what for flag, what in (("needs_groups", "groups of completions per prompt"),
                                     ("needs_critic", "a critic"), ("needs_greedy_baseline", "a greedy completion"),
                                     ("needs_turns", "multi-turn episodes (env.name)"))
             if estimator.flags[flag]]
    loss = policy.POLICY_LOSSES.entry(algo.policy_loss)
    weighs = aggregate.AGGREGATIONS.entry(algo.aggregate).weighs
    return [f"advantage             {estimator.name}{args(advantage_arguments(algo))}: {estimator.level} level"
            + (f", needs {' and '.join(needs)}" if needs else ""),
            f"policy loss           {loss.name}{args(loss_arguments(algo))}: one importance ratio per {loss.level}",
            f"aggregate             {algo.aggregate}: every {weighs} weighs the same"]
