"""REINFORCE and A2C (posttrain/classic/pg.py): returns-to-go by hand through the function REINFORCE uses, the
baseline switch, exact resume, and short runs through the CLI that must beat a random policy by far."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from posttrain import checkpoint, cli
from posttrain.classic import pg


def test_returns_to_go_by_hand():
    # the function REINFORCE calls, reached through pg's own reference to it
    returns = pg.estimators.discounted_returns
    rewards, mask = torch.tensor([[4.0, 3.0, 5.0, 2.0]]), torch.ones(1, 4)
    torch.testing.assert_close(returns(rewards, mask, 1.0), torch.tensor([[14.0, 10.0, 7.0, 2.0]]))
    torch.testing.assert_close(returns(rewards, mask, 0.5), torch.tensor([[7.0, 6.0, 6.0, 2.0]]))
    # two episodes of different lengths in one padded batch, as REINFORCE lays them out: padding stays 0
    episodes = pg.pad([torch.tensor([4.0, 3.0, 5.0, 2.0]), torch.tensor([1.0, 1.0])])
    lengths = pg.pad([torch.ones(4), torch.ones(2)])
    torch.testing.assert_close(returns(episodes, lengths, 1.0), torch.tensor([[14.0, 10, 7, 2], [2, 1, 0, 0]]))


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("baseline", [True, False])
def test_reinforce_learns_the_baseline_only_when_asked(tmp_path, baseline):
    assert cli.main(["classic", "reinforce", f"output_dir={tmp_path}", "total_steps=300", "eval_episodes=1",
                     "log.progress=false", f"pg.baseline={str(baseline).lower()}"]) == 0
    train = [r for r in records(tmp_path) if "policy_loss" in r]
    assert train and all(("value_loss" in r) == baseline for r in train)
    weights = load_file(str(tmp_path / "final" / "agent.safetensors"))
    torch.manual_seed(0)  # the run's seed: the same initial weights; the critic moves only with a baseline
    initial = pg.Agent(4, 2, 64)
    critic_moved = not torch.equal(weights["critic.0.weight"], initial.state_dict()["critic.0.weight"])
    assert critic_moved == baseline


def tail(run_dir, after: int) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("time", "sps")} for r in records(run_dir) if r["step"] > after]


@pytest.mark.parametrize("algo, total, every", [("a2c", 1280, 320), ("reinforce", 1200, 400)])
def test_resumed_from_a_checkpoint_continues_exactly(tmp_path, algo, total, every):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = [f"total_steps={total}", f"checkpoint.every={every}", "checkpoint.keep_last=10", "eval_episodes=2",
            f"eval_every={every * 2}", "log.progress=false"]
    assert cli.main(["classic", algo, f"output_dir={straight}", *args]) == 0
    saved = sorted(p.name for p in (straight / "checkpoints").glob("step_*"))
    assert len(saved) >= 3
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "final")
    (resumed / "checkpoints" / "latest").write_text(saved[0])
    at = json.loads((resumed / "checkpoints" / saved[0] / "state.json").read_text())["step"]
    assert cli.main(["classic", algo, f"output_dir={resumed}", "checkpoint.resume=true", *args]) == 0
    expected = tail(straight, at)
    assert any("episode/return" in r for r in expected) and any("eval/return" in r for r in expected)
    assert tail(resumed, at) == expected
    assert checkpoint.latest(resumed).name == saved[-1]


# ---- short runs learn ------------------------------------------------------------------------------------------------

def summary(run_dir) -> dict:
    return json.loads((run_dir / "final" / "summary.json").read_text())


@pytest.mark.parametrize("algo, steps, threshold", [("reinforce", 20_000, 200), ("a2c", 40_000, 200)])
def test_a_short_run_beats_a_random_policy_by_far(tmp_path, algo, steps, threshold):
    # a uniformly random policy lasts about 22 steps on CartPole-v1; measured (seed 0): REINFORCE 494, A2C 470.5
    run_cli("classic", algo, "--env", "CartPole-v1", f"output_dir={tmp_path}", f"total_steps={steps}",
            "log.progress=false", check=True)
    assert summary(tmp_path)["eval/return"] >= threshold, summary(tmp_path)
