"""Recognise each row's format and convert it to the canonical schema a command needs (DESIGN §3).

Canonical schemas (what the rest of posttrain reads):

    messages (+ tools)          [{"role": "system"|"user"|"assistant"|"tool", "content": str}, ...]   SFT
    prompt + completion         strings, or lists of messages                                  SFT
    text                        str                                                            pretraining / SFT
    prompt + chosen + rejected  strings, or lists of messages                                  paired preference
    prompt + completion + label label: bool (desirable or not)                                 unpaired (KTO)
    prompt (+ any metadata)     e.g. {"prompt": "2+3=", "answer": "5"}                         online RL

Foreign formats recognised and converted:

    Alpaca    {"instruction", "input"?, "output", "system"?}
              -> messages [system?] + user(instruction + "\\n\\n" + input if input) + assistant(output)
    ShareGPT  {"conversations": [{"from": "human"|"gpt"|"system"|..., "value": str}, ...]}
              -> messages with from mapped to role; LLaMA-Factory's "function_call" (value: the call's JSON)
              becomes an assistant message with tool_calls, "observation" a tool message

Tool use (messages and ShareGPT rows): an assistant message may carry "tool_calls" ([{"type": "function",
"function": {"name": str, "arguments": {...}}}], OpenAI's and transformers' form; arguments written as a JSON
string are read; its content may then be empty), a tool message a "name" and a "tool_call_id"; the row's "tools"
(a list of JSON schemas, or that list as a JSON string) are passed to the chat template (posttrain.data.chat).

A file may mix formats; every row is detected and validated on its own. Errors name file, row and field:
`normalize` raises `DataError`s without a location from the helpers below and adds the location in one place.
"""

from __future__ import annotations

import json
from typing import Any

from posttrain.errors import DataError
from posttrain.data.loading import Rows, load_rows

ROLES = {"system": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user",
                  "gpt": "assistant", "assistant": "assistant", "model": "assistant",
                  "function_call": "assistant", "observation": "tool", "tool": "tool"}

# Which row formats each command accepts. "prompt" (online RL) takes any row with a prompt.
ACCEPTED_FORMATS = {
    "sft": ("messages", "sharegpt", "alpaca", "prompt_completion", "text"),
    "preference": ("preference",),
    "unpaired": ("unpaired",),
    "prompt": ("prompt", "prompt_completion", "preference", "unpaired"),
    "text": ("text",),
}

_RECOGNIZED = ("messages | conversations (ShareGPT) | instruction + output (Alpaca) | prompt + chosen + rejected "
               "| prompt + completion + label | prompt + completion | prompt | text")
_COLUMNS_FIX = "rename your columns with data.columns, e.g. data.columns=question:prompt,response:completion"


def detect_format(row: dict) -> str:
    """Name the format of one row from the fields it has (first match wins, most specific first).

    Returns one of "messages", "sharegpt", "alpaca", "preference", "unpaired", "prompt_completion",
    "prompt", "text".

    Example:
        >>> detect_format({"prompt": "2+2?", "completion": "4", "label": True})
        'unpaired'
        >>> detect_format({"instruction": "Add.", "input": "2, 2", "output": "4"})
        'alpaca'
    """
    has = set(row)
    if "messages" in has:
        return "messages"
    if "conversations" in has:
        return "sharegpt"
    if {"instruction", "output"} <= has:
        return "alpaca"
    if {"prompt", "chosen", "rejected"} <= has:
        return "preference"
    if {"prompt", "completion", "label"} <= has:
        return "unpaired"
    if {"prompt", "completion"} <= has:
        return "prompt_completion"
    if "prompt" in has:
        return "prompt"
    if "text" in has:
        return "text"
    raise DataError(f"can't tell the format of a row with fields {sorted(has)}; recognised field sets: {_RECOGNIZED}",
                    fix=_COLUMNS_FIX)


