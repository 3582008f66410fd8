"""Tool-use demonstrations (envs/builtin.demonstrations): played through the environment itself, and — the point of
a warm start — SFT on one trains exactly the tokens an episode of the same environment samples: the SFT example's
ids are the episode's prompt + trajectory ids, its trained tokens are the episode's model tokens (mask 1)."""

import pytest

from conftest import CHATML_TOOLS, ReplyEngine, needs_smollm2, smollm2_home

from posttrain.data import IGNORE_INDEX, normalize, tokenize_sft
from posttrain.envs.builtin import calculator, demonstrations, environment
from posttrain.envs.trajectory import run_episodes
from posttrain.errors import UserError
from posttrain.models.loading import load_tokenizer
from posttrain.models.tiny import tiny_path
from posttrain.rollout import SamplingParams
from posttrain.tasks import get


def test_demonstrations_are_played_through_the_environment():
    task = get("word")
    rows = task.tool_rows("train", 40)
    for row, demo in zip(rows, demonstrations("calculator", rows, max_turns=4)):
        messages = demo["messages"]
        assert [m["role"] for m in messages[:2]] == ["system", "user"] and demo["tools"][0]["function"]["name"] == \
            "calculator"
        calls = [m["tool_calls"][0]["function"]["arguments"]["expression"] for m in messages if m.get("tool_calls")]
        results = [m["content"] for m in messages if m["role"] == "tool"]
        assert len(calls) == len(results) == (2 if row["level"] == 5 else 1)
        assert results == [calculator(c) for c in calls] and results[-1] == row["answer"]  # the tool's own answers
        assert task.score(row["prompt"], messages[-1]["content"], answer=row["answer"]) == 1.0
    with pytest.raises(UserError, match="env.max_turns=3"):
        demonstrations("calculator", [r for r in rows if r["level"] == 5][:1], max_turns=2)
    with pytest.raises(UserError, match="call search, a tool env.name=calculator does not offer .* env.name=search"):
        demonstrations("calculator", get("lookup").tool_rows("train", 1), max_turns=4)


def tokenizer_for(kind):
    if kind == "smollm2":
        from posttrain.models.gguf import NAMED_MODELS
        home = smollm2_home()
        return load_tokenizer(str(home / "models" / f"gguf-{NAMED_MODELS['smollm2-135m-instruct'].sha256[:16]}"))
    tokenizer = load_tokenizer(str(tiny_path()))
    if kind == "chatml-tools":
        tokenizer.chat_template = CHATML_TOOLS
    return tokenizer


def trained_turns(example) -> list[list[int]]:
    """The runs of trained ids of an SFT example (one per assistant turn)."""
    turns, run = [], []
    for token, label in zip(example["input_ids"], example["labels"] + [IGNORE_INDEX]):
        if label != IGNORE_INDEX:
            run.append(token)
        elif run:
            turns, run = turns + [run], []
    return turns


@pytest.mark.parametrize("kind", ["tiny", "chatml-tools", pytest.param("smollm2", marks=needs_smollm2)])
@pytest.mark.parametrize("name, task", [("calculator", "word"), ("search", "lookup"), ("code", "code")])
def test_sft_on_a_demonstration_trains_exactly_what_an_episode_samples(kind, name, task):
    tokenizer = tokenizer_for(kind)
    rows = get(task).tool_rows("train", 12)
    examples = [tokenize_sft(row, tokenizer) for row in normalize(demonstrations(name, rows, max_turns=4),
                                                                  kind="sft").rows]
    replies = [[turn[:-1] for turn in trained_turns(e)] for e in examples]  # each turn without its eos
    engine = ReplyEngine(tokenizer, lambda text, episode: replies[episode][len(engine.given.get(episode, []))])
    make, chat = environment(name, tokenizer, rows[0], max_turns=4, timeout=10.0)
    episodes = run_episodes(engine, [make(row) for row in rows], rows, chat, SamplingParams(max_new_tokens=400),
                            max_turns=4, max_tokens=4000)
    for example, episode, row in zip(examples, episodes, rows):
        assert episode.done and not episode.truncated and episode.answer == row["final"]
        ids, labels, n = example["input_ids"], example["labels"], len(episode.prompt_ids)
        # the SFT text goes on past the last end-of-turn token, where the episode stops
        assert ids == episode.prompt_ids + episode.ids + chat.encode(chat.after_turn)
        assert all(label == IGNORE_INDEX for label in labels[:n])
        assert [int(label != IGNORE_INDEX) for label in labels[n:n + len(episode.ids)]] == episode.mask
