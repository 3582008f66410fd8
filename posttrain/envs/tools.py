"""Tools: plain Python functions the model may call, their JSON schemas, the calls parsed out of its messages,
and their concurrent execution.

    schema = tool_schema(fn)                 # the JSON schema chat templates take (tools=[...])
    turn = parse_tool_calls(text)            # ParsedTurn(content, calls, errors)
    results = call_tools(turn.calls, tools)  # one tool message per call, errors included, in call order

A tool is a function with type hints and a Google-style docstring (`Args:`); its schema comes from
transformers.utils.get_json_schema, the function transformers' chat templates are built around.

Call format (Hermes, used by Qwen 2/2.5/3, ChatML fine-tunes and SmolLM2's tool data): each call is a JSON object
{"name": …, "arguments": {…}} between <tool_call> and </tool_call>; the text outside the tags is the message's
content. Llama-3 style — the whole message one JSON object {"name": …, "parameters": {…}} — is read too. A call
that cannot be read (bad JSON, no name, arguments not an object, an unclosed tag, an unknown tool) is not
dropped: it becomes an error that goes back to the model as a tool message and is counted (`tools/errors`).

Execution: the calls of many samples run concurrently, a daemon thread each, with one wall-clock timeout; a tool
that raises or runs out of time answers "error: …". A thread cannot be killed — a hung one is abandoned (as a
daemon it does not keep the process alive) — so a tool that may hang or that runs model-written code must run
in the sandbox (posttrain.sandbox), which kills the whole process group.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

TOOL_CALL = re.compile(r"<tool_call>(.*?)(</tool_call>|$)", re.S)


@dataclass
class ToolCall:
    name: str
    arguments: dict


@dataclass
class ParsedTurn:
    content: str                                       # the message without its tool calls
    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)    # one line per call that could not be read


def tool_schema(fn: Callable) -> dict:
    """{"type": "function", "function": {"name", "description", "parameters"}} from `fn`'s type hints and
    docstring (transformers.utils.get_json_schema: every argument needs a type hint and an `Args:` line)."""
    from transformers.utils import get_json_schema
    return get_json_schema(fn)


def parse_tool_calls(text: str) -> ParsedTurn:
    """The tool calls in an assistant message.

    Example:
        >>> t = parse_tool_calls('Let me add. <tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>')
        >>> t.content, t.calls, t.errors
        ('Let me add.', [ToolCall(name='add', arguments={'a': 1, 'b': 2})], [])
        >>> parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": 1</tool_call>').errors
        ["tool call 1 is not valid JSON (Expecting ',' delimiter at character 36)"]
        >>> parse_tool_calls('{"name": "add", "parameters": {"a": 1, "b": 2}}').calls   # Llama-3 style
        [ToolCall(name='add', arguments={'a': 1, 'b': 2})]
    """
    turn = ParsedTurn(content=TOOL_CALL.sub("", text).strip())
    bodies = [(m.group(1), bool(m.group(2))) for m in TOOL_CALL.finditer(text)]
    if not bodies and text.strip().startswith("{") and '"name"' in text:  # Llama-3: the message is the call
        bodies, turn.content = [(text.strip(), True)], ""
    for k, (body, closed) in enumerate(bodies, 1):
        if not closed:
            turn.errors.append(f"tool call {k} has no closing </tool_call>")
            continue
        try:
            call = json.loads(body)
        except json.JSONDecodeError as e:
            turn.errors.append(f"tool call {k} is not valid JSON ({e.msg} at character {e.pos})")
            continue
        arguments = call.get("arguments", call.get("parameters", {})) if isinstance(call, dict) else None
        if isinstance(arguments, str):  # some models write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            turn.errors.append(f'tool call {k} has no "name"')
        elif not isinstance(arguments, dict):
            turn.errors.append(f'tool call {k} ({call["name"]}): "arguments" must be a JSON object')
        else:
            turn.calls.append(ToolCall(call["name"], arguments))
    return turn


def call_tool(call: ToolCall, tools: dict[str, Callable]) -> str:
    """One call → the text of its tool message; any failure is answered, not raised."""
    if call.name not in tools:
        return f"error: no tool named {call.name!r}; the tools are: {', '.join(sorted(tools))}"
    try:
        return str(tools[call.name](**call.arguments))
    except TypeError as e:  # wrong or missing arguments
        return f"error: {call.name}: {e}"
    except Exception as e:  # the tool's own failure goes back to the model
        return f"error: {call.name} failed: {type(e).__name__}: {e}"


def call_tools(calls: list[ToolCall], tools: dict[str, Callable], timeout: float = 10.0) -> list[str]:
    """Run `calls` concurrently (all samples' calls of a turn at once), one daemon thread each; each answer in
    call order, an error line where a call raised or took longer than `timeout` seconds. A call still running
    then is abandoned: its thread is a daemon, so it never holds up the end of the run."""
    answers: list[str | None] = [None] * len(calls)

    def work(k: int, call: ToolCall) -> None:
        answers[k] = call_tool(call, tools)

    threads = [threading.Thread(target=work, args=(k, call), daemon=True, name=f"posttrain-tool-{call.name}")
               for k, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [answer if answer is not None else f"error: {call.name} took longer than {timeout:g} s"
            for call, answer in zip(calls, answers)]


def is_error(answer: str) -> bool:
    return answer.startswith("error: ")


__all__ = ["ParsedTurn", "ToolCall", "call_tool", "call_tools", "is_error", "parse_tool_calls", "tool_schema"]
