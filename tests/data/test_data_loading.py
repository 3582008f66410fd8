"""Loading rows from every source, format detection/conversion, and the errors users see for bad data."""

import csv
import json
import re

import pytest

from posttrain.data import detect_format, load_rows, normalize
from posttrain.errors import DataError

# A mixed file: Arrow-backed formats fill absent columns with null, CSV with empty cells; all must read back
# as exactly these dicts.
ROWS = [
    {"prompt": "2+2?", "completion": "4"},
    {"messages": [{"role": "user", "content": "Hi, you"}, {"role": "assistant", "content": "Hello, \"friend\"!"}]},
    {"text": "Plain text, with a comma\nand a newline."},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_json(path, rows):
    path.write_text(json.dumps(rows))


def write_parquet(path, rows):
    import pandas as pd

    pd.DataFrame(rows).to_parquet(path)


def write_csv(path, rows):
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in row.items()})


@pytest.mark.parametrize("write", [write_jsonl, write_json, write_parquet, write_csv])
def test_every_file_type_reads_back_the_same_rows(tmp_path, write):
    extension = {"write_jsonl": ".jsonl", "write_json": ".json", "write_parquet": ".parquet", "write_csv": ".csv"}
    path = tmp_path / ("data" + extension[write.__name__])
    write(path, ROWS)
    rows = load_rows(path)
    assert rows.rows == ROWS
    assert rows.source == str(path)
    assert rows.row_numbers == [1, 2, 3]


def test_in_memory_sources_read_back_the_same_rows():
    import datasets

    columns = dict.fromkeys(key for row in ROWS for key in row)  # (from_list would keep only row 1's keys)
    dataset = datasets.Dataset.from_dict({key: [row.get(key) for row in ROWS] for key in columns})
    assert load_rows(dataset).rows == ROWS
    assert load_rows(ROWS).rows == ROWS
    assert load_rows(ROWS, name="my_rows").source == "my_rows"


def test_jsonl_row_numbers_are_file_line_numbers(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n   \n{"text": "c"}\n')
    assert load_rows(path).row_numbers == [1, 3, 5]


def test_alpaca_is_converted_to_messages():
    rows = normalize([
        {"instruction": "Add the numbers.", "input": "2, 3", "output": "5", "system": "Be brief."},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"},
    ], kind="sft")
    assert detect_format({"instruction": "x", "output": "y"}) == "alpaca"
    assert rows.rows == [
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Add the numbers.\n\n2, 3"},
                      {"role": "assistant", "content": "5"}]},
        {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]},
    ]


def test_sharegpt_is_converted_to_messages():
    row = {"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                             {"from": "gpt", "value": "Hello"}, {"from": "user", "value": "Bye"},
                             {"from": "model", "value": "Goodbye"}]}
    assert detect_format(row) == "sharegpt"
    assert normalize([row], kind="sft").rows == [{"messages": [
        {"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Goodbye"}]}]


@pytest.mark.parametrize("row, expected", [
    ({"messages": [], "prompt": "x"}, "messages"),
    ({"prompt": "p", "chosen": "a", "rejected": "b"}, "preference"),
    ({"prompt": "p", "completion": "c", "label": True}, "unpaired"),
    ({"prompt": "p", "completion": "c"}, "prompt_completion"),
    ({"prompt": "p", "answer": "5"}, "prompt"),
    ({"text": "t"}, "text"),
])
def test_detect_format(row, expected):
    assert detect_format(row) == expected


def test_unknown_format_lists_the_recognised_field_sets_and_suggests_columns():
    with pytest.raises(DataError, match=r"<rows>, row 2: can't tell the format.*'question'.*prompt \+ completion"
                                        r".*data\.columns"):
        normalize([{"text": "ok"}, {"question": "2+2?", "response": "4"}], kind="sft")


