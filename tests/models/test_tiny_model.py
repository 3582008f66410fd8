"""The embedded tiny model: exact tokenizer round-trip, ids, chat template, HF save/load, determinism."""

import os
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.models import tiny

VARIED_TEXTS = [
    "47+85=132", "Hello, World!", "  leading", "trailing\n\n", "a\tb\t\tc", "héllo wörld", "你好，世界",
    "🙂👍🏽", "\x00\x1f", "\r\n\x0b\x0c", "", " ", "mix: 1+1=2 → ok ✓ 你好 \t🙂\n",
    "<s> looks special </s> <|user|>", "<0x41> is not a byte token here",
]


@pytest.fixture(scope="module")
def tok():
    return tiny.build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny.build_model(tok, seed=0)


def random_unicode_texts(n=50, seed=0):
    """Strings of arbitrary code points, astral ones included, surrogates excluded."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(0, 30)):
            cp = rng.choice([rng.randint(0, 0x7F), rng.randint(0x80, 0xD7FF), rng.randint(0xE000, 0x10FFFF)])
            chars.append(chr(cp))
        texts.append("".join(chars))
    return texts


@pytest.mark.parametrize("text", VARIED_TEXTS + random_unicode_texts())
def test_tokenizer_round_trips_any_text(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_token_ids(tok):
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    assert tok.convert_tokens_to_ids(["<|system|>", "<|user|>", "<|assistant|>"]) == [4, 5, 6]
    assert tok.convert_tokens_to_ids(["<0x00>", "<0xFF>"]) == [104, 359]
    assert len(tok) == 360 and tok.padding_side == "right" and tok.model_max_length == 512


def test_one_token_per_digit_and_no_automatic_specials(tok):
    ids = tok.encode("1234567890")
    assert tok.convert_ids_to_tokens(ids) == list("1234567890")
    assert tok("ab")["input_ids"] == tok.encode("ab") == tok.convert_tokens_to_ids(["a", "b"])


def test_non_ascii_falls_back_to_utf8_bytes(tok):
    assert tok.convert_ids_to_tokens(tok.encode("é")) == ["<0xC3>", "<0xA9>"]


def test_chat_template_renders_hand_written_string(tok):
    messages = [{"role": "user", "content": "47+85="}, {"role": "assistant", "content": "132"}]
    assert tok.apply_chat_template(messages, tokenize=False) == (
        "<s><|user|>\n47+85=</s>\n<|assistant|>\n132</s>\n")
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<s><|user|>\n47+85=</s>\n<|assistant|>\n"
    # Role markers are single special tokens, so masking by token works.
    assert tok.encode(prompt)[:3] == [1, 5, tok.convert_tokens_to_ids("\n")]


def test_parameter_count_matches_hand_count(model):
    per_layer = 4 * 128 * 128 + 3 * 128 * 512 + 2 * 128  # q,k,v,o + gate,up,down + two RMSNorms
    expected = 384 * 128 + 4 * per_layer + 128           # tied embedding (vocab 360 → 384) + final norm
    n = sum(p.numel() for p in model.parameters())
    assert n == expected == 1_098_880
    assert 0.8e6 <= n <= 2e6
    assert model.config.vocab_size == 384 and model.config.tie_word_embeddings


def test_build_is_deterministic_and_leaves_global_rng_alone(tok, model):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    again = tiny.build_model(tok, seed=0)
    assert torch.equal(before, torch.get_rng_state())
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = tiny.build_model(tok, seed=1)
    assert not torch.equal(other.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_overrides_reach_the_config(tok):
    bigger = tiny.build_model(tok, hidden_size=64, num_hidden_layers=1, intermediate_size=128)
    assert (bigger.config.hidden_size, bigger.config.num_hidden_layers) == (64, 1)


def test_saved_directory_loads_with_plain_transformers(tmp_path, tok, model):
    path = tiny.save_tiny(tmp_path / "tiny", seed=0)
    loaded = AutoModelForCausalLM.from_pretrained(path)
    loaded_tok = AutoTokenizer.from_pretrained(path)
    assert (path / "model.safetensors").exists()

    text = "47+85=132 你好"
    assert loaded_tok.encode(text) == tok.encode(text)
    assert loaded_tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == \
        tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)
    gen = loaded.generation_config
    assert (gen.eos_token_id, gen.pad_token_id) == (2, 0)


def test_tiny_path_builds_once_and_atomically(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_HOME", str(tmp_path))
    path = tiny.tiny_path(seed=0)
    assert path == tmp_path / "tiny-v1-seed0" and (path / "model.safetensors").exists()
    stamp = os.stat(path / "model.safetensors").st_mtime_ns
    assert tiny.tiny_path(seed=0) == path                      # cached: not rebuilt
    assert os.stat(path / "model.safetensors").st_mtime_ns == stamp
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-v1-seed0"]  # no staging left


def test_tiny_path_keeps_the_winner_of_a_concurrent_build(tmp_path, monkeypatch):
    monkeypatch.setenv("POSTTRAIN_HOME", str(tmp_path))
    real_save = tiny.save_tiny
    winner = tmp_path / "tiny-v1-seed0"

    def save_while_another_process_finishes_first(path, seed=0):
        real_save(path, seed=seed)
        real_save(winner, seed=seed)  # the other process renames its copy in before we do

    monkeypatch.setattr(tiny, "save_tiny", save_while_another_process_finishes_first)
    assert tiny.tiny_path(seed=0) == winner
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-v1-seed0"]  # our staging copy removed
    assert AutoTokenizer.from_pretrained(winner).encode("1") == [8]