def normalize(rows: Rows | list[dict], *, kind: str) -> Rows:
    """Convert every row to the canonical schema for `kind`, validating it on the way.

    Args:
        rows: `Rows` from `load_rows` (or a list of dicts, named "<rows>" in errors).
        kind: "sft", "preference", "unpaired", "prompt" (online RL) or "text" (pretraining).

    Returns:
        `Rows` with the same provenance. Rows hold only canonical fields, except for kind "prompt", which keeps
        every other field as metadata for reward functions (e.g. "answer").

    Raises:
        DataError naming file, row, field, reason and a fix, for the first invalid row.

    Example:
        >>> normalize([{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}],
        ...           kind="sft").rows
        [{'messages': [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello'}]}]
    """
    if kind not in ACCEPTED_FORMATS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {sorted(ACCEPTED_FORMATS)}")
    rows = rows if isinstance(rows, Rows) else load_rows(rows)
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(_normalize_row(row, kind))
        except DataError as e:  # the helpers don't know where they are; add file and row here
            raise rows.error(i, e.reason, field=e.field, fix=e.fix) from None
    return Rows(out, rows.source, list(rows.row_numbers))


def _normalize_row(row: dict, kind: str) -> dict:
    fmt = detect_format(row)
    if fmt not in ACCEPTED_FORMATS[kind]:
        raise _wrong_format(row, fmt, kind)
    if fmt == "messages":
        return _with_tools({"messages": _with_assistant(_messages(row["messages"], "messages"), "messages")}, row)
    if fmt == "sharegpt":
        messages = _messages(row["conversations"], "conversations", role_key="from", content_key="value",
                             roles=SHAREGPT_ROLES)
        return _with_tools({"messages": _with_assistant(messages, "conversations")}, row)
    if fmt == "alpaca":
        return {"messages": _alpaca_messages(row)}
    if fmt == "text":
        return {"text": _text(row["text"], "text")}
    if kind == "prompt":
        return {**row, "prompt": _turns(row["prompt"], "prompt")}
    out = {"prompt": _turns(row["prompt"], "prompt")}
    for field in ("chosen", "rejected") if fmt == "preference" else ("completion",):
        out[field] = _response(row[field], field, like=out["prompt"])
    if fmt == "unpaired":
        out["label"] = _label(row["label"])
    return out


def _wrong_format(row: dict, fmt: str, kind: str) -> DataError:
    """Say which field is missing when that is the likely mistake; otherwise which formats `kind` takes."""
    needed = {"preference": ("prompt", "chosen", "rejected"), "unpaired": ("prompt", "completion", "label"),
              "prompt": ("prompt",), "text": ("text",), "sft": ("prompt", "completion") if fmt == "prompt" else ()}
    missing = [name for name in needed[kind] if name not in row]
    if missing:
        return DataError(f"missing field (needed for {kind} data: {', '.join(needed[kind])})", field=missing[0],
                         fix=f"add '{missing[0]}' to every row, or {_COLUMNS_FIX}")
    return DataError(f"a '{fmt}' row can't be used for {kind} data, which takes {' | '.join(ACCEPTED_FORMATS[kind])}",
                     fix=f"use data in one of those formats, or {_COLUMNS_FIX}")


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__}", field=field, fix="store this field as text")
    if not value.strip():
        raise DataError("empty string", field=field, fix="fill it in or remove the row")
    return value


def _messages(value: Any, field: str, *, role_key: str = "role", content_key: str = "content",
              roles: dict[str, str] = ROLES) -> list[dict]:
    """Validate a conversation and return it as [{"role", "content"}] with roles mapped through `roles`.

    Empty system messages are dropped: they say nothing, and templates would render an empty turn.
    """
    if not isinstance(value, list) or not value:
        got = "an empty list" if isinstance(value, list) else f"a {type(value).__name__}"
        raise DataError(f"expected a non-empty list of messages, got {got}", field=field,
                        fix=f'write it as [{{"{role_key}": "user", "{content_key}": "..."}}, ...]')
    out = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise DataError(f"expected an object with '{role_key}' and '{content_key}', got {type(message).__name__}",
                            field=where, fix=f'write each message as {{"{role_key}": ..., "{content_key}": ...}}')
        role = message.get(role_key)
        if not isinstance(role, str) or role not in roles:
            raise DataError(f"unknown role {role!r}; expected one of {', '.join(roles)}", field=f"{where}.{role_key}",
                            fix="use one of those roles")
        if roles[role] == "system" and message.get(content_key) in ("", None):
            continue
        if role == "function_call":  # LLaMA-Factory: the value is the call's JSON
            out.append({"role": "assistant", "content": "",
                        "tool_calls": _tool_calls(_json(message.get(content_key), f"{where}.{content_key}"),
                                                  f"{where}.{content_key}")})
        elif roles[role] == "assistant" and message.get("tool_calls"):
            out.append({"role": "assistant", "content": message.get(content_key) or "",
                        "tool_calls": _tool_calls(message["tool_calls"], f"{where}.tool_calls")})
        else:
            out.append({"role": roles[role], "content": _text(message.get(content_key), f"{where}.{content_key}"),
                        **{k: message[k] for k in ("name", "tool_call_id")
                           if roles[role] == "tool" and isinstance(message.get(k), str)}})
    return out


