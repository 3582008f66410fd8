"""Defaults fit a pretrained model: train.lr is the command's rate for full or LoRA training, data.max_length comes
from the model's context (capped), and a data.max_length past the model's position table is refused up front."""

import json
import shutil

import pytest
import yaml

from conftest import run_cli, write_jsonl
from posttrain import config as C
from posttrain.errors import ConfigError


@pytest.mark.parametrize("cls, full, lora", [
    (C.SFTConfig, 1e-5, 1e-4), (C.DPOConfig, 5e-7, 5e-6), (C.RMConfig, 1e-5, 1e-4), (C.RLConfig, 1e-6, 1e-5),
    (C.RFTConfig, 1e-5, 1e-4), (C.DistillConfig, 1e-5, 1e-4),
])
def test_learning_rate_per_command_full_and_lora(cls, full, lora):
    cfg = cls()
    assert cfg.train.lr is None  # unset until the model is known
    C.resolve_defaults(cfg, 4096)
    assert cfg.train.lr == full
    cfg = cls(lora=C.LoraConfig(r=8))
    C.resolve_defaults(cfg, 4096)
    assert cfg.train.lr == lora


def test_training_from_scratch_takes_a_pretraining_rate_and_a_set_rate_is_kept():
    cfg = C.PretrainConfig()
    assert C.resolve_defaults(cfg, 512)[0] == "train.lr = 0.0006 (training from scratch)"
    cfg = C.SFTConfig(train=C.TrainConfig(lr=3e-3))
    assert C.resolve_defaults(cfg, 512) == ["data.max_length = 512 (the model's context)"]
    assert cfg.train.lr == 3e-3


@pytest.mark.parametrize("context, expected", [(512, 512), (131072, C.MAX_LENGTH_CAP), (None, C.MAX_LENGTH_CAP)])
def test_max_length_is_the_models_context_up_to_a_cap(context, expected):
    cfg = C.SFTConfig()
    C.resolve_defaults(cfg, context)
    assert cfg.data.max_length == expected


def test_rl_prompts_leave_room_for_the_completion():
    cfg = C.RLConfig()  # sampling.max_new_tokens = 32
    C.resolve_defaults(cfg, 512)
    assert cfg.data.max_length == 512 - 32
    with pytest.raises(ConfigError, match=r"data.max_length = 500 \+ sampling.max_new_tokens = 32 .* "
                                          r"fix: data.max_length=480"):
        C.resolve_defaults(C.RLConfig(data=C.DataConfig(max_length=500)), 512)


def test_pack_length_bounds_the_default_max_length():
    cfg = C.SFTConfig(data=C.DataConfig(pack_length=128))
    C.resolve_defaults(cfg, 512)
    assert cfg.data.max_length == 128


def test_max_length_past_the_context_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="data.max_length = 1024 is more than the model's context, 512 positions.*"
                                          "fix: data.max_length=512"):
        C.resolve_defaults(C.SFTConfig(data=C.DataConfig(max_length=1024)), 512)


GOOD = {"messages": [{"role": "user", "content": "1+1="}, {"role": "assistant", "content": "2"}]}


def test_a_run_records_the_resolved_values_and_says_so(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD] * 8)
    for lora, lr in ((0, 1e-5), (4, 1e-4)):
        out = tmp_path / f"run{lora}"
        proc = run_cli("sft", f"output_dir={out}", f"data.train_path={data}", f"lora.r={lora}", "train.max_steps=1",
                       "log.progress=false", "train.micro_batch_size=4", "train.schedule=constant", check=True)
        assert f"train.lr = {lr:g}" in proc.stdout and "data.max_length = 512" in proc.stdout
        saved = yaml.safe_load((out / "config.yaml").read_text())
        assert saved["train"]["lr"] == lr and saved["data"]["max_length"] == 512  # -c RUN_DIR/config.yaml repeats it
        first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
        assert first["lr"] == pytest.approx(lr)


def _gpt2_with_a_short_position_table(path, n_positions=64):
    """A 2-layer GPT-2 (a learned position table of n_positions) with the embedded model's tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from posttrain.models.tiny import tiny_path

    tokenizer = AutoTokenizer.from_pretrained(tiny_path())
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=n_positions, n_embd=32, n_layer=2, n_head=2,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_an_example_longer_than_the_position_table_stops_before_training(tmp_path):
    """GPT-2's learned position table has n_positions rows: before, data.max_length=256 let a 100-token example
    through and the run died inside the model with an index error; now the config is refused up front."""
    model = _gpt2_with_a_short_position_table(tmp_path / "gpt2")
    long_row = {"prompt": "1+1=" * 25, "completion": "2"}
    data = write_jsonl(tmp_path / "d.jsonl", [GOOD, long_row] * 4)
    out = tmp_path / "run"
    proc = run_cli("sft", f"output_dir={out}", f"model.name_or_path={model}", f"data.train_path={data}",
                   "data.max_length=256", "train.max_steps=1", "log.progress=false")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "data.max_length=64" in proc.stderr and not out.exists()
    # unset, data.max_length is the position table: the long example is a data error naming its row
    proc = run_cli("sft", f"output_dir={out}", f"model.name_or_path={model}", f"data.train_path={data}",
                   "train.max_steps=1", "log.progress=false")
    assert proc.returncode == 2 and "row 2" in proc.stderr and "data.max_length=64" in proc.stderr, proc.stderr
    shutil.rmtree(out, ignore_errors=True)


def test_context_is_read_from_a_model_a_run_directory_and_an_adapter(tmp_path):
    from posttrain.models.loading import context_length

    model = _gpt2_with_a_short_position_table(tmp_path / "gpt2", n_positions=48)
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(model)}))
    assert context_length("tiny") == 512
    assert context_length(str(model)) == 48
    assert context_length(str(run)) == 48  # run directory → final/ → the adapter's base
    assert context_length(str(tmp_path / "nothing-here")) is None
