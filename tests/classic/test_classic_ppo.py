"""Classic PPO (posttrain/classic/ppo.py): the episode-segment layout through the shared GAE equals CleanRL's
per-environment GAE loop, classic PPO and LLM PPO (`posttrain rl --algo ppo`) reach the very same `posttrain.algos`
objects, a resumed run continues exactly, and a short run through the CLI learns CartPole."""

import json
import shutil
import sys

import pytest
import torch

from conftest import run_cli
from posttrain import checkpoint, cli
from posttrain.algos import advantages as estimators, aggregate as aggregation, policy as policy_losses
from posttrain import classic
from posttrain.classic import ppo
from posttrain.config import ClassicConfig, PPOSection
from posttrain.errors import ConfigError
from posttrain.train import rl  # noqa: F401  (imported so its references to the shared functions can be spied on)


# ---- the segment layout + shared GAE = a plain per-environment loop ----------------------------------------------

def cleanrl_gae(r: ppo.Rollout, gamma: float, lam: float) -> torch.Tensor:
    """CleanRL's backward GAE over a [T, N] rollout, with the time-limit fix: a truncated step bootstraps from
    V(final_obs), a terminated one from 0, the last step from V(next obs); nothing carries over a done."""
    steps, n = r.rewards.shape
    out, carry = torch.zeros(steps, n), torch.zeros(n)
    for t in reversed(range(steps)):
        next_value = r.last_values if t == steps - 1 else r.values[t + 1]
        next_value = torch.where(r.terminated[t], torch.zeros(n), torch.where(r.truncated[t], r.final_values[t],
                                                                              next_value))
        delta = r.rewards[t] + gamma * next_value - r.values[t]
        carry = delta + gamma * lam * (~(r.terminated[t] | r.truncated[t])).float() * carry
        out[t] = carry
    return out


def test_segment_layout_with_the_shared_gae_equals_a_per_env_loop():
    steps, n = 12, 4
    g = torch.Generator().manual_seed(0)
    terminated, truncated = torch.zeros(steps, n, dtype=torch.bool), torch.zeros(steps, n, dtype=torch.bool)
    terminated[3, 0], truncated[8, 0] = True, True          # env 0: a termination, then a time limit
    #                                                         env 1: one episode cut by the rollout's end
    terminated[steps - 1, 2] = True                         # env 2: terminates on the very last step
    truncated[0, 3], terminated[5, 3], truncated[steps - 1, 3] = True, True, True  # env 3: all three
    final_values = torch.where(truncated, torch.rand(steps, n, generator=g) * 5, torch.zeros(steps, n))
    rollout = ppo.Rollout(obs=torch.zeros(steps, n, 1), actions=torch.zeros(steps, n), logps=torch.zeros(steps, n),
                          values=torch.rand(steps, n, generator=g) * 5, rewards=torch.rand(steps, n, generator=g),
                          terminated=terminated, truncated=truncated, final_values=final_values,
                          last_values=torch.rand(n, generator=g) * 5)
    for gamma, lam in ((0.99, 0.95), (0.98, 0.8), (1.0, 1.0)):
        torch.testing.assert_close(ppo.rollout_advantages(rollout, gamma, lam), cleanrl_gae(rollout, gamma, lam))


def test_gae_by_hand_on_one_short_rollout():
    # one env, 3 steps: terminates at t = 0, then an episode the rollout cuts (V(next obs) = 2); γ = 1, λ = 0.5
    rollout = ppo.Rollout(obs=torch.zeros(3, 1, 1), actions=torch.zeros(3, 1), logps=torch.zeros(3, 1),
                          values=torch.tensor([[1.0], [0.5], [1.0]]), rewards=torch.tensor([[1.0], [0.0], [1.0]]),
                          terminated=torch.tensor([[True], [False], [False]]), truncated=torch.zeros(3, 1, dtype=bool),
                          final_values=torch.zeros(3, 1), last_values=torch.tensor([2.0]))
    # t=0: 1 + 0 − 1 = 0.  t=2: δ = 1 + 2 − 1 = 2.  t=1: δ = 0 + 1 − 0.5 = 0.5, A = 0.5 + 0.5·2 = 1.5
    torch.testing.assert_close(ppo.rollout_advantages(rollout, 1.0, 0.5), torch.tensor([[0.0], [1.5], [2.0]]))


# ---- classic PPO and LLM PPO call the same objects ----------------------------------------------------------------

SHARED = {"gae": estimators.ADVANTAGES["gae"], "ppo_clip": policy_losses.POLICY_LOSSES["ppo_clip"],
          "value_loss": policy_losses.value_loss, "aggregate": aggregation.aggregate}


