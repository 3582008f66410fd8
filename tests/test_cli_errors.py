"""Every user mistake exits with code 2 and one message naming file/row/field and the fix — with no traceback
and nothing written to the output directory."""

import json

import pytest

from conftest import run_cli, write_jsonl
from posttrain import cli

GOOD = {"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]}


def expect_exit_2(capsys, out_dir, *args, match: list[str]):
    code = cli.main(["sft", f"output_dir={out_dir}", "log.progress=false", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    for fragment in match:
        assert fragment in err, (fragment, err)
    assert "Traceback" not in err
    assert not out_dir.exists(), "a failed start must not leave a run directory behind"


def test_missing_file(tmp_path, capsys):
    expect_exit_2(capsys, tmp_path / "run", f"data.train_path={tmp_path}/nope.jsonl",
                  match=["nope.jsonl", "file not found", "fix:"])


def test_malformed_json_line(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + '{"messages": [oops\n')
    expect_exit_2(capsys, tmp_path / "run", f"data.train_path={path}", match=["d.jsonl", "row 2"])


@pytest.mark.parametrize("row, field", [
    ({"messages": [{"role": "user", "content": "1+1="}]}, "messages"),                              # no answer turn
    ({"prompt": "1+1=", "completion": ""}, "completion"),                                           # empty
    ({"prompt": "1+1=", "completion": 2}, "completion"),                                            # wrong type
    ({"messages": [{"role": "user", "content": "1+1="}, {"role": "robot", "content": "2"}]}, "role"),
])
def test_bad_row_names_file_row_and_field(tmp_path, capsys, row, field):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, GOOD, row])
    expect_exit_2(capsys, tmp_path / "run", f"data.train_path={path}", match=["d.jsonl", "row 3", field])


def test_unrecognized_row_format_suggests_column_mapping(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "1+1=", "response": "2"}])
    expect_exit_2(capsys, tmp_path / "run", f"data.train_path={path}", match=["d.jsonl", "row 1", "columns"])


def test_unknown_config_key(tmp_path, capsys):
    expect_exit_2(capsys, tmp_path / "run", "train.learning_rate=0.1", match=["train.learning_rate", "did you mean"])


def test_impossible_batch_arithmetic(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD] * 5)
    expect_exit_2(capsys, tmp_path / "run", f"data.train_path={path}", "train.micro_batch_size=4",
                  "train.grad_accum=2", match=["zero optimizer steps", "train.micro_batch_size", "train.grad_accum"])


def test_too_long_under_error_policy(tmp_path, capsys):
    long = {"prompt": "1+1=" * 100, "completion": "2"}
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD, long])
    expect_exit_2(capsys, tmp_path / "run", f"data.train_path={path}", "data.max_length=64",
                  match=["row 2", "data.max_length", "truncation"])


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("seed: 0\n")  # a run: config.yaml with metrics.jsonl
    (out / "metrics.jsonl").write_text("precious\n")
    assert cli.main(["sft", f"output_dir={out}"]) == 2
    assert "checkpoint.resume=true" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == "precious\n"


def test_real_process_exit_code_and_debug_traceback(tmp_path):
    proc = run_cli("sft", f"output_dir={tmp_path}/run", f"data.train_path={tmp_path}/missing.jsonl")
    assert proc.returncode == 2 and "missing.jsonl" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("sft", f"output_dir={tmp_path}/run", f"data.train_path={tmp_path}/missing.jsonl", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    proc = run_cli("sft", "--train.lrr", "1")  # tyro's own parse errors keep code 2
    assert proc.returncode == 2 and "train.lr" in proc.stderr
