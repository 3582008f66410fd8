"""Registries that carry their own metadata (posttrain/algos/registry.py): the helper itself, every family's declared
hyperparameters against its functions' signatures, each flag against what the function really does, and how the RL
loop turns the metadata and algo.loss_args into keyword arguments (posttrain/train/plan.py)."""

import inspect

import pytest
import torch

from posttrain import cli, config as C, presets
from posttrain.algos import advantages, aggregate, correction, distill, kl, policy, preference
from posttrain.algos.registry import Registry, UnknownName
from posttrain.errors import ConfigError
from posttrain.train import plan

# Arguments every function of a family takes from the loop, not hyperparameters of one function.
FAMILIES = {"advantages": (advantages.ADVANTAGES, set()), "policy": (policy.POLICY_LOSSES, set()),
            "kl": (kl.ESTIMATORS, set()), "aggregate": (aggregate.AGGREGATIONS, {"num_tokens", "num_seqs", "max_len"}),
            "preference": (preference.LOSSES, {"beta"}), "distill": (distill.DISTILL_LOSSES, {"temperature"}),
            "correction": (correction.CORRECTIONS, set())}


# ---- the helper -----------------------------------------------------------------------------------------------------

def make() -> Registry:
    reg = Registry("widget", flags={"level": "token", "needs_groups": False})

    @reg.register("b", needs_groups=True, hparams={"scale": 2.0})
    def b(x, *, scale=2.0):
        """Scale x."""
        return x * scale

    @reg.register("a")
    def a(x):
        return x
    return reg


def test_entry_get_select_and_unknown_names():
    reg = make()
    assert reg.get("b")(3) == 6 and reg["a"](3) == 3 and "a" in reg and list(reg) == ["b", "a"] and len(reg) == 2
    entry = reg.entry("b")
    assert entry.needs_groups and entry.level == "token" and entry.hparams == {"scale": 2.0}
    assert entry.summary == "Scale x." and reg.entry("a").needs_groups is False
    assert reg.select(needs_groups=False) == ["a"] and reg.select(level="token") == ["a", "b"]
    with pytest.raises(UnknownName, match=r"unknown widget 'c' — valid: a, b"):
        reg.get("c")
    assert reg.get("c", None) is None  # with a default, as dict.get (monkeypatch.setitem relies on it)
    assert issubclass(UnknownName, ConfigError) and issubclass(UnknownName, ValueError)
    with pytest.raises(AttributeError, match="no flag 'colour'"):
        entry.colour


def test_register_refuses_undeclared_flags_and_duplicates():
    reg = make()
    with pytest.raises(TypeError, match="unknown flag.*needs_group"):
        reg.register("c", needs_group=True)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(lambda x: x)


def test_assigning_a_function_keeps_the_metadata():
    reg = make()
    reg["b"] = lambda x, *, scale=2.0: -x
    assert reg.get("b")(3) == -3 and reg.entry("b").needs_groups and reg.entry("b").hparams == {"scale": 2.0}


# ---- every family: declared hyperparameters are the function's own keywords, with the same defaults ------------------

@pytest.mark.parametrize("family", list(FAMILIES))
def test_declared_hyperparameters_match_the_signatures(family):
    registry, common = FAMILIES[family]
    for name, fn in registry.items():
        keywords = {p.name: p.default for p in inspect.signature(fn).parameters.values()
                    if p.kind is p.KEYWORD_ONLY and p.name not in common}
        assert dict(registry.entry(name).hparams) == keywords, name


# ---- every flag says what the function does ----------------------------------------------------------------------

def batch(**kw) -> advantages.AdvantageInputs:
    """Two groups of two responses of lengths 3 and 2 (T = 3), with token rewards and values; each response is
    also an episode of one turn (turn_index, turn_rewards)."""
    mask = torch.tensor([[1.0, 1, 1], [1, 1, 0], [1, 1, 1], [1, 1, 0]])
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25])
    defaults = dict(rewards=rewards, mask=mask, group_index=torch.tensor([0, 0, 1, 1]),
                    turn_index=torch.where(mask > 0, 0, -1), turn_rewards=rewards[:, None],
                    token_rewards=advantages.token_level_rewards(rewards, mask),
                    values=torch.full((4, 3), 0.1), baseline_rewards=torch.tensor([0.5, 0.5, 0.0, 0.0]))
    return advantages.AdvantageInputs(**{**defaults, **kw})


