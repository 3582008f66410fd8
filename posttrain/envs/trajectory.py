"""Multi-turn rollouts, token in and token out.

A trajectory is the prompt's ids, then turn after turn: the exact ids the model sampled (mask 1, trained) and the
exact ids appended for the environment's answer (mask 0, never in the loss). The model's text is never
re-tokenized: what the trainer sees at mask 1 is what the sampler drew. The environment's messages are rendered
once, through the model's own chat template, as a delta:

    delta(new messages) = after_turn + render(base + new, generation prompt)[len(render(base)):]

where `base` is a fixed two-message conversation and `after_turn` is what the template writes after an
assistant turn's end-of-turn token (ChatML: "\\n"), which the model's sample stops before. A template whose
rendering of `base` is not a prefix of `base + new` cannot be cut this way: ChatDeltas refuses it (a UserError
saying why). Tools and tool calls are rendered by posttrain.data.chat.render_chat, the same function SFT data
goes through: a template that knows no tools gets them described in a system message (the Hermes format of
tools.py).

    episodes = run_episodes(engine, envs, rows, chat, params, max_turns=4, seed=, step=)

runs many episodes side by side: each turn, one engine call for every live episode (sample k of episode e at
turn t seeded by (seed, step, turn) and e, as in the engine's contract).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from posttrain.data.chat import render_chat, supports_tools
from posttrain.envs.base import Environment
from posttrain.errors import UserError

BASE = [{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}]


class ChatDeltas:
    """The chat template of `tokenizer`, used to render a conversation's start and the deltas of its turns."""

    def __init__(self, tokenizer, tools: list[dict] | None = None):
        self.tokenizer, self.tools = tokenizer, tools or None
        self.native_tools = bool(self.tools) and supports_tools(tokenizer)
        self.eos = tokenizer.eos_token
        self.head = self.render(BASE)  # every delta is cut from behind it
        if self.eos is None or self.eos not in self.head:
            raise UserError("the chat template does not end an assistant turn with the end-of-sequence token "
                            f"{self.eos!r}: multi-turn rollouts cannot tell where the model's turn stops")
        self.after_turn = self.head[self.head.rindex(self.eos) + len(self.eos):]

    def render(self, messages: list[dict], generation_prompt: bool = False) -> str:
        return render_chat(self.tokenizer, messages, self.tools, add_generation_prompt=generation_prompt)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        return self.encode(self.render(messages, generation_prompt=True))

    def delta_ids(self, messages: list[dict]) -> list[int]:
        """The ids that follow the model's end-of-turn token: the rest of its turn as the template writes it,
        `messages`, and the prompt for the model's next turn."""
        full = self.render(BASE + list(messages), generation_prompt=True)
        if not full.startswith(self.head):
            raise UserError("the chat template renders a conversation differently once messages follow it (e.g. "
                            "it rewrites earlier assistant turns), so turns cannot be appended as token deltas — "
                            "fix: use a template that only appends")
        return self.encode(self.after_turn + full[len(self.head):])


