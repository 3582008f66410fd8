"""Online-RL algorithms as presets: each name fills the `algo`, `kl` and `rl` fields a user left unset.

An algorithm here is not a class; it is a choice of registered functions (advantage estimator, policy loss,
aggregation, KL estimator and placement, critic or not) that the one loop in `train/rl.py` composes. Any field
set in the YAML file or on the command line wins over the preset: `posttrain rl --algo grpo algo.aggregate=
token_mean` is GRPO with DAPO's token-level reduction. `posttrain rl --algo NAME --print-config` prints the
expansion.

    preset                 advantage              policy loss  aggregate                 KL (where, est., β)   n
    ppo                    gae (+ critic)         ppo_clip     token_mean                reward, k1, 0.05      1
    grpo                   grpo                   ppo_clip     seq_mean_token_mean       loss,   k3, 0.04      8
    dr_grpo                dr_grpo                ppo_clip     seq_mean_token_sum_norm   none                  8
    dapo                   grpo                   ppo_clip ↑   token_mean                none                  8
    rloo                   rloo                   ppo_clip     seq_mean_token_mean       reward, k1, 0.05      8
    reinforce_pp           reinforce_pp           ppo_clip     token_mean                reward, k1, 0.01      8
    reinforce_pp_baseline  reinforce_pp_baseline  ppo_clip     token_mean                loss,   k2, 0.01      8
    gspo                   grpo                   gspo         seq_mean_token_mean       none                  8
    remax                  remax (greedy base)    ppo_clip     seq_mean_token_mean       reward, k1, 0.05      1
    reinforce              reinforce (no base)    vanilla      token_mean                none                  8
    cispo                  grpo                   cispo ↓      token_mean                none                  8
    sapo                   grpo                   sapo ~       seq_mean_token_mean       none                  8
    gmpo                   grpo                   gmpo ↔       seq_mean_token_mean       none                  8

(↑ clip-higher: eps_high 0.28; dapo also turns on dynamic sampling and the soft overlong punishment.
↓ the importance weight is clipped only above: eps_low 1, eps_high 0.28. ~ no clip: a smooth gate with the
paper's temperatures τ_pos 1.0 / τ_neg 1.05 (algo.loss_args=tau_pos:…,tau_neg:… changes them). ↔ the clip is on
log-ratios and wider: eps_low = eps_high = 0.4, the ratio range (e^−0.4, e^0.4).)

Sources: PPO for LLMs — Ouyang et al. 2022 (InstructGPT); GRPO — Shao et al. 2024 (DeepSeekMath, β = 0.04);
Dr. GRPO — Liu et al. 2025; DAPO — Yu et al. 2025; RLOO — Ahmadian et al. 2024; REINFORCE++ — Hu 2025;
GSPO — Zheng et al. 2025 (ε 3e-4 / 4e-4); ReMax — Li et al. 2023; CISPO — MiniMax 2025 (MiniMax-M1);
SAPO — Gao et al. 2025; GMPO — Zhao et al. 2025.
"""

from __future__ import annotations

import dataclasses

from posttrain.errors import ConfigError

_BASE = {"algo.critic": "none", "algo.normalize_advantages": False, "algo.dual_clip": 0.0,
         "algo.eps_low": 0.2, "algo.eps_high": 0.2, "rl.dynamic_sampling": False, "rl.overlong_buffer": 0.0,
         "rl.generations": 8}