@pytest.mark.parametrize("name", list(advantages.ADVANTAGES))
def test_advantage_flags(name):
    entry = advantages.ADVANTAGES.entry(name)
    out = entry.fn(batch())
    assert out.shape == (4, 3) and (out[batch().mask == 0] == 0).all()
    # token level: reads the per-token rewards (where the loop folds the KL in); sequence level: one number per
    # response, broadcast over its tokens, whatever the per-token rewards
    moved = batch(token_rewards=batch().token_rewards + torch.tensor([[0.3, 0, 0]] * 4) * batch().mask)
    assert (not torch.equal(entry.fn(moved), out)) == (entry.level == "token")
    if entry.level == "sequence":
        assert (out[:, :2] == out[:, :1]).all() and (out[[0, 2], 2] == out[[0, 2], 0]).all()
    # alone in its group, a response has nothing to be compared with: advantage 0 under a group baseline
    alone = entry.fn(batch(group_index=torch.arange(4)))
    assert bool((alone == 0).all()) == entry.needs_groups
    if entry.needs_critic:
        with pytest.raises(ValueError, match="critic"):
            entry.fn(batch(values=None))
    if entry.needs_greedy_baseline:
        with pytest.raises(ValueError, match="baseline_rewards"):
            entry.fn(batch(baseline_rewards=None))
    if entry.needs_turns:  # one turn per episode: the turn baseline is the group baseline of grpo
        torch.testing.assert_close(out, advantages.get("grpo")(batch()))
        with pytest.raises(ValueError, match="env.name"):
            entry.fn(batch(turn_index=None))


@pytest.mark.parametrize("name", list(policy.POLICY_LOSSES))
def test_policy_loss_level(name):
    # log-ratios that differ between the tokens of a response: a token-level loss gives each token its own ratio,
    # a sequence-level one a single ratio for the whole response
    logps = torch.tensor([[0.1, -0.1, 0.3]], dtype=torch.float64)
    out = policy.get(name)(logps, torch.zeros_like(logps), torch.ones_like(logps), torch.ones_like(logps))
    distinct = len({round(r, 9) for r in out.ratio[0].tolist()})
    assert distinct == (1 if policy.POLICY_LOSSES.entry(name).level == "sequence" else 3), name


@pytest.mark.parametrize("name", list(aggregate.AGGREGATIONS))
def test_aggregation_weighs(name):
    # one long response of loss 1 and one short of loss 0: token weighing gives the long one more than half
    values, mask = torch.tensor([[1.0, 1, 1, 1], [0, 0, 0, 0]]), torch.tensor([[1.0, 1, 1, 1], [1, 0, 0, 0]])
    value = aggregate.aggregate(values, mask, name, max_len=4).item()
    assert value == pytest.approx(0.8 if aggregate.AGGREGATIONS.entry(name).weighs == "token" else 0.5), name


def test_preference_flags_match_what_each_loss_reads():
    lp = preference.PreferenceLogps(torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([5.0]),
                                    torch.tensor([4.0]))  # no reference log-probs
    for name in preference.LOSSES.select(unpaired=False):
        if preference.LOSSES.entry(name).needs_reference:
            with pytest.raises(ValueError, match="reference"):
                preference.get(name)(lp)
        else:
            assert torch.isfinite(preference.get(name)(lp).losses).all()


# ---- presets name registered pieces that fit together ---------------------------------------------------------------

@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_every_preset_passes_the_piece_checks(name):
    cfg = presets.expand(C.RLConfig(algo=C.AlgoConfig(name=name)))
    plan.check_pieces(cfg)
    entry = advantages.ADVANTAGES.entry(cfg.algo.advantage)
    assert entry.needs_critic == (cfg.algo.critic == "value")
    assert not entry.needs_groups or cfg.rl.generations >= 2


@pytest.mark.parametrize("key, value", [("algo.advantage", "gea"), ("algo.policy_loss", "ppo_clap"),
                                        ("kl.estimator", "k4")])
def test_piece_checks_name_the_unregistered_piece_and_the_registered_ones(key, value):
    cfg = presets.expand(C.RLConfig(algo=C.AlgoConfig(name="grpo")))
    section, attr = key.split(".")
    setattr(getattr(cfg, section), attr, value)
    with pytest.raises(ConfigError, match=f"{key} = '{value}' is not registered — valid: ") as err:
        plan.check_pieces(cfg)
    registry = {"algo.advantage": advantages.ADVANTAGES, "algo.policy_loss": policy.POLICY_LOSSES,
                "kl.estimator": kl.ESTIMATORS}[key]
    assert all(name in str(err.value) for name in registry)


# ---- hyperparameters: algo fields, algo.loss_args, declared defaults ------------------------------------------------

