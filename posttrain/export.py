"""`posttrain export RUN_DIR OUT`: a plain Hugging Face directory that transformers and vLLM load unchanged.

LoRA adapters are merged into their base (W + (alpha/r)·B·A) so the output needs no PEFT at load time. A reward
model keeps its head: an outcome RM is written as …ForSequenceClassification, a process RM as
…ForTokenClassification, with the tokenizer's pad token in its config (the score head reads the last non-pad token,
and transformers refuses a batch of more than one without it).
"""

from __future__ import annotations

from pathlib import Path

from posttrain import checkpoint
from posttrain.errors import UserError
from posttrain.models.loading import adapter_config, is_model_dir, resolve_model_path


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


def model_head(src: Path) -> str:
    """'score' (an outcome reward model), 'token' (a process reward model) or 'lm', read from the adapter's task
    type or the model's architecture."""
    import json

    adapter = adapter_config(src)
    if adapter is not None:
        return {"SEQ_CLS": "score", "TOKEN_CLS": "token"}.get(adapter.get("task_type"), "lm")
    architectures = json.loads((src / "config.json").read_text()).get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "score"
    return "token" if any(a.endswith("ForTokenClassification") for a in architectures) else "lm"


def export_model(src: Path, out: Path) -> None:
    from posttrain.config import LoraConfig, ModelConfig
    from posttrain.models.loading import load_model, load_tokenizer

    head = model_head(src)
    model = load_model(ModelConfig(name_or_path=str(src)), LoraConfig(r=0), head=head)  # adapters merged
    tokenizer = load_tokenizer(str(src))
    if head != "lm" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    checkpoint.replace_dir(out.with_name(out.name + ".tmp"), out,
                           lambda d: (model.save_pretrained(d, safe_serialization=True), tokenizer.save_pretrained(d)))
