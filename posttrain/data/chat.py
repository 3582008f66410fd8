"""A conversation rendered through the model's chat template, tools and tool calls included — one function for
SFT data (tokenize.py) and for multi-turn rollouts (envs/trajectory.py), so a tool-use demonstration trains
exactly the tokens an episode samples.

    text = render_chat(tokenizer, messages, tools=[schema, ...], add_generation_prompt=False)

Messages are {"role": "system"|"user"|"assistant"|"tool", "content": str}; an assistant message may carry
"tool_calls" in the Hugging Face form [{"type": "function", "function": {"name": str, "arguments": {...}}}], and
a tool message a "name".

Templates that know tools (their source mentions `tools`, e.g. Qwen2.5's) get `tools=` and the structured tool
calls, and write both their own way. A template that knows no tools (SmolLM2's plain ChatML, the embedded model's)
gets them in the Hermes format the parser in envs/tools.py reads:

    system message   its content + "\\n\\n" + TOOLS_PREAMBLE + one JSON schema per line (a system message is
                     added when the conversation has none)
    tool calls       appended to the assistant's content, one per call:
                     <tool_call>\\n{"name": "calculator", "arguments": {"expression": "47 + 85"}}\\n</tool_call>
    tool results     the template's own rendering of the "tool" role (ChatML: <|im_start|>tool\\n132<|im_end|>)
"""

from __future__ import annotations

import json

TOOLS_PREAMBLE = ("You may call these tools. To call one, write <tool_call>{\"name\": NAME, \"arguments\": "
                  "{...}}</tool_call>; its answer comes back as a tool message. Tools:\n")


def supports_tools(tokenizer) -> bool:
    """Whether the chat template renders `tools=` itself."""
    return "tools" in (getattr(tokenizer, "chat_template", None) or "")


def tool_call_text(call: dict) -> str:
    """One call in the Hermes format: tool_call_text({"function": {"name": "f", "arguments": {"x": 1}}}) →
    '<tool_call>\\n{"name": "f", "arguments": {"x": 1}}\\n</tool_call>'."""
    function = call.get("function", call)
    return "<tool_call>\n" + json.dumps({"name": function["name"], "arguments": function["arguments"]}) + \
        "\n</tool_call>"


def render_chat(tokenizer, messages: list[dict], tools: list[dict] | None = None,
                add_generation_prompt: bool = False) -> str:
    """The template's text of `messages` (see the module docstring for tools and tool calls)."""
    if supports_tools(tokenizer):
        kwargs = {"tools": tools} if tools else {}
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             **kwargs)
    messages = [_calls_as_text(m) for m in messages]
    if tools:
        described = TOOLS_PREAMBLE + "\n".join(json.dumps(t) for t in tools)
        if messages and messages[0]["role"] == "system":
            messages = [{**messages[0], "content": messages[0]["content"] + "\n\n" + described}, *messages[1:]]
        else:
            messages = [{"role": "system", "content": described}, *messages]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _calls_as_text(message: dict) -> dict:
    if not message.get("tool_calls"):
        return message
    calls = "\n".join(tool_call_text(c) for c in message["tool_calls"])
    content = (message.get("content") or "").strip()
    out = {k: v for k, v in message.items() if k != "tool_calls"}
    return {**out, "content": f"{content}\n{calls}" if content else calls}


__all__ = ["TOOLS_PREAMBLE", "render_chat", "supports_tools", "tool_call_text"]