PRESETS: dict[str, dict] = {
    "ppo": {**_BASE, "algo.advantage": "gae", "algo.policy_loss": "ppo_clip", "algo.aggregate": "token_mean",
            "algo.critic": "value", "algo.normalize_advantages": True, "rl.generations": 1,
            "kl.where": "reward", "kl.estimator": "k1", "kl.coef": 0.05},
    "grpo": {**_BASE, "algo.advantage": "grpo", "algo.policy_loss": "ppo_clip", "algo.aggregate": "seq_mean_token_mean",
             "kl.where": "loss", "kl.estimator": "k3", "kl.coef": 0.04},
    "dr_grpo": {**_BASE, "algo.advantage": "dr_grpo", "algo.policy_loss": "ppo_clip",
                "algo.aggregate": "seq_mean_token_sum_norm", "kl.where": "none", "kl.estimator": "k3", "kl.coef": 0.0},
    "dapo": {**_BASE, "algo.advantage": "grpo", "algo.policy_loss": "ppo_clip", "algo.aggregate": "token_mean",
             "algo.eps_high": 0.28, "rl.dynamic_sampling": True, "rl.overlong_buffer": 0.2,
             "kl.where": "none", "kl.estimator": "k3", "kl.coef": 0.0},
    "rloo": {**_BASE, "algo.advantage": "rloo", "algo.policy_loss": "ppo_clip", "algo.aggregate": "seq_mean_token_mean",
             "kl.where": "reward", "kl.estimator": "k1", "kl.coef": 0.05},
    "reinforce_pp": {**_BASE, "algo.advantage": "reinforce_pp", "algo.policy_loss": "ppo_clip",
                     "algo.aggregate": "token_mean", "kl.where": "reward", "kl.estimator": "k1", "kl.coef": 0.01},
    "reinforce_pp_baseline": {**_BASE, "algo.advantage": "reinforce_pp_baseline", "algo.policy_loss": "ppo_clip",
                              "algo.aggregate": "token_mean", "kl.where": "loss", "kl.estimator": "k2",
                              "kl.coef": 0.01},
    "gspo": {**_BASE, "algo.advantage": "grpo", "algo.policy_loss": "gspo", "algo.aggregate": "seq_mean_token_mean",
             "algo.eps_low": 3e-4, "algo.eps_high": 4e-4, "kl.where": "none", "kl.estimator": "k3", "kl.coef": 0.0},
    "remax": {**_BASE, "algo.advantage": "remax", "algo.policy_loss": "ppo_clip",
              "algo.aggregate": "seq_mean_token_mean", "rl.generations": 1,
              "kl.where": "reward", "kl.estimator": "k1", "kl.coef": 0.05},
    "reinforce": {**_BASE, "algo.advantage": "reinforce", "algo.policy_loss": "vanilla", "algo.aggregate": "token_mean",
                  "kl.where": "none", "kl.estimator": "k1", "kl.coef": 0.0},
    "cispo": {**_BASE, "algo.advantage": "grpo", "algo.policy_loss": "cispo", "algo.aggregate": "token_mean",
              "algo.eps_low": 1.0, "algo.eps_high": 0.28, "kl.where": "none", "kl.estimator": "k3", "kl.coef": 0.0},
    "sapo": {**_BASE, "algo.advantage": "grpo", "algo.policy_loss": "sapo", "algo.aggregate": "seq_mean_token_mean",
             "kl.where": "none", "kl.estimator": "k3", "kl.coef": 0.0},
    "gmpo": {**_BASE, "algo.advantage": "grpo", "algo.policy_loss": "gmpo", "algo.aggregate": "seq_mean_token_mean",
             "algo.eps_low": 0.4, "algo.eps_high": 0.4, "kl.where": "none", "kl.estimator": "k3", "kl.coef": 0.0},
}


def expand(cfg):
    """Fill every unset (None) preset field of an RLConfig from PRESETS[cfg.algo.name]; returns a new config.
    A preset's algo.loss_args are defaults under the user's: each key the user did not set is added (as text,
    the type the config holds, so a resumed run compares equal)."""
    if cfg.algo.name not in PRESETS:
        import difflib
        close = difflib.get_close_matches(cfg.algo.name, list(PRESETS), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"algo.name = '{cfg.algo.name}' is not a preset — {hint}valid: {', '.join(PRESETS)}")
    sections = {}
    for key, value in PRESETS[cfg.algo.name].items():
        section, name = key.split(".")
        current = getattr(getattr(cfg, section), name)
        if key == "algo.loss_args":
            sections.setdefault(section, {})[name] = {**{k: str(v) for k, v in value.items()}, **current}
        elif current is None:
            sections.setdefault(section, {})[name] = value
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **values)
                                       for section, values in sections.items()})
