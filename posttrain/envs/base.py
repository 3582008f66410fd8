"""The environment contract (DESIGN §3 "Environments") and the environment most tool use needs.

    messages = env.reset(row)                     # the conversation an episode starts from (system, user, …)
    step = env.step(assistant_message)            # Step(messages, reward | None, done, info)

`step.messages` are the environment's answer — tool results ({"role": "tool", …}) or a user turn — appended to
the conversation after the model's message; `reward` is this turn's (None: not scored yet; the episode's reward
is the sum of its turns' rewards). One environment object serves one episode; `make(row)` builders give a fresh
one per episode, so episodes run side by side.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Callable, Protocol

from posttrain.envs.tools import ToolCall, call_tools, is_error, parse_tool_calls, tool_schema


@dataclass
class Step:
    messages: list[dict]
    reward: float | None = None
    done: bool = False
    info: dict = field(default_factory=dict)


class Environment(Protocol):
    tools: list[Callable]  # offered to the model through the chat template ([] for none)

    def reset(self, row: dict) -> list[dict]: ...

    def step(self, message: dict) -> Step: ...


class ToolEnv:
    """A question, tools, and a verifier of the final answer. Each assistant turn either calls tools — every
    call is run (concurrently, with a timeout) and answered with a tool message, errors included — or answers:
    then the episode ends and `score(row, answer)` is its reward. After `max_tool_turns` turns of calls the next
    message is taken as the answer whatever it holds. score=None: the final step's reward is None, and the RL loop
    scores the answer with the run's reward sources.

    progress_reward > 0 rewards the tool turns themselves (a process reward, for per-turn credit): a turn earns
    progress_reward for each value the solution needs — row["values"], else row["answer"] — that its tool results
    show, as a whole number or word, for the first time in the episode, where the call's own arguments do not
    already hold it (calculator("72") earns nothing). Tool turns earn None when progress_reward is 0.

    info per step: {"tool_calls": n, "tool_errors": n} (malformed calls count as errors); the last step's also
    {"answer": the message without its tool calls}."""

    def __init__(self, tools: list[Callable], score: Callable[[dict, str], float | None] | None, *,
                 system: str | None = None, max_tool_turns: int = 4, timeout: float = 10.0,
                 progress_reward: float = 0.0):
        self.tools, self.score, self.system = list(tools), score, system
        self.max_tool_turns, self.timeout, self.progress_reward = max_tool_turns, timeout, progress_reward
        self.by_name = {fn.__name__: fn for fn in self.tools}
        self.row: dict = {}
        self.tool_turns = 0
        self.shown: set[str] = set()

    def reset(self, row: dict) -> list[dict]:
        self.row, self.tool_turns, self.shown = row, 0, set()
        prompt = row["prompt"]
        messages = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        return ([{"role": "system", "content": self.system}] if self.system else []) + messages

    def step(self, message: dict) -> Step:
        turn = parse_tool_calls(message["content"])
        if (turn.calls or turn.errors) and self.tool_turns < self.max_tool_turns:
            self.tool_turns += 1
            answers = call_tools(turn.calls, self.by_name, self.timeout) + [f"error: {e}" for e in turn.errors]
            names = [c.name for c in turn.calls] + ["invalid"] * len(turn.errors)
            return Step([{"role": "tool", "name": n, "content": a} for n, a in zip(names, answers)],
                        reward=self.progress(turn.calls, answers) if self.progress_reward else None,
                        info={"tool_calls": len(answers), "tool_errors": sum(map(is_error, answers))})
        return Step([], reward=None if self.score is None else self.score(self.row, turn.content), done=True,
                    info={"tool_calls": 0, "tool_errors": 0, "answer": turn.content})

    def progress(self, calls: list[ToolCall], results: list[str]) -> float:
        """progress_reward × the needed values these tool results show for the first time in the episode:
        values ["72", "63"], calculator("12 * 6") → "72" earns 1 × progress_reward; the same call again, or
        calculator("72") → "72", earns 0. Results past len(calls) answer malformed calls: they show nothing."""
        needed = [str(v) for v in (self.row.get("values") or [self.row.get("answer")]) if v is not None]

        def shows(value: str, text: str) -> bool:
            return re.search(rf"(?<![\w.]){re.escape(value)}(?!\w|\.\d)", text) is not None

        new = {v for v in needed for call, result in zip(calls, results)
               if v not in self.shown and shows(v, result) and not shows(v, json.dumps(call.arguments))}
        self.shown |= new
        return self.progress_reward * len(new)

    def schemas(self) -> list[dict]:
        return [tool_schema(fn) for fn in self.tools]


__all__ = ["Environment", "Step", "ToolEnv"]
