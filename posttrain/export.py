"""`posttrain export RUN_DIR OUT`: a plain Hugging Face directory that transformers and vLLM load unchanged.

LoRA adapters are merged into their base (W + (alpha/r)·B·A) so the output needs no PEFT at load time.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from posttrain import checkpoint
from posttrain.errors import UserError


def run(cfg) -> Path:
    src, out = find_model_dir(Path(cfg.run_dir)), Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already exists and is not empty — fix: choose a new output directory")
    export_model(src, out)
    print(f"exported {src} → {out}")
    return out


def find_model_dir(path: Path) -> Path:
    """A run's final/ model, else its latest checkpoint's model/, else `path` itself if it is a model."""
    if (path / "final").is_dir():
        return path / "final"
    if (path / "config.json").is_file() or (path / "adapter_config.json").is_file():
        return path
    latest = checkpoint.latest(path)
    if latest is not None:
        return latest / "model"
    raise UserError(f"no model found in {path} — fix: pass a run directory (with final/ or checkpoints/) "
                    "or a model/adapter directory")


def export_model(src: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    adapter_config = src / "adapter_config.json"
    if adapter_config.is_file():
        from peft import PeftModel
        base = json.loads(adapter_config.read_text())["base_model_name_or_path"]
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, str(src)).merge_and_unload()
    else:
        base = None
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    has_tokenizer = (src / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(src if has_tokenizer or base is None else base)
    checkpoint.replace_dir(out.with_name(out.name + ".tmp"), out,
                           lambda d: (model.save_pretrained(d, safe_serialization=True), tokenizer.save_pretrained(d)))
