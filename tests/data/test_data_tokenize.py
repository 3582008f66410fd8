"""Loss masks for SFT: exactly the assistant turns (+ their end token), prompt/completion, text, length policies.

Two local tokenizers stand in for real ones (no downloads):
  * `char_tok`: one token per character (byte fallback for the rest), with the tiny model's chat template;
  * `gpt2_tok`: a byte-level BPE with real multi-character merges and no chat template, like GPT-2
    (bos = eos = <|endoftext|>, no pad token).
"""

import string

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from posttrain.data import IGNORE_INDEX, DropReport, build_sft_examples, load_rows, normalize, tokenize_sft
from posttrain.errors import ConfigError, DataError

TINY_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def make_char_tokenizer(chat_template=TINY_TEMPLATE):
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    pieces = specials + [f"<0x{b:02X}>" for b in range(256)] + list(string.printable)
    tokenizer = Tokenizer(models.BPE(vocab={p: i for i, p in enumerate(pieces)}, merges=[], byte_fallback=True,
                                     unk_token="<unk>"))
    tokenizer.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    tokenizer.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", chat_template=chat_template)


def make_gpt2_like_tokenizer():
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["The quick brown fox jumps over the lazy dog.", "Hello world, hello there! What is two plus two?"]
    tokenizer.train_from_iterator(corpus * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>")


@pytest.fixture(scope="module")
def char_tok():
    return make_char_tokenizer()


@pytest.fixture(scope="module")
def gpt2_tok():
    return make_gpt2_like_tokenizer()


def trained_spans(tokenizer, example):
    """Decode each run of consecutive trained tokens, e.g. ["Hello!</s>", "Bye.</s>"]."""
    runs, current = [], []
    for token, label in zip(example["input_ids"], example["labels"]):
        if label != IGNORE_INDEX:
            assert label == token  # labels are unshifted copies of the trained tokens
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    return [tokenizer.decode(run) for run in runs]


CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello. How can I help?"},
    {"role": "user", "content": "What is 2+2? Say it in words, é."},
    {"role": "assistant", "content": "Four, ü."},
]


def test_multi_turn_loss_is_exactly_the_assistant_turns_with_eos(char_tok):
    example = tokenize_sft({"messages": CONVERSATION}, char_tok)
    assert char_tok.decode(example["input_ids"]) == (
        "<s><|system|>\nYou are terse.</s>\n<|user|>\nHi!</s>\n<|assistant|>\nHello. How can I help?</s>\n"
        "<|user|>\nWhat is 2+2? Say it in words, é.</s>\n<|assistant|>\nFour, ü.</s>\n")
    assert trained_spans(char_tok, example) == ["Hello. How can I help?</s>", "Four, ü.</s>"]
    assert len(example["labels"]) == len(example["input_ids"])


def test_assistant_mask_with_multi_character_tokens_and_another_template():
    tokenizer = make_gpt2_like_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML_TEMPLATE
    example = tokenize_sft({"messages": CONVERSATION}, tokenizer)
    assert any(len(tokenizer.decode([t])) > 2 for t in example["input_ids"])  # really multi-character tokens
    assert trained_spans(tokenizer, example) == ["Hello. How can I help?<|im_end|>", "Four, ü.<|im_end|>"]


def test_prompt_completion_with_template_is_a_user_assistant_chat(char_tok):
    example = tokenize_sft({"prompt": "2+2?", "completion": "4"}, char_tok)
    assert char_tok.decode(example["input_ids"]) == "<s><|user|>\n2+2?</s>\n<|assistant|>\n4</s>\n"
    assert trained_spans(char_tok, example) == ["4</s>"]


def test_conversational_prompt_completion_trains_only_the_completion(char_tok):
    few_shot = [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
                {"role": "user", "content": "2+2?"}]
    example = tokenize_sft({"prompt": few_shot, "completion": [{"role": "assistant", "content": "4"}]}, char_tok)
    assert trained_spans(char_tok, example) == ["4</s>"]  # not the "2" in the prompt


@pytest.mark.parametrize("which", ["char", "gpt2"])
def test_prompt_completion_without_template(char_tok, gpt2_tok, which):
    tokenizer = char_tok if which == "char" else gpt2_tok
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    example = tokenize_sft({"prompt": "Hello world,", "completion": " the quick fox"}, tokenizer,
                           use_chat_template=False)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert example["input_ids"] == [bos] + ids("Hello world,") + ids(" the quick fox") + [eos]
    assert example["labels"] == [IGNORE_INDEX] * (1 + len(ids("Hello world,"))) + ids(" the quick fox") + [eos]


def test_gpt2_like_tokenizer_without_template_defaults_to_plain(gpt2_tok):
    assert gpt2_tok.chat_template is None
    assert trained_spans(gpt2_tok, tokenize_sft({"prompt": "Hi", "completion": " there"}, gpt2_tok)) == \
        [" there<|endoftext|>"]


