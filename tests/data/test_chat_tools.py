"""Tool use in SFT data (data/formats.py, data/chat.py, data/tokenize.py): tool messages, assistant tool calls and a
row's tools are read, validated with errors that name the field, rendered for templates with and without native
tools, and only the assistant's turns — its tool calls included — are trained."""

import json

import pytest

from conftest import CHATML_TOOLS

from posttrain.data import IGNORE_INDEX, normalize, tokenize_sft
from posttrain.data.chat import TOOLS_PREAMBLE, render_chat, tool_call_text
from posttrain.errors import DataError
from posttrain.models.loading import load_tokenizer
from posttrain.models.tiny import tiny_path

SCHEMA = {"type": "function", "function": {"name": "add", "description": "Add two integers.",
                                           "parameters": {"type": "object", "properties": {"a": {"type": "integer"},
                                                                                           "b": {"type": "integer"}}}}}
CALL = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}
CONVERSATION = [{"role": "user", "content": "What is 2 + 3?"},
                {"role": "assistant", "content": "", "tool_calls": [CALL]},
                {"role": "tool", "name": "add", "content": "5"},
                {"role": "assistant", "content": "The answer is 5."}]


def tokenizer_with(template):
    tokenizer = load_tokenizer(str(tiny_path()))
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def test_tool_calls_and_tools_are_read_in_every_written_form():
    row = {"messages": [{"role": "user", "content": "What is 2 + 3?"},
                        {"role": "assistant", "content": None,  # OpenAI writes null content beside tool calls
                         "tool_calls": [{"type": "function", "id": "c1",
                                         "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
                        {"role": "tool", "name": "add", "tool_call_id": "c1", "content": "5"},
                        {"role": "assistant", "content": "The answer is 5."}],
           "tools": json.dumps([SCHEMA])}
    out = normalize([row], kind="sft").rows[0]
    assert out["tools"] == [SCHEMA]
    assert out["messages"][1] == {"role": "assistant", "content": "", "tool_calls": [CALL]}
    assert out["messages"][2] == {"role": "tool", "content": "5", "name": "add", "tool_call_id": "c1"}

    sharegpt = {"conversations": [{"from": "human", "value": "What is 2 + 3?"},
                                  {"from": "function_call", "value": '{"name": "add", "arguments": {"a": 2, "b": 3}}'},
                                  {"from": "observation", "value": "5"},
                                  {"from": "gpt", "value": "The answer is 5."}], "tools": [SCHEMA]}
    assert normalize([sharegpt], kind="sft").rows[0] == {
        "messages": [{"role": "user", "content": "What is 2 + 3?"},
                     {"role": "assistant", "content": "", "tool_calls": [CALL]},
                     {"role": "tool", "content": "5"}, {"role": "assistant", "content": "The answer is 5."}],
        "tools": [SCHEMA]}


@pytest.mark.parametrize("row, field", [
    ({"messages": [{"role": "user", "content": "q"},
                   {"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}]},
     "messages[1].tool_calls[0]"),
    ({"messages": [{"role": "user", "content": "q"},
                   {"role": "assistant", "tool_calls": [{"function": {"name": "add", "arguments": "{'a': 1}"}}]}]},
     "messages[1].tool_calls[0].arguments"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": '[{"x": 1}]'},
     "tools"),
    ({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "add(1, 2)"}]},
     "conversations[1].value"),
])
def test_a_bad_tool_call_or_tools_field_names_the_row_and_field(row, field):
    with pytest.raises(DataError) as e:
        normalize([row], kind="sft")
    assert e.value.field == field and "row 1" in str(e.value) and "fix:" in str(e.value)


@pytest.mark.parametrize("template", [None, CHATML_TOOLS], ids=["no-native-tools", "native-tools"])
def test_only_the_assistant_turns_and_their_tool_calls_are_trained(template):
    tokenizer = tokenizer_with(template)
    example = tokenize_sft({"messages": CONVERSATION, "tools": [SCHEMA]}, tokenizer)
    ids, labels = example["input_ids"], example["labels"]
    assert tokenizer.decode(ids) == render_chat(tokenizer, CONVERSATION, [SCHEMA])
    trained, run = [], []
    for token, label in zip(ids, labels):  # the runs of trained tokens, decoded
        if label != IGNORE_INDEX:
            run.append(token)
        elif run:
            trained, run = trained + [tokenizer.decode(run)], []
    eos = tokenizer.eos_token
    assert trained == [tool_call_text(CALL) + eos, "The answer is 5." + eos]
    text = tokenizer.decode(ids)
    assert "5" in text.split("The answer")[0].rsplit("</tool_call>", 1)[1]  # the tool result, untrained
    described = TOOLS_PREAMBLE + json.dumps(SCHEMA)
    assert (described in text) == (template is None)  # a template without tools gets them in a system message