def _json(value: Any, field: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg} at character {e.pos})", field=field,
                        fix='write it as JSON, e.g. {"name": "calculator", "arguments": {"expression": "2 + 3"}}') \
            from None


def _tool_calls(value: Any, field: str) -> list[dict]:
    """Tool calls in the canonical form [{"type": "function", "function": {"name", "arguments": dict}}]; a bare
    {"name", "arguments"} call, one call not in a list, and arguments written as a JSON string are accepted."""
    calls = value if isinstance(value, list) else [value]
    out = []
    for k, call in enumerate(calls):
        function = call.get("function", call) if isinstance(call, dict) else None
        arguments = _json(function.get("arguments", {}), f"{field}[{k}].arguments") if function else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or \
                not isinstance(arguments, dict):
            raise DataError("a tool call needs a name and an object of arguments", field=f"{field}[{k}]",
                            fix='write it as {"type": "function", "function": {"name": "calculator", "arguments": '
                                '{"expression": "2 + 3"}}}')
        out.append({"type": "function", "function": {"name": function["name"], "arguments": arguments}})
    return out


def _with_tools(out: dict, row: dict) -> dict:
    """The row's "tools" (JSON schemas for the chat template), validated, when it has them."""
    if row.get("tools") in (None, "", []):
        return out
    tools = _json(row["tools"], "tools")
    if not isinstance(tools, list) or not all(isinstance(t, dict) and ("function" in t or "name" in t)
                                              for t in tools):
        raise DataError("expected a list of JSON schemas of functions", field="tools",
                        fix='write it as [{"type": "function", "function": {"name": ..., "description": ..., '
                            '"parameters": {...}}}], e.g. transformers.utils.get_json_schema(fn)')
    return {**out, "tools": tools}


def _with_assistant(messages: list[dict], field: str) -> list[dict]:
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError("the conversation has no assistant turn, so there is nothing to learn", field=field,
                        fix="add the assistant's reply, or remove the row")
    return messages


def _turns(value: Any, field: str) -> str | list[dict]:
    """A prompt: a non-empty string or a list of messages."""
    if isinstance(value, list):
        return _messages(value, field)
    if isinstance(value, str):
        return _text(value, field)
    raise DataError(f"expected a string or a list of messages, got {type(value).__name__}", field=field,
                    fix="store it as text or as [{\"role\": ..., \"content\": ...}]")


def _response(value: Any, field: str, *, like: str | list) -> str | list[dict]:
    """A completion/chosen/rejected: same type as the prompt (both strings, or both message lists)."""
    response = _turns(value, field)
    if isinstance(response, str) != isinstance(like, str):
        kinds = ("a string", "a list of messages") if isinstance(like, str) else ("a list of messages", "a string")
        raise DataError(f"prompt is {kinds[0]} but {field} is {kinds[1]}", field=field,
                        fix="make both plain strings or both lists of messages")
    return response if isinstance(response, str) else _with_assistant(response, field)


def _alpaca_messages(row: dict) -> list[dict]:
    """Alpaca -> messages. The input, when present, follows the instruction after a blank line."""
    user = _text(row["instruction"], "instruction")
    extra = row.get("input", "")
    if not isinstance(extra, str):
        raise DataError(f"expected a string, got {type(extra).__name__}", field="input", fix="store it as text")
    if extra.strip():
        user += "\n\n" + extra
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row["output"], "output")}]
    system = row.get("system", "")
    if system != "":
        messages.insert(0, {"role": "system", "content": _text(system, "system")})
    return messages


def _label(value: Any) -> bool:
    """KTO label: true = desirable completion. Accepts booleans, 0/1 and the strings true/false/1/0 (CSV)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise DataError(f"expected true or false, got {value!r}", field="label",
                    fix="set label to true (desirable completion) or false (undesirable)")
