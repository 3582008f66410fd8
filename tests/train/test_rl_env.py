"""`posttrain rl env.name=…`: a sample is a multi-turn episode. Through the real CLI with a scripted engine that
calls tools (the embedded model never would): the loss sees exactly the model's tokens (the batch's mask is the
trajectory's), the trainer's π_old at those tokens equals an independent forward pass over prompt + trajectory
(the ids line up, nothing re-tokenized), environment metrics are logged, and the run trains."""

import json
import random

import pytest
import torch

from conftest import ReplyEngine, random_turns
from posttrain.data.chat import tool_call_text
from posttrain import cli, presets
from posttrain.models.tiny import save_tiny
from posttrain.train import rl, rollouts


@pytest.mark.parametrize("advantage", ["grpo", "turn_grpo"])
def test_episodes_train_on_the_models_tokens_only(tmp_path, monkeypatch, advantage):
    model_dir = save_tiny(tmp_path / "tiny2k", max_position_embeddings=2048)  # room for the tools preamble
    engines, batches = [], []

    def scripted(cfg, model, tokenizer, data):
        engines.append(ReplyEngine(tokenizer, random_turns(tokenizer, random.Random(1))))
        return engines[-1]

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


def coding(tool_answers: list):
    """A reply for ReplyEngine: first run a program through the run_python tool (its answer is kept in
    `tool_answers`), then answer with a function."""
    def reply(text, episode):
        if "<|tool|>" in text:
            tool_answers.append(text.rsplit("<|tool|>", 1)[-1])
            return "Done.\n```python\ndef add(a, b):\n    return a + b\n```"
        return '<tool_call>{"name": "run_python", "arguments": {"code": "print(6 * 7)"}}</tool_call>'
    return reply


def test_the_code_environment_runs_the_sandbox_in_the_loop_and_leaves_no_process(tmp_path, monkeypatch):
    import psutil
    model_dir = save_tiny(tmp_path / "tiny4k", max_position_embeddings=4096)
    tool_answers = []
    monkeypatch.setattr(rollouts, "rollout_engine",
                        lambda cfg, model, tokenizer, data: ReplyEngine(tokenizer, coding(tool_answers)))
    run = tmp_path / "run"
    assert cli.main(["rl", "--algo", "grpo", f"model.name_or_path={model_dir}", "env.name=code", "task.name=code",
                     f"output_dir={run}", "train.max_steps=1", "threads=1", "log.progress=false",
                     "eval.task_accuracy=false", "rl.prompts_per_step=2", "rl.generations=2",
                     "train.micro_batch_size=2", "sampling.max_new_tokens=128", "env.max_tokens=512"]) == 0
    assert tool_answers and all("42" in a for a in tool_answers)  # the sandbox ran it
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["env/turns_mean"] == 2 and record["env/tool_call_rate"] == 1 and record["env/tool_errors_mean"] == 0
    assert "reward/mean" in record  # the answers were scored by the hidden tests
    assert not psutil.Process().children(recursive=True)


