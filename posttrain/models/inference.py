"""A trained model outside its training loop: loaded frozen for inference, or written out as a plain Hugging Face
directory.

Both take what a user names: 'tiny', a model directory, a LoRA adapter directory (its base is read from
adapter_config.json) or a run directory (its final/, else its latest checkpoint's model/).
"""

from __future__ import annotations

from pathlib import Path

from posttrain import checkpoint
from posttrain.config import LoraConfig, ModelConfig
from posttrain.errors import UserError
from posttrain.models.loading import is_model_dir, load_model, load_tokenizer, model_head, resolve_model_path


def load_for_inference(name_or_path: str):
    """(frozen model in eval mode, tokenizer, model directory) from 'tiny', a model dir, an adapter dir or a run
    dir. An adapter is loaded on its base as trained (an adapter trained on a merged start: on that start)."""
    path = Path(resolve_model_path(name_or_path))
    if not is_model_dir(path):
        raise UserError(f"model '{name_or_path}' not found — fix: pass a model, adapter or run directory, or 'tiny'")
    model = load_model(ModelConfig(name_or_path=str(path)), LoraConfig())
    return model.eval().requires_grad_(False), load_tokenizer(str(path)), path


def export_model(src: Path, out: Path) -> None:
    """Write the model in `src` (a model or adapter directory) to `out` as a plain Hugging Face directory that
    transformers and vLLM load unchanged: LoRA adapters merged into their base (W + (alpha/r)·B·A), a reward
    model's head kept (…ForSequenceClassification / …ForTokenClassification) with the tokenizer's pad token in
    its config — the score head reads the last non-pad token, and transformers refuses a batch of more than one
    without it. Written atomically (out.tmp, then renamed)."""
    head = model_head(src)
    model = load_model(ModelConfig(name_or_path=str(src)), LoraConfig(r=0), head=head)  # adapters merged
    tokenizer = load_tokenizer(str(src))
    if head != "lm" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    checkpoint.replace_dir(out.with_name(out.name + ".tmp"), out,
                           lambda d: (model.save_pretrained(d, safe_serialization=True), tokenizer.save_pretrained(d)))