@dataclass
class Trajectory:
    prompt_ids: list[int]
    messages: list[dict]                                  # the conversation, as text (for logs and the env)
    ids: list[int] = field(default_factory=list)          # everything after the prompt
    mask: list[int] = field(default_factory=list)         # 1: sampled by the model; 0: the environment's
    logprobs: list[float] = field(default_factory=list)   # the sampler's: of the distribution it drew from (0 at
    #                                                       environment tokens)
    turn_ends: list[int] = field(default_factory=list)    # len(ids) after each model turn
    turn_rewards: list[float | None] = field(default_factory=list)
    tool_calls: int = 0
    tool_errors: int = 0
    answer: str = ""          # the final answer as the environment read it (else the last message's text)
    done: bool = False
    truncated: bool = False   # stopped by a length limit, not by the environment

    def add_model_turn(self, ids: list[int], logprobs: list[float]) -> None:
        self.ids += ids
        self.mask += [1] * len(ids)
        self.logprobs += list(logprobs) if len(logprobs) == len(ids) else [0.0] * len(ids)
        self.turn_ends.append(len(self.ids))

    def add_environment(self, ids: list[int]) -> None:
        self.ids += ids
        self.mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)

    # what the RL loop reads of a generation (rollout/engine.py Generation): the whole trajectory after the prompt
    @property
    def completion_ids(self) -> list[int]:
        return self.ids

    @property
    def sampling_logprobs(self) -> list[float]:
        return self.logprobs

    @property
    def finish_reason(self) -> str:
        return "length" if self.truncated else "stop"

    @property
    def turns(self) -> int:
        return len(self.turn_ends)

    @property
    def token_turns(self) -> list[int]:
        """The model turn (0, 1, …) of each id after the prompt; −1 at the environment's ids."""
        out, turn = [], 0
        for i, m in enumerate(self.mask):
            while turn < len(self.turn_ends) and i >= self.turn_ends[turn]:
                turn += 1
            out.append(turn if m else -1)
        return out

    @property
    def reward(self) -> float | None:
        scored = [r for r in self.turn_rewards if r is not None]
        return sum(scored) if scored else None


def run_episodes(engine, envs: list[Environment], rows: list[dict], chat: ChatDeltas, params, *,
                 max_turns: int = 4, max_tokens: int = 1024, seed: int = 0, step: int = 0,
                 episode_ids: list[int] | None = None) -> list[Trajectory]:
    """One episode per (env, row), side by side; `params` (SamplingParams) for every model turn, n = 1.
    An episode ends when its environment says done, when the model's turn hits max_new_tokens, after
    `max_turns` model turns, or when the trajectory would pass `max_tokens` ids after the prompt."""
    episode_ids = list(range(len(rows))) if episode_ids is None else episode_ids
    eos = chat.tokenizer.eos_token_id
    trajectories = []
    for env, row in zip(envs, rows):
        messages = env.reset(row)
        trajectories.append(Trajectory(chat.prompt_ids(messages), messages))
    for turn in range(max_turns):
        live = [i for i, t in enumerate(trajectories) if not t.done]
        if not live:
            break
        room = min(params.max_new_tokens, max(1, max_tokens - max(len(trajectories[i].ids) for i in live)))
        generations = engine.generate([trajectories[i].prompt_ids + trajectories[i].ids for i in live],
                                      replace(params, n=1, max_new_tokens=room),
                                      seed=seed, step=f"{step}/turn{turn}",
                                      example_ids=[episode_ids[i] for i in live])
        for i, generation in zip(live, generations):
            t, ids = trajectories[i], list(generation.completion_ids)
            t.add_model_turn(ids, generation.sampling_logprobs or generation.logprobs)  # what was sampled from
            text = chat.tokenizer.decode([x for x in ids if x != eos], skip_special_tokens=True)
            message = {"role": "assistant", "content": text}
            t.messages.append(message)
            if generation.finish_reason == "length" or (ids and ids[-1] != eos) or not ids:
                t.done = t.truncated = True
                t.answer = text
                continue
            result = envs[i].step(message)
            t.turn_rewards.append(result.reward)
            t.tool_calls += result.info.get("tool_calls", 0)
            t.tool_errors += result.info.get("tool_errors", 0)
            if result.done:
                t.done = True
                t.answer = result.info.get("answer", text)
            else:
                t.messages += result.messages
                t.add_environment(chat.delta_ids(result.messages))
                if len(t.ids) >= max_tokens:
                    t.done = t.truncated = True
    for t in trajectories:
        if not t.done:  # out of turns
            t.truncated, t.answer = True, t.messages[-1]["content"] if t.messages[-1]["role"] == "assistant" else ""
    return trajectories


__all__ = ["ChatDeltas", "Trajectory", "run_episodes"]