def expanded(name: str, **algo) -> C.RLConfig:
    return presets.expand(C.RLConfig(algo=C.AlgoConfig(name=name, **algo)))


def test_hyperparameters_come_from_the_algo_fields_or_the_declared_defaults():
    grpo = expanded("grpo", grpo_std="population")
    assert plan.advantage_arguments(grpo.algo) == {"eps": 1e-6, "std": "population"}  # std is algo.grpo_std
    assert plan.loss_arguments(grpo.algo) == {"eps_low": 0.2, "eps_high": 0.2, "dual_clip": 0.0}
    assert plan.advantage_arguments(expanded("ppo", lam=0.9).algo) == {"gamma": 1.0, "lam": 0.9}
    assert plan.loss_arguments(expanded("gspo").algo) == {"eps_low": 3e-4, "eps_high": 4e-4}
    assert plan.loss_arguments(expanded("reinforce").algo) == {} and plan.advantage_arguments(
        expanded("rloo").algo) == {}
    unset = expanded("grpo", eps_low=None)  # None: the preset's value is replaced by nothing → the declared default
    unset.algo.eps_low = None
    assert plan.loss_arguments(unset.algo)["eps_low"] == 0.2


def loss_args_entry(monkeypatch):
    """A policy loss with a hyperparameter that has no algo field, registered for the test only."""
    def scaled(logps, old_logps, advantages, mask, *, scale: float = 1.5, eps_low: float = 0.2, mode: str = "a",
               flip: bool = False):
        return policy.vanilla_pg(logps, old_logps, advantages * scale, mask)
    registry = policy.POLICY_LOSSES
    monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    registry.register("scaled", hparams={"scale": 1.5, "eps_low": 0.2, "mode": "a", "flip": False})(scaled)


def test_loss_args_set_declared_hyperparameters_and_are_checked(monkeypatch):
    loss_args_entry(monkeypatch)
    cfg = expanded("grpo", policy_loss="scaled", loss_args={"scale": "3", "flip": "true"})
    assert plan.loss_arguments(cfg.algo) == {"scale": 3.0, "eps_low": 0.2, "mode": "a", "flip": True}
    cases = {"tau": "'tau' is not a hyperparameter of policy loss 'scaled' — valid: scale, mode, flip",
             "eps_low": "eps_low is the field algo.eps_low — set that instead"}
    for key, message in cases.items():
        cfg.algo.loss_args = {key: "1"}
        with pytest.raises(ConfigError, match=message):
            plan.loss_arguments(cfg.algo)
    for key, value, kind in (("scale", "big", "float"), ("flip", "maybe", "bool")):
        cfg.algo.loss_args = {key: value}
        with pytest.raises(ConfigError, match=f"algo.loss_args.{key} = '{value}' is not a {kind}"):
            plan.loss_arguments(cfg.algo)


def test_loss_args_on_the_command_line(tmp_path, capsys):
    assert cli.main(["explain", "--algo", "grpo", "train.micro_batch_size=8", "algo.loss_args=tau:1"]) == 2
    assert "'tau' is not a hyperparameter of policy loss 'ppo_clip' — valid: none" in capsys.readouterr().err
    assert cli.main(["explain", "--algo", "grpo", "train.micro_batch_size=8"]) == 0
    out = capsys.readouterr().out
    assert "policy loss           ppo_clip (eps_low 0.2, eps_high 0.2, dual_clip 0.0)" in out
    assert "advantage             grpo (eps 1e-06, std sample): sequence level, needs groups" in out
    assert "algo.policy_loss    " in out and "gspo" in out.split("algo.policy_loss")[-1]


def test_a_loss_refusing_a_value_stops_the_run_before_it_starts(tmp_path, capsys):
    assert cli.main(["rl", "--algo", "ppo", "algo.dual_clip=0.5", f"output_dir={tmp_path / 'run'}"]) == 2
    assert "dual_clip must be a constant c > 1" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_preset_may_set_loss_args_under_the_users(monkeypatch):
    monkeypatch.setitem(presets.PRESETS, "sapo_hot", {**presets.PRESETS["sapo"],
                                                      "algo.loss_args": {"tau_pos": 2.0, "tau_neg": 3.0}})
    cfg = expanded("sapo_hot", loss_args={"tau_neg": "4"})
    assert cfg.algo.loss_args == {"tau_pos": "2.0", "tau_neg": "4"}
    assert plan.loss_arguments(cfg.algo) == {"tau_pos": 2.0, "tau_neg": 4.0}