def spy_on_shared_functions(monkeypatch) -> dict[str, int]:
    """Replace each shared function, wherever it is bound (module attributes of posttrain, the registries), by a
    wrapper that counts its calls. A copy of the math in another file would not be counted."""
    calls = dict.fromkeys(SHARED, 0)

    def spy(name, fn):
        def counted(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return counted

    for name, fn in SHARED.items():
        wrapper = spy(name, fn)
        for mod_name, mod in list(sys.modules.items()):
            if mod_name.startswith("posttrain"):
                for attr, value in list(vars(mod).items()):
                    if value is fn:
                        monkeypatch.setattr(mod, attr, wrapper)
        for registry in (estimators.ADVANTAGES, policy_losses.POLICY_LOSSES):
            for key, value in list(registry.items()):
                if value is fn:
                    monkeypatch.setitem(registry, key, wrapper)
    return calls


def test_classic_ppo_and_llm_ppo_reach_the_same_shared_functions(tmp_path, monkeypatch):
    calls = spy_on_shared_functions(monkeypatch)
    assert cli.main(["classic", "ppo", f"output_dir={tmp_path / 'classic'}", "total_steps=512", "eval_episodes=1",
                     "log.progress=false", "ppo.epochs=2"]) == 0
    classic = dict(calls)
    assert all(classic[name] > 0 for name in SHARED), classic
    calls.update(dict.fromkeys(SHARED, 0))
    reward = tmp_path / "my_reward.py"
    reward.write_text("def reward(prompt, completion, **row):\n"
                      "    return sum(c.islower() for c in completion) / max(1, len(completion))\n")
    assert cli.main(["rl", "--algo", "ppo", f"output_dir={tmp_path / 'llm'}", "threads=1", "log.progress=false",
                     "eval.task_accuracy=false", "task.num_train=64", "task.max_digits=1", "sampling.max_new_tokens=8",
                     "rl.prompts_per_step=4", "train.micro_batch_size=4", "train.max_steps=1", "train.lr=1e-5",
                     "reward.verifier=false", f"reward.function={reward}:reward"]) == 0
    assert all(calls[name] > 0 for name in SHARED), calls


# ---- exact resume ----------------------------------------------------------------------------------------------------

def lines(run_dir, after: int) -> list[dict]:
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["step"] > after:
            out.append({k: v for k, v in record.items() if k not in ("time", "sps")})
    return out


def test_ppo_resumed_from_a_checkpoint_continues_exactly(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    # 6 updates of 8 envs × 32 steps; CartPole episodes end inside the run, so the envs' autoreset state matters
    args = ["total_steps=1536", "checkpoint.every=512", "checkpoint.keep_last=10", "eval_every=768",
            "eval_episodes=2", "log.progress=false", "ppo.epochs=4", "ppo.minibatches=2"]
    assert cli.main(["classic", "ppo", f"output_dir={straight}", *args]) == 0
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "final")
    (resumed / "checkpoints" / "latest").write_text(checkpoint.step_dir_name(512))
    assert cli.main(["classic", "ppo", f"output_dir={resumed}", "checkpoint.resume=true", *args]) == 0
    tail = lines(straight, 512)
    assert any("episode/return" in r for r in tail) and any("eval/return" in r for r in tail)
    assert lines(resumed, 512) == tail
    final = [torch.load(d / "checkpoints" / checkpoint.step_dir_name(1536) / "optimizer.pt") for d in
             (straight, resumed)]
    assert all(torch.equal(a, b) for a, b in zip(final[0]["state"][0].values(), final[1]["state"][0].values()))


# ---- a short run learns ----------------------------------------------------------------------------------------------

def test_a_short_ppo_run_beats_a_random_policy_by_far(tmp_path):
    # a uniformly random policy lasts about 22 steps on CartPole-v1; 15k steps of PPO (the lr annealed over them)
    # already reach 500 (seed 0, measured)
    run_cli("classic", "ppo", "--env", "CartPole-v1", f"output_dir={tmp_path}", "total_steps=15000",
            "log.progress=false", check=True)
    summary = json.loads((tmp_path / "final" / "summary.json").read_text())
    assert summary["env_steps"] >= 15000
    assert summary["eval/return"] >= 200, summary


def test_more_minibatches_than_transitions_is_refused(tmp_path):
    config = ClassicConfig(algo="ppo", output_dir=str(tmp_path / "run"), ppo=PPOSection(n_steps=4, minibatches=64),
                           num_envs=2)
    with pytest.raises(ConfigError, match="minibatches"):
        classic.run(config)
    assert not (tmp_path / "run").exists()  # refused before the run directory is made
