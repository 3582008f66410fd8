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


# ---- mistakes found by looking at the model, the installed packages and the reward setup -----------------------------

def test_non_utf8_data(tmp_path, capsys):
    path = tmp_path / "d.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b'\n{"prompt": "caf\xe9", "completion": "2"}\n')
    expect_exit_2(capsys, tmp_path / "run", f"data.train_path={path}", match=["d.jsonl", "row 2", "UTF-8"])


def test_max_length_beyond_the_models_position_table(tmp_path, capsys):
    # the embedded model has 512 positions; before, this ran into an index error deep inside the model
    expect_exit_2(capsys, tmp_path / "run", "data.max_length=4096",
                  match=["data.max_length = 4096", "512", "data.max_length=512"])


def test_missing_attention_kernel(tmp_path, capsys):
    pytest.importorskip("importlib").util.find_spec("flash_attn") is None or pytest.skip("flash-attn installed")
    expect_exit_2(capsys, tmp_path / "run", "model.attn_implementation=flash_attention_2",
                  match=["flash_attention_2", "pip install flash-attn", "model.attn_implementation=sdpa"])


def test_missing_tracker_package(tmp_path, capsys):
    pytest.importorskip("importlib").util.find_spec("wandb") is None or pytest.skip("wandb installed")
    expect_exit_2(capsys, tmp_path / "run", "log.report_to=wandb", match=["pip install wandb", "log.report_to"])


@pytest.mark.parametrize("path", ["/no/such/model", "runs/no-such-run/final", "./nope"])
def test_missing_model_path_says_no_such_directory(tmp_path, capsys, path):
    expect_exit_2(capsys, tmp_path / "run", f"model.name_or_path={path}", match=[f"no such directory: {path}"])
    assert "repo id" not in capsys.readouterr().err.lower()


def test_lora_targets_that_match_nothing_list_the_linear_modules(tmp_path, capsys):
    code = cli.main(["sft", f"output_dir={tmp_path}/run", "log.progress=false", "lora.r=4",
                     "lora.target_modules=q_projj", "train.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "q_projj" in err and len(err.strip().splitlines()) == 1, err
    # the embedded Llama's linear layers, short names, each once
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert err.count(name) == 1 + (name == "q_proj"), (name, err)  # q_proj also inside 'q_projj'


def test_reward_function_with_default_verifier_and_prompts_without_answers(tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Write a haiku."}, {"prompt": "Tell a joke."}])
    reward = tmp_path / "r.py"
    reward.write_text("def length(prompt, completion, **row):\n    return float(len(completion))\n")
    code = cli.main(["rl", f"output_dir={tmp_path}/run", "log.progress=false", f"data.train_path={prompts}",
                     f"reward.function={reward}:length", "train.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "reward.verifier=false" in err and "p.jsonl" in err and "answer" in err, err
    assert not (tmp_path / "run").exists()


def test_column_hint_is_valid_command_line_syntax(tmp_path, capsys):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "1+1=", "response": "2"}] * 8)
    expect_exit_2(capsys, tmp_path / "run", f"data.train_path={path}", match=["data.columns=question:prompt"])
    from posttrain import config as C
    hint = "data.columns=question:prompt,response:completion"
    cfg = cli.parse_config(C.SFTConfig, [hint], prog="posttrain sft")  # the CLI accepts the suggested fix
    assert cfg.data.columns == {"question": "prompt", "response": "completion"}


def test_rl_and_sft_report_the_same_row_number(tmp_path, capsys):
    """Row numbers count from 1 (the .jsonl line) in every command."""
    rows = [{"prompt": "1+1=", "completion": "2", "answer": "2"}] * 2 + [{"prompt": "", "completion": "2"}]
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n" + json.dumps(rows[2]) + "\n")
    reported = {}
    for command in ("sft", "rl"):
        code = cli.main([command, f"output_dir={tmp_path}/{command}", "log.progress=false",
                         f"data.train_path={path}", "train.max_steps=1"])
        err = capsys.readouterr().err
        assert code == 2 and "prompt" in err, err
        reported[command] = err.split("row ")[1].split(",")[0]
    assert reported == {"sft": "4", "rl": "4"}  # line 4 of the file (line 2 is blank)


@pytest.mark.parametrize("margin", ["NaN", "Infinity", "-Infinity"])
def test_rm_non_finite_margin_is_a_data_error(tmp_path, capsys, margin):
    pair = {"prompt": "1+1=", "chosen": "2", "rejected": "3", "margin": 1.0}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(pair) + "\n" + json.dumps(pair).replace("1.0", margin) + "\n")
    code = cli.main(["rm", f"output_dir={tmp_path}/run", "log.progress=false", f"data.train_path={path}",
                     "train.max_steps=1"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert "pairs.jsonl" in err and "row 2" in err and "margin" in err and "finite" in err, err
    assert not (tmp_path / "run").exists()
