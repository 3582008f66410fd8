"""`posttrain export RUN_DIR OUT`: a plain Hugging Face directory that transformers and vLLM load unchanged.

LoRA adapters are merged into their base (W + (alpha/r)·B·A) so the output needs no PEFT at load time. A reward
model keeps its head: an outcome RM is written as …ForSequenceClassification, a process RM as
…ForTokenClassification, with the tokenizer's pad token in its config (the score head reads the last non-pad token,
and transformers refuses a batch of more than one without it).
"""

from __future__ import annotations

from pathlib import Path

from posttrain.errors import UserError
from posttrain.models.inference import export_model
from posttrain.models.loading import is_model_dir, resolve_model_path


def run(cfg) -> Path:
    src, out = find_model_dir(Path(cfg.run_dir)), Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already exists and is not empty — fix: choose a new output directory")
    export_model(src, out)
    print(f"exported {src} → {out}")
    return out


def find_model_dir(path: Path) -> Path:
    """A run's final/ model, else its latest checkpoint's model/, else `path` itself if it is a model."""
    found = Path(resolve_model_path(str(path)))
    if is_model_dir(found):
        return found
    raise UserError(f"no model found in {path} — fix: pass a run directory (with final/ or checkpoints/) "
                    "or a model/adapter directory")