def test_column_mapping_is_applied_before_detection(tmp_path):
    path = tmp_path / "qa.jsonl"
    write_jsonl(path, [{"question": "2+2?", "response": "4", "id": 7}])
    rows = load_rows(path, columns={"question": "prompt", "response": "completion"})
    assert rows.rows == [{"prompt": "2+2?", "completion": "4", "id": 7}]
    assert normalize(rows, kind="sft").rows == [{"prompt": "2+2?", "completion": "4"}]
    assert normalize(rows, kind="prompt").rows == [{"prompt": "2+2?", "completion": "4", "id": 7}]  # metadata kept


def test_column_mapping_typo_names_the_column(tmp_path):
    path = tmp_path / "qa.jsonl"
    write_jsonl(path, [{"question": "2+2?", "response": "4"}])
    with pytest.raises(DataError, match=r"qa\.jsonl, field 'questoin': data\.columns renames 'questoin'.*question"):
        load_rows(path, columns={"questoin": "prompt"})


def test_each_kind_produces_its_canonical_schema():
    conversation = [{"role": "user", "content": "Hi"}]
    reply = [{"role": "assistant", "content": "Yo"}]
    assert normalize([{"prompt": "p", "chosen": "a", "rejected": "b", "extra": 1}], kind="preference").rows == \
        [{"prompt": "p", "chosen": "a", "rejected": "b"}]
    assert normalize([{"prompt": conversation, "chosen": reply, "rejected": reply}], kind="preference").rows == \
        [{"prompt": conversation, "chosen": reply, "rejected": reply}]  # chosen == rejected is not an error here
    assert normalize([{"prompt": "p", "completion": "c", "label": "false"}], kind="unpaired").rows == \
        [{"prompt": "p", "completion": "c", "label": False}]
    assert normalize([{"prompt": "2+3=", "answer": "5"}], kind="prompt").rows == [{"prompt": "2+3=", "answer": "5"}]
    mixed = normalize([{"text": "t"}, {"prompt": "p", "completion": "c"}, {"messages": conversation + reply}],
                      kind="sft")
    assert [sorted(row) for row in mixed] == [["text"], ["completion", "prompt"], ["messages"]]


# ---- errors: every message names the file, the row and (where there is one) the field ----------------------

def location(file, row, field=None):
    return re.escape(f"{file}, row {row}" + (f", field '{field}'" if field else ""))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: file not found — fix: check the path"):
        load_rows(tmp_path / "nope.jsonl")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(DataError, match=r"data\.txt: unsupported file type '\.txt'.*\.jsonl, \.json, \.parquet, \.csv"):
        load_rows(path)


def test_malformed_jsonl_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "missing quote}\n')
    with pytest.raises(DataError, match=location("bad.jsonl", 3) + ": invalid JSON: Unterminated string"):
        load_rows(path)


