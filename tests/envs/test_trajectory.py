"""Token in, token out (envs/trajectory.py): across 100 scripted multi-turn episodes on two chat templates the ids
at mask 1 are exactly the ids the engine returned, each model turn was sampled from exactly the trajectory so far,
the environment's ids are at mask 0, and the trajectory decodes to the template's rendering of the whole
conversation — so no token was re-tokenized and nothing was lost at a turn boundary."""

import random

import pytest

from conftest import CHATML_TOOLS, ReplyEngine, random_turns

from posttrain.envs import ChatDeltas, ToolEnv, run_episodes
from posttrain.errors import UserError
from posttrain.models.loading import load_tokenizer
from posttrain.models.tiny import tiny_path
from posttrain.rollout import SamplingParams

def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: the first
        b: the second
    """
    return a + b


def tokenizer_with(template):
    tokenizer = load_tokenizer(str(tiny_path()))
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


@pytest.mark.parametrize("template", [None, CHATML_TOOLS], ids=["tiny-template", "chatml-tools"])
def test_trained_ids_are_the_sampled_ids_and_the_mask_marks_them(template):
    tokenizer = tokenizer_with(template)
    env_of = lambda: ToolEnv([add], score=lambda row, answer: float(str(row["answer"]) in answer), max_tool_turns=3)
    chat = ChatDeltas(tokenizer, env_of().schemas())
    assert chat.native_tools == (template is not None)
    engine = ReplyEngine(tokenizer, random_turns(tokenizer, random.Random(0)))
    rows = [{"prompt": f"What is {a} + {b}?", "answer": a + b} for a, b in [(i, 2 * i) for i in range(50)]]
    envs = [env_of() for _ in rows]
    episodes = run_episodes(engine, envs, rows, chat, SamplingParams(max_new_tokens=40), max_turns=5)

    clean = 0
    for e, t in enumerate(episodes):
        sampled = [x for turn in engine.given[e] for x in turn]
        assert [x for x, m in zip(t.ids, t.mask) if m] == sampled          # the trained ids are the sampled ones
        assert len(t.ids) == len(t.mask) == len(t.logprobs)
        turns = [x for x in engine.given[e]]
        start = 0
        for turn_ids, end in zip(turns, t.turn_ends):  # each model turn sits where it was sampled, whole
            assert t.ids[end - len(turn_ids):end] == turn_ids and all(t.mask[end - len(turn_ids):end])
            assert not any(t.mask[start:end - len(turn_ids)])  # what came before it was the environment's
            start = end
        asked = [prompt for episode, prompt in engine.asked if episode == e]
        assert asked == [t.prompt_ids + t.ids[:end - len(turn)] for turn, end in zip(turns, t.turn_ends)]
        if all(tokenizer.decode(turn[:-1]) == m["content"] for turn, m in
               zip(turns, [m for m in t.messages if m["role"] == "assistant"])) and not t.truncated:
            # a clean episode decodes to exactly the template's rendering of its whole conversation (which goes
            # on past the model's last end-of-turn token, where the episode stops)
            assert tokenizer.decode(t.prompt_ids + t.ids) + chat.after_turn == chat.render(t.messages)
            clean += 1
    assert clean >= 10 and sum(len(engine.given[e]) > 1 for e in range(len(rows))) >= 20
    assert sum(t.tool_errors for t in episodes) > 0 and sum(t.tool_calls for t in episodes) > 0


def test_a_template_that_rewrites_earlier_turns_is_refused():
    rewriting = ("{% for m in messages %}{% if loop.last %}{{ m['role'] + ':' + m['content'] + eos_token }}"
                 "{% else %}{{ m['role'] + eos_token }}{% endif %}{% endfor %}")
    chat = ChatDeltas(tokenizer_with(rewriting))
    with pytest.raises(UserError, match="cannot be appended as token deltas"):
        chat.delta_ids([{"role": "user", "content": "more"}])


def test_a_real_model_samples_the_turns(tmp_path):
    """The built-in engine on the embedded model: its sampled ids and log-probs land at mask 1 unchanged."""
    from transformers import AutoModelForCausalLM

    from posttrain.rollout import HFEngine
    tokenizer = tokenizer_with(None)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_path())).eval()
    engine = HFEngine(model, [tokenizer.eos_token_id], tokenizer.pad_token_id)
    seen = []
    generate = engine.generate

    def recording(prompts, params, **kw):
        out = generate(prompts, params, **kw)
        seen.extend(out)
        return out

    engine.generate = recording
    env = ToolEnv([add], score=lambda row, answer: 0.0)
    episodes = run_episodes(engine, [env], [{"prompt": "1+2="}], ChatDeltas(tokenizer, env.schemas()),
                            SamplingParams(temperature=1.0, max_new_tokens=16), seed=3)
    t = episodes[0]
    assert [x for x, m in zip(t.ids, t.mask) if m] == [x for g in seen for x in g.completion_ids]
    assert [lp for lp, m in zip(t.logprobs, t.mask) if m] == [lp for g in seen for lp in g.sampling_logprobs]
