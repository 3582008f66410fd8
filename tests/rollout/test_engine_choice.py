"""rollout.engine=auto (rollout/backends.py choose_engine, train/preflight.py): vLLM only where it is installed, can
run the model and is the faster engine; the run's log and config.yaml name the engine chosen. These tests run
without vLLM (its presence is faked where the rule after it is under test); tests/needs_vllm checks the choice
of vLLM itself and the copied list of head sizes."""

import importlib.util
import json

import pytest
import yaml

from posttrain import cli, config as C
from posttrain.errors import UserError
from posttrain.models.tiny import tiny_path
from posttrain.rollout.backends import VLLM_CPU_MIN_PARAMETERS, choose_engine
from posttrain.train.preflight import check_inputs


def model_dir(tmp_path, name="m", **fields):
    """A model directory holding only a Llama config.json (choose_engine reads nothing else)."""
    path = tmp_path / name
    path.mkdir()
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 512,
              "num_attention_heads": 8, **fields}
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


@pytest.fixture
def vllm_installed(monkeypatch):
    """find_spec says vLLM is there (nothing imports it before the rules under test decide)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "vllm" else real(name, *a))


def test_without_vllm_or_a_model_directory_the_built_in_engine_runs(tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert choose_engine(model_dir(tmp_path), 10**9, cuda=True) == ("hf", "vLLM is not installed")
    assert choose_engine(str(tmp_path / "absent"), 10**9, cuda=True)[0] == "hf"
    assert choose_engine(None, 10**9, cuda=True)[0] == "hf"


def test_on_cpu_small_models_and_unsupported_head_sizes_stay_on_the_built_in_engine(tmp_path, vllm_installed):
    engine, why = choose_engine(model_dir(tmp_path, "heads16", hidden_size=128), 10**9, cuda=False)
    assert engine == "hf" and "16 dimensions" in why  # 128 / 8 heads
    engine, why = choose_engine(model_dir(tmp_path, "heads", head_dim=16), 10**9, cuda=False)
    assert engine == "hf" and "16 dimensions" in why  # an explicit head_dim wins over hidden / heads
    engine, why = choose_engine(model_dir(tmp_path), VLLM_CPU_MIN_PARAMETERS - 1, cuda=False)
    assert engine == "hf" and "20.0M parameters" in why
    engine, why = choose_engine(model_dir(tmp_path, "big"), 10**9, cuda=False, world_size=2)
    assert engine == "hf" and "server" in why  # colocated vLLM is one process; torchrun has several


def test_a_training_run_records_the_engine_it_chose(tmp_path, capsys):
    """The embedded model (1M parameters) trains with the built-in engine; config.yaml says hf, not auto."""
    assert cli.main(["rl", "--algo", "grpo", f"output_dir={tmp_path / 'run'}", "train.max_steps=1",
                     "threads=1", "log.progress=false", "eval.task_accuracy=false", "task.num_train=8",
                     "task.max_digits=1", "sampling.max_new_tokens=4", "rl.prompts_per_step=2",
                     "rl.generations=2", "train.micro_batch_size=4"]) == 0
    assert "rollout.engine = hf (" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["rollout"]["engine"] == "hf"


def test_explicit_vllm_on_a_model_it_cannot_run_is_refused_before_the_run(tmp_path, vllm_installed):
    cfg = C.RLConfig()
    cfg.model.name_or_path = model_dir(tmp_path, "heads16", hidden_size=128, num_hidden_layers=1,
                                       intermediate_size=64, vocab_size=32)
    cfg.rollout.engine = "vllm"
    with pytest.raises(UserError, match="16 dimensions.*fix: rollout.engine=hf"):
        check_inputs(cfg)


def test_auto_on_the_embedded_model_counts_its_parameters_from_the_config(vllm_installed):
    """With vLLM (faked) present the rule that decides for the embedded model is its size, counted on the meta
    device before anything is loaded."""
    cfg = C.RLConfig()
    cfg.model.name_or_path = str(tiny_path())
    check_inputs(cfg)
    assert cfg.rollout.engine == "hf"