@pytest.fixture(scope="module")
def tiny2k(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny2k"), max_position_embeddings=2048)


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_every_preset_trains_on_episodes(tmp_path, monkeypatch, tiny2k, name):
    """One step of each preset on calculator episodes (a scripted engine that calls tools); remax, whose baseline
    is a greedy single-turn completion, is refused before the run."""
    def scripted(cfg, model, tokenizer, data):
        return ReplyEngine(tokenizer, random_turns(tokenizer, random.Random(2)))

    monkeypatch.setattr(rollouts, "rollout_engine", scripted)
    reward = tmp_path / "parity.py"
    reward.write_text("def reward(prompt, completion, **row):\n    return float(len(completion) % 2)\n")
    run = tmp_path / "run"
    code = cli.main(["rl", "--algo", name, f"model.name_or_path={tiny2k}", "env.name=calculator", f"output_dir={run}",
                     "train.max_steps=1", "threads=1", "log.progress=false", "eval.task_accuracy=false",
                     "task.num_train=8", "task.max_digits=1", "rl.prompts_per_step=2", "rl.generations=2",
                     "train.micro_batch_size=2", "sampling.max_new_tokens=40", "train.lr=1e-3",
                     "reward.verifier=false", f"reward.function={reward}:reward"])
    if name == "remax":
        assert code == 2 and not run.exists()
        return
    assert code == 0 and (run / "final" / "model.safetensors").is_file()
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["env/turns_mean"] >= 1 and "reward/mean" in record


def test_sft_on_tool_demonstrations_then_rl_with_the_same_environment(tmp_path):
    """The warm start a user runs before RL with tools: `posttrain sft env.name=calculator` trains on the word
    task's demonstrations (system + tools, tool calls, tool results, answer), and `posttrain rl` continues its
    output with the same environment; the SFT run's examples are the demonstrations (their count and length)."""
    model_dir = save_tiny(tmp_path / "tiny2k", max_position_embeddings=2048)
    sft_run, rl_run = tmp_path / "sft", tmp_path / "rl"
    assert cli.main(["sft", f"model.name_or_path={model_dir}", "task.name=word", "env.name=calculator",
                     "task.num_train=8", "task.num_eval=4", "train.max_steps=2", "train.micro_batch_size=4",
                     f"output_dir={sft_run}", "threads=1", "log.progress=false"]) == 0
    records = [json.loads(line) for line in (sft_run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and "eval/accuracy" not in records[-1]  # single-turn accuracy is not measured
    assert cli.main(["rl", "--algo", "grpo", f"model.name_or_path={sft_run / 'final'}", "task.name=word",
                     "env.name=calculator", "task.num_train=4", "rl.prompts_per_step=2", "rl.generations=2",
                     "train.micro_batch_size=4", "train.max_steps=1", "sampling.max_new_tokens=16",
                     "eval.task_accuracy=false", f"output_dir={rl_run}", "threads=1", "log.progress=false"]) == 0
    assert "env/turns_mean" in (rl_run / "metrics.jsonl").read_text()


@pytest.mark.parametrize("args", [["task.name=arith", "env.name=calculator"],    # arith has no tool rows
                                  ["task.name=word", "env.name=calculator", "data.train_path=DATA"]])
def test_sft_with_an_environment_it_cannot_demonstrate_is_refused(tmp_path, args, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "1+1=", "completion": "2"}\n')
    run = tmp_path / "run"
    code = cli.main(["sft", *[a.replace("DATA", str(data)) for a in args], f"output_dir={run}", "threads=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "fix: e.g. task.name=word env.name=calculator" in err[0]
    assert not run.exists()


def test_progress_rewards_land_on_the_turns_that_earned_them(tmp_path, monkeypatch, tiny2k):
    """env.progress_reward=0.5 on the word task: a scripted policy that, in even episodes, makes each of the
    problem's calculator calls and answers right, and in odd ones answers 0 at once. The rollout's per-turn
    rewards are 0.5 on each call that found a new value and the verifier's 1 on the answer ([0.5, 0.5, 1.0] for
    a two-step problem), or [0.0]; env/env_reward_mean and env/reward_per_turn are logged from them."""
    from posttrain.tasks.word import WordTask
    rows = WordTask().tool_rows("train", 4)

    def reply(text, episode):
        row = next(r for r in rows if r["prompt"] in text)
        done = text.split(row["prompt"], 1)[1].count('"name": "calculator"')
        if episode % 2 or done == len(row["calls"]):
            return row["final"] if episode % 2 == 0 else "The answer is 0."
        return tool_call_text(row["calls"][done][0])

    rollouts_seen = []
    prepare = rl.prepare

    def recording(cfg, model, reference, critic, tokenizer, rollout, beta):
        rollouts_seen.append(rollout)
        return prepare(cfg, model, reference, critic, tokenizer, rollout, beta)

    monkeypatch.setattr(rollouts, "rollout_engine", lambda cfg, model, tokenizer, data: ReplyEngine(tokenizer, reply))
    monkeypatch.setattr(rl, "prepare", recording)
    run = tmp_path / "run"
    assert cli.main(["rl", "--algo", "grpo", "algo.advantage=turn_grpo", f"model.name_or_path={tiny2k}",
                     "task.name=word", "task.num_train=4", "env.name=calculator", "env.progress_reward=0.5",
                     f"output_dir={run}", "train.max_steps=1", "threads=1", "log.progress=false",
                     "eval.task_accuracy=false", "rl.prompts_per_step=4", "rl.generations=2",
                     "train.micro_batch_size=4", "sampling.max_new_tokens=128", "env.max_tokens=1024"]) == 0
    (rollout,) = rollouts_seen
    by_prompt = {r["prompt"]: r for r in rows}
    for row, turns in zip(rollout.rows, rollout.turn_rewards):
        calls = by_prompt[row["prompt"]]["calls"]
        assert turns in ([0.0], [0.5] * len(set(row["values"])) + [1.0]), (row, turns)
        assert len(turns) in (1, len(calls) + 1)
    assert sorted(len(t) > 1 for t in rollout.turn_rewards) == [False] * 4 + [True] * 4
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    env_rewards = [sum(t) - t[-1] for t in rollout.turn_rewards]
    assert record["env/env_reward_mean"] == pytest.approx(sum(env_rewards) / 8)
    assert record["env/reward_per_turn"] == pytest.approx(sum(map(sum, rollout.turn_rewards))
                                                          / sum(map(len, rollout.turn_rewards)))


def test_the_trained_prompt_is_the_one_each_episode_sampled_from(tmp_path, monkeypatch, tiny2k):
    """An environment whose first messages vary per episode (here a counter in the system message, as a randomly
    drawn task or seed would): the prompt the trainer scores each sample with is the prompt its episode was
    sampled from — not the rendering made when the prompts were loaded."""
    env_file = tmp_path / "varying.py"
    env_file.write_text("import itertools\nfrom posttrain.envs import ToolEnv\ncount = itertools.count()\n\n"
                        "class Varying(ToolEnv):\n    def reset(self, row):\n"
                        "        self.system = f'Episode {next(count)}.'\n        return super().reset(row)\n\n"
                        "def make(row):\n    return Varying([], score=None)\n")
    engines, rollouts_seen = [], []

    def scripted(cfg, model, tokenizer, data):
        engines.append(ReplyEngine(tokenizer, lambda text, episode: f"The answer is {episode % 3}."))
        return engines[-1]

    prepare = rl.prepare

    def recording(cfg, model, reference, critic, tokenizer, rollout, beta):
        rollouts_seen.append(rollout)
        return prepare(cfg, model, reference, critic, tokenizer, rollout, beta)

    monkeypatch.setattr(rollouts, "rollout_engine", scripted)
    monkeypatch.setattr(rl, "prepare", recording)
    assert cli.main(["rl", "--algo", "grpo", f"model.name_or_path={tiny2k}", f"env.name={env_file}:make",
                     f"output_dir={tmp_path / 'run'}", "train.max_steps=1", "threads=1", "log.progress=false",
                     "eval.task_accuracy=false", "task.num_train=4", "task.max_digits=1", "rl.prompts_per_step=2",
                     "rl.generations=2", "train.micro_batch_size=4", "sampling.max_new_tokens=24"]) == 0
    (rollout,) = rollouts_seen
    sampled_from = sorted(tuple(ids) for _, ids in engines[0].asked)  # one turn each: the episode's prompt
    assert len(set(sampled_from)) == 4 and sorted(map(tuple, rollout.prompt_ids)) == sampled_from
