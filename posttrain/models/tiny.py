"""The embedded tiny model: a ~1.1M-parameter Llama and its character-level tokenizer.

Every command runs on a laptop CPU with no network when no model is given; this is the model it uses.
It is an ordinary Hugging Face Llama saved in the ordinary layout, so `AutoModelForCausalLM` and
`AutoTokenizer` load it without importing posttrain, and everything that works on it works on a real model.

Tokenizer — why character-level with byte fallback:
    * arithmetic (the built-in `arith` task) wants one token per digit; a BPE tokenizer trained on prose
      glues digits into irregular chunks ("132" → "13"+"2") and the tiny model then has to learn the
      chunking before it can learn to add;
    * any user text still round-trips exactly: a character outside printable ASCII becomes its UTF-8 bytes
      `<0xE4><0xBD><0xA0>` (Llama's byte fallback), and the decoder fuses the bytes back.

    ids   0..6     <pad> <s> </s> <unk> <|system|> <|user|> <|assistant|>
          7..101   the 95 printable ASCII characters: digits 7..16, a-z, A-Z, punctuation, space (101)
          102, 103 "\\n", "\\t"
          104..359 the byte tokens <0x00>..<0xFF>
    e.g.  encode("47+85=") → [11, 14, 79, 15, 12, 87]   (one id per character)

Model — Llama, hidden 128, MLP 512, 4 layers × 4 heads, tied embeddings, vocab 360 padded to 384:
    embeddings 384·128 = 49,152 + 4 layers × 262,400 + final norm 128 = 1,098,880 parameters.
"""

from __future__ import annotations

import os
import shutil
import string
import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

TINY_NAME = "tiny"
# Bump when the tokenizer or architecture changes, so stale caches are not reused.
_CACHE_VERSION = "tiny-v1"

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
CHARACTERS = [c for c in string.printable if c not in "\n\t\r\x0b\x0c"] + ["\n", "\t"]
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The character-level tokenizer with byte fallback (layout in the module docstring).

    No normalizer, no pre-tokenizer and no post-processor: text is never altered and no special token
    is added on encode, so `tok.decode(tok.encode(s)) == s` for every string s.

    >>> tok = build_tokenizer()
    >>> tok.convert_ids_to_tokens(tok.encode("é1"))
    ['<0xC3>', '<0xA9>', '1']
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS + BYTE_TOKENS)}
    # A BPE with no merges is a character lookup; byte_fallback spells unknown characters as UTF-8 bytes.
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    core.add_special_tokens(SPECIAL_TOKENS)
    core.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        padding_side="right", model_max_length=512, clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama for `tokenizer`; same seed → same weights.

    The global torch RNG is left exactly as it was (the init runs inside `fork_rng`), so building a
    model never shifts the random stream of the code around it.
    `overrides` replace LlamaConfig fields, e.g. `build_model(tok, hidden_size=512, num_hidden_layers=8)`.
    """
    fields = dict(
        vocab_size=-(-len(tokenizer) // 64) * 64,  # round up to a multiple of 64: friendlier matmul shapes
        hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-6, attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    fields.update(overrides)
    config = LlamaConfig(**fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return model


def save_tiny(path: str | os.PathLike, seed: int = 0, **overrides) -> Path:
    """Write the tiny model (safetensors), tokenizer and generation config into `path`; return it."""
    path = Path(path)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=seed, **overrides)
    model.save_pretrained(path)  # also writes generation_config.json
    tokenizer.save_pretrained(path)
    return path


def posttrain_home() -> Path:
    """Where posttrain caches things: $POSTTRAIN_HOME, default ~/.cache/posttrain."""
    return Path(os.environ.get("POSTTRAIN_HOME") or Path.home() / ".cache" / "posttrain")


def tiny_path(seed: int = 0) -> Path:
    """The cached tiny-model directory for `seed`, built on first use.

    It is built in a temporary sibling and renamed into place, so a crash or a concurrent build never
    leaves a half-written directory behind: the final name either does not exist or is complete.
    """
    final = posttrain_home() / f"{_CACHE_VERSION}-seed{seed}"
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        save_tiny(staging, seed=seed)
        os.rename(staging, final)
    except OSError:
        if not final.is_dir():  # a real failure, not a lost race
            raise
        # Another process finished first; its copy is identical (same seed), keep it.
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