@pytest.mark.parametrize("which", ["char", "gpt2"])
def test_text_trains_everything_but_bos(char_tok, gpt2_tok, which):
    tokenizer = char_tok if which == "char" else gpt2_tok
    body = tokenizer("The lazy dog.", add_special_tokens=False)["input_ids"]
    example = tokenize_sft({"text": "The lazy dog."}, tokenizer)
    assert example["input_ids"] == [tokenizer.bos_token_id] + body + [tokenizer.eos_token_id]
    assert example["labels"] == [IGNORE_INDEX] + body + [tokenizer.eos_token_id]


def test_messages_without_a_chat_template_is_a_config_error(gpt2_tok):
    with pytest.raises(ConfigError, match="needs a chat template"):
        tokenize_sft({"messages": CONVERSATION}, gpt2_tok)
    with pytest.raises(ConfigError, match="no chat template"):
        tokenize_sft({"prompt": "a", "completion": "b"}, gpt2_tok, use_chat_template=True)


def test_template_that_rewrites_earlier_turns_is_reported_with_its_row():
    # Renders the last message differently ("[final]"), so a prefix rendering is not a prefix of the full one.
    rewriting = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% if loop.last %} [final]{% endif %}"
                 "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    tokenizer = make_char_tokenizer(chat_template=rewriting)
    rows = load_rows([{"text": "fine"}, {"messages": CONVERSATION[1:]}], name="chats.jsonl")
    with pytest.raises(DataError, match=r"chats\.jsonl, row 2, field 'messages': the chat template renders message"):
        build_sft_examples(rows, tokenizer, max_length=1000)


# ---- length policies ----------------------------------------------------------------------------------------

def length_rows():
    """Four rows: token counts 8, 60, 17 and 60 with the char tokenizer and no template (bos + chars + eos)."""
    return load_rows([
        {"text": "short!"},                              # 1 + 6 + 1 = 8 tokens
        {"prompt": "p" * 50, "completion": "c" * 8},     # 1 + 50 + 8 + 1 = 60, completion starts at token 51
        {"prompt": "2+2?", "completion": "4 of course"},  # 1 + 4 + 11 + 1 = 17
        {"text": "t" * 58},                              # 1 + 58 + 1 = 60
    ], name="lengths.jsonl")


def test_too_long_with_error_policy_names_the_row(char_tok):
    with pytest.raises(DataError, match=r"lengths\.jsonl, row 2: 60 tokens is longer than data\.max_length=20"
                                        r".*fix: raise data\.max_length, or set data\.truncation"):
        build_sft_examples(length_rows(), char_tok, max_length=20, use_chat_template=False)


def test_drop_policy_counts_too_long(char_tok):
    examples, report = build_sft_examples(length_rows(), char_tok, max_length=20, truncation="drop",
                                          use_chat_template=False)
    assert [len(e["input_ids"]) for e in examples] == [8, 17]
    assert report.summary() == "dropped 2 of 4 rows (too_long: 2)"
    assert report.kept == 2


def test_truncate_policy_keeps_the_head_and_drops_rows_left_without_loss(char_tok):
    examples, report = build_sft_examples(length_rows(), char_tok, max_length=20, truncation="truncate",
                                          use_chat_template=False)
    # row 2's completion starts at token 51: nothing trained survives the cut; row 4 is text, trained throughout
    assert [len(e["input_ids"]) for e in examples] == [8, 17, 20]
    assert examples[2]["input_ids"] == [char_tok.bos_token_id] + [char_tok.convert_tokens_to_ids("t")] * 19
    assert examples[2]["labels"] == [IGNORE_INDEX] + examples[2]["input_ids"][1:]
    assert report.summary() == "dropped 1 of 4 rows (no_loss_tokens_after_truncation: 1)"


def test_all_rows_dropped_is_an_error(char_tok):
    with pytest.raises(DataError, match=r"lengths\.jsonl: every row was dropped: dropped 4 of 4 rows \(too_long: 4\)"):
        build_sft_examples(length_rows(), char_tok, max_length=5, truncation="drop", use_chat_template=False)


def test_unknown_truncation_policy(char_tok):
    with pytest.raises(ConfigError, match="error, drop, truncate"):
        build_sft_examples(length_rows(), char_tok, max_length=20, truncation="cut")


def test_drop_report_summary_worked_example():
    report = DropReport(total=100)
    for reason in ["no_loss_tokens_after_truncation", "too_long", "too_long"]:
        report.add(reason)
    assert report.summary() == "dropped 3 of 100 rows (too_long: 2, no_loss_tokens_after_truncation: 1)"
    assert DropReport(total=5).summary() == "dropped 0 of 5 rows"


def test_end_to_end_from_alpaca_rows(char_tok):
    rows = normalize([{"instruction": "Add.", "input": "2, 3", "output": "5"}], kind="sft")
    (example,), report = build_sft_examples(rows, char_tok, max_length=100)
    assert char_tok.decode(example["input_ids"]) == "<s><|user|>\nAdd.\n\n2, 3</s>\n<|assistant|>\n5</s>\n"
    assert trained_spans(char_tok, example) == ["5</s>"]
    assert report.summary() == "dropped 0 of 1 rows"
