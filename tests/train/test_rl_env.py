"""`posttrain rl env.name=…`: a sample is a multi-turn episode. Through the real CLI with a scripted engine that
calls tools (the embedded model never would): the loss sees exactly the model's tokens (the batch's mask is the
trajectory's), the trainer's π_old at those tokens equals an independent forward pass over prompt + trajectory
(the ids line up, nothing re-tokenized), environment metrics are logged, and the run trains."""

import json
import random
import sys
from pathlib import Path

import pytest
import torch

from posttrain import cli
from posttrain.models.tiny import save_tiny
from posttrain.train import rl, rollouts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "envs"))
from test_trajectory import ScriptedEngine  # noqa: E402


@pytest.mark.parametrize("advantage", ["grpo", "turn_grpo"])
def test_episodes_train_on_the_models_tokens_only(tmp_path, monkeypatch, advantage):
    model_dir = save_tiny(tmp_path / "tiny2k", max_position_embeddings=2048)  # room for the tools preamble
    engines, batches = [], []

    def scripted(cfg, model, tokenizer, data):
        engine = ScriptedEngine(tokenizer, random.Random(1))
        engine.sync = lambda m: 0
        engine.close = lambda: None
        engine.reproducible = True
        engines.append(engine)
        return engine

    prepare = rl.prepare

    def recording(cfg, model, reference, critic, tokenizer, rollout, beta):
        batch = prepare(cfg, model, reference, critic, tokenizer, rollout, beta)
        with torch.no_grad():  # π_old of the model's tokens, from one plain forward over prompt + trajectory
            for i in range(len(rollout.completion_ids)):
                ids = rollout.prompt_ids[i] + rollout.completion_ids[i]
                logps = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
                targets = torch.tensor(ids[1:])
                mine = logps.gather(-1, targets[:, None])[:, 0][len(rollout.prompt_ids[i]) - 1:]
                mask = torch.tensor(rollout.token_masks[i], dtype=torch.float)
                width = len(rollout.completion_ids[i])
                assert torch.equal(batch.mask[i, :width], mask) and not batch.mask[i, width:].any()
                torch.testing.assert_close(batch.old_logps[i, :width] * mask, mine * mask, atol=1e-5, rtol=0)
        batch.rollout_turns = rollout.token_turns
        batches.append(batch)
        return batch

    monkeypatch.setattr(rollouts, "rollout_engine", scripted)
    monkeypatch.setattr(rl, "prepare", recording)
    monkeypatch.setattr(rl, "trains_only_nonzero_advantages", lambda *a: False)  # π_old of every sample
    run = tmp_path / "run"
    reward = tmp_path / "parity.py"  # scores the final answer: varied enough for every group to have a signal
    reward.write_text("def reward(prompt, completion, **row):\n    return float(len(completion) % 2)\n")
    assert cli.main(["rl", "reward.verifier=false", f"reward.function={reward}:reward", "--algo", "grpo", f"model.name_or_path={model_dir}", "env.name=calculator",
                     f"output_dir={run}", "train.max_steps=2", "threads=1", "log.progress=false",
                     "eval.task_accuracy=false", "task.num_train=8", "task.max_digits=1", "rl.prompts_per_step=2",
                     "rl.generations=4", "train.micro_batch_size=4", "sampling.max_new_tokens=40",
                     "rl.recompute_old_logprobs=true", "kl.coef=0", "train.lr=1e-3",
                     f"algo.advantage={advantage}"]) == 0
    assert len(batches) == 2
    environment_ids = sum(int(((b.mask == 0) & (torch.arange(b.width) < torch.tensor(
        [len(c) for c in b.completion_ids])[:, None])).sum()) for b in batches)
    assert environment_ids > 0  # tool answers sat inside trajectories and stayed out of the loss
    spread = False
    for b in batches:  # grpo: one advantage per episode; turn_grpo: one per turn, and turns of an episode differ
        for i, turns in enumerate(b.rollout_turns):
            values = {}
            for t, turn in enumerate(turns):
                if turn >= 0:
                    values.setdefault(turn, set()).add(round(float(b.advantages[i, t]), 5))
                else:
                    assert b.advantages[i, t] == 0
            assert all(len(v) == 1 for v in values.values())
            spread |= len({v.pop() for v in values.values()}) > 1
    assert spread == (advantage == "turn_grpo")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["env/turns_mean"] > 1 and last["env/tool_call_rate"] > 0 and "env/tool_errors_mean" in last
    assert any("loss" in r for r in records) and (run / "final" / "model.safetensors").is_file()
