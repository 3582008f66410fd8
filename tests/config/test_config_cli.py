"""Config resolution (defaults ← YAML ← overrides), unknown keys, --help, validation."""

import pytest

from posttrain import cli, config as C
from posttrain.errors import ConfigError


def parse(*args, cls=C.SFTConfig):
    return cli.parse_config(cls, list(args), prog="posttrain sft")


def test_defaults_yaml_and_overrides_layer_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-4\n  micro_batch_size: 4\nlora:\n  r: 8\n  target_modules: [q_proj, v_proj]\n")
    cfg = parse("-c", str(path), "train.micro_batch_size=2", "--data.packing", "false",
                "model.gradient_checkpointing=true")
    assert cfg.train.lr == 1e-4                 # from YAML ("1e-4" is a string to YAML; coerced)
    assert cfg.train.micro_batch_size == 2      # override beats YAML
    assert cfg.lora.r == 8 and cfg.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.data.packing is False and cfg.model.gradient_checkpointing is True
    assert cfg.train.grad_accum == C.TrainConfig().grad_accum  # untouched default


def test_a_yaml_section_starts_from_the_commands_own_defaults(tmp_path):
    """rm's data section defaults to packing=False and rft's train section to a constant schedule and micro-batches
    of 16: a YAML that sets another key of the section must keep them (not fall back to DataConfig() /
    TrainConfig())."""
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  max_length: 64\ntrain:\n  max_steps: 3\n")
    rm = parse("-c", str(path), cls=C.RMConfig)
    assert rm.data.max_length == 64 and rm.data.packing is False
    rft = parse("-c", str(path), cls=C.RFTConfig)
    assert rft.train.max_steps == 3 and rft.train.schedule == "constant" and rft.train.micro_batch_size == 16


def test_lists_dicts_none_and_bare_flags():
    cfg = parse("lora.target_modules=q_proj,k_proj", "data.columns=question:prompt,response:completion",
                "data.eval_path=none", "--checkpoint.resume", "--overwrite")
    assert cfg.lora.target_modules == ["q_proj", "k_proj"]
    assert cfg.data.columns == {"question": "prompt", "response": "completion"}
    assert cfg.data.eval_path is None and cfg.checkpoint.resume is True and cfg.overwrite is True


def test_unknown_override_suggests_the_close_key():
    with pytest.raises(ConfigError, match="did you mean 'train.lr'"):
        parse("train.lrr=0.1")


def test_unknown_yaml_key_names_file_and_suggests(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  micro_batch: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*'train.micro_batch'.*did you mean 'train.micro_batch_size'"):
        parse("-c", str(path))


def test_yaml_wrong_type_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_steps: many\n")
    with pytest.raises(ConfigError, match="train.max_steps: expected int"):
        parse("-c", str(path))
    path.write_text("data:\n  truncation: chop\n")
    with pytest.raises(ConfigError, match="not one of"):
        parse("-c", str(path))


def test_validation_names_the_knob():
    with pytest.raises(ConfigError, match="train.micro_batch_size = 0"):
        parse("train.micro_batch_size=0")
    with pytest.raises(ConfigError, match="data.pack_length"):
        parse("data.pack_length=10", "data.max_length=100")


def test_help_lists_every_field_and_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse("--help")
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    flat = " ".join(text.split())
    for key in C.field_paths(C.SFTConfig):
        assert f"--{key}" in flat, key
    assert "(default: cosine)" in flat and "(default: runs/sft)" in flat


def test_pretrain_defaults_differ_only_where_documented():
    cfg = parse(cls=C.PretrainConfig)
    assert cfg.model.init == "scratch" and cfg.task.format == "text" and cfg.output_dir == "runs/pretrain"


def test_unknown_command_exits_2(capsys):
    assert cli.main(["stf"]) == 2
    assert "did you mean 'sft'" in capsys.readouterr().err


def test_top_level_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


SHARED_SECTIONS = ["model", "lora", "task", "data", "train", "eval", "checkpoint", "log"]


@pytest.mark.parametrize("cls, own", [
    (C.SFTConfig, ["env"]), (C.DPOConfig, ["preference"]), (C.RMConfig, ["reward"]),
    (C.RLConfig, ["algo", "kl", "rl", "reward", "env", "sampling", "rollout"]),
])
def test_config_yaml_keys_keep_their_order(cls, own):
    """config.yaml lists the run's head, the command's own sections, then the shared ones — the order the
    dataclass bases produce (posttrain/config/sections.py), which a reordered base would silently change."""
    assert list(C.to_dict(cls())) == ["output_dir", "overwrite", "seed", "threads", *own, *SHARED_SECTIONS]


def test_classic_config_keeps_algo_and_env_first():
    keys = list(C.to_dict(C.ClassicConfig()))
    assert keys[:6] == ["algo", "env", "output_dir", "overwrite", "seed", "threads"]
    assert keys[-2:] == ["checkpoint", "log"] and C.ClassicConfig().threads == 1


def test_every_command_config_validates():
    for name, (cls, _, _) in cli.COMMANDS.items():
        assert issubclass(cls, C.Config), name


@pytest.mark.parametrize("command, args, words", [
    ("generate", ["sampling.top_p=2"], "sampling.top_p"),
    ("generate", ["beam.num_beams=2", "beam.num_return_sequences=3"], "beam.num_return_sequences"),
    ("chat", ["rollout.batch_size=0"], "rollout.batch_size"),
    ("eval", ["strategies=greedy,nope"], "strategies"),
    ("rft", ["rft.rounds=0"], "rft.rounds"),
    ("distill", [], "distill.teacher is required"),
    ("rm", ["reward.mode=prm", "reward.labels=mc"], "reward.label_policy"),
    ("rl", ["train.micro_batch_size=0"], "train.micro_batch_size"),
])
def test_the_cli_validates_every_command_before_it_runs(command, args, words):
    """One call in parse_config, whatever the command: the error comes before a model is loaded."""
    cls = cli.COMMANDS[command][0]
    with pytest.raises(ConfigError, match=words):
        cli.parse_config(cls, args, prog=f"posttrain {command}")