def test_json_file_must_hold_a_list(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text('{"data": [{"text": "a"}]}')
    with pytest.raises(DataError, match=r"obj\.json: expected a JSON list of objects, got a JSON dict"):
        load_rows(path)


def test_jsonl_saved_as_json_suggests_jsonl(tmp_path):
    path = tmp_path / "lines.json"
    write_jsonl(path, [{"text": "a"}, {"text": "b"}])
    with pytest.raises(DataError, match=r"lines\.json: invalid JSON at line 2.*name the file \.jsonl"):
        load_rows(path)


def test_row_that_is_not_an_object(tmp_path):
    path = tmp_path / "rows.json"
    write_json(path, [{"text": "a"}, ["not", "an", "object"]])
    with pytest.raises(DataError, match=location("rows.json", 2) + ": expected an object with named fields, got list"):
        load_rows(path)


@pytest.mark.parametrize("content", ["", "\n\n", "[]"])
def test_empty_file(tmp_path, content):
    path = tmp_path / ("empty.json" if content == "[]" else "empty.jsonl")
    path.write_text(content)
    with pytest.raises(DataError, match=r"empty\.jsonl?: no rows found"):
        load_rows(path)


USER_HI = {"role": "user", "content": "Hi"}


@pytest.mark.parametrize("kind, bad_row, field, reason", [
    ("preference", {"prompt": "p", "chosen": "a"}, "rejected", "missing field"),
    ("sft", {"prompt": "p"}, "completion", "missing field"),
    ("unpaired", {"prompt": "p", "completion": "c", "label": "maybe"}, "label", "expected true or false"),
    ("sft", {"prompt": "", "completion": "c"}, "prompt", "empty string"),
    ("sft", {"prompt": "p", "completion": 42}, "completion", "expected a string or a list of messages, got int"),
    ("sft", {"messages": "Hi"}, "messages", "expected a non-empty list of messages, got a str"),
    ("sft", {"messages": []}, "messages", "expected a non-empty list of messages, got an empty list"),
    ("sft", {"messages": [USER_HI, {"role": "assistant", "content": ["x"]}]}, "messages[1].content",
     "expected a string, got list"),
    ("sft", {"messages": [USER_HI, {"role": "bot", "content": "x"}]}, "messages[1].role", "unknown role 'bot'"),
    ("sft", {"messages": [USER_HI, "x"]}, "messages[1]", "expected an object with 'role' and 'content'"),
    ("sft", {"messages": [USER_HI]}, "messages", "the conversation has no assistant turn"),
    ("sft", {"conversations": [{"from": "human", "value": "Hi"}, {"from": "robot", "value": "x"}]},
     "conversations[1].from", "unknown role 'robot'"),
    ("sft", {"instruction": "Do it.", "output": "  "}, "output", "empty string"),
    ("preference", {"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}, "chosen",
     "prompt is a string but chosen is a list of messages"),
])
def test_invalid_row_names_file_row_field_and_reason(tmp_path, kind, bad_row, field, reason):
    path = tmp_path / "train.jsonl"
    good = {"sft": {"prompt": "p", "completion": "c"}, "preference": {"prompt": "p", "chosen": "a", "rejected": "b"},
            "unpaired": {"prompt": "p", "completion": "c", "label": True}}[kind]
    write_jsonl(path, [good, good, bad_row])
    normalize(load_rows(path)[:2], kind=kind)  # the good rows pass, so the error below is the bad row's
    with pytest.raises(DataError, match=location("train.jsonl", 3, field) + ": " + re.escape(reason) + ".* — fix: "):
        normalize(load_rows(path), kind=kind)


def test_row_of_the_wrong_kind_says_which_formats_are_accepted():
    with pytest.raises(DataError, match=r"row 1: a 'preference' row can't be used for sft data, which takes messages"):
        normalize([{"prompt": "p", "chosen": "a", "rejected": "b"}], kind="sft")


# ---- encodings ------------------------------------------------------------------------------------------------------

BOM_ROWS = [{"prompt": "1+1=", "completion": "2"}, {"prompt": "2+2=", "completion": "4"}]


def _write_with_bom(path, kind):
    if kind == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in BOM_ROWS)
    elif kind == "json":
        text = json.dumps(BOM_ROWS)
    else:
        text = "prompt,completion\n" + "".join(f"{r['prompt']},{r['completion']}\n" for r in BOM_ROWS)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))  # what Excel and Notepad write
    return path


@pytest.mark.parametrize("kind", ["jsonl", "json", "csv"])
def test_a_utf8_byte_order_mark_is_accepted(tmp_path, kind):
    rows = load_rows(_write_with_bom(tmp_path / f"d.{kind}", kind))
    assert rows.rows == BOM_ROWS  # the first column is 'prompt', not '\ufeffprompt'


@pytest.mark.parametrize("kind, content, where", [
    ("jsonl", b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n', "row 2"),
    ("csv", b'prompt,completion\na,b\nc,d\ncaf\xe9,b\n', "row 3"),
    ("json", b'[{"prompt": "a", "completion": "b"},\n {"prompt": "caf\xe9", "completion": "b"}]', "line 2"),
])
def test_non_utf8_file_names_the_row_and_says_to_reencode(tmp_path, kind, content, where):
    path = tmp_path / f"d.{kind}"
    path.write_bytes(content)  # Latin-1 'é'
    with pytest.raises(DataError) as e:
        load_rows(path)
    message = str(e.value)
    assert f"d.{kind}" in message and where in message and "UTF-8" in message and "re-encode" in message, message
