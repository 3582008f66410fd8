"""rollout/beam.py: the docstring's worked example, token-for-token parity with HF `generate` beam search on two
architectures, and beam search against exhaustive search on an 8-token vocabulary."""

import itertools
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from posttrain.models.tiny import build_model, build_tokenizer
from posttrain.rollout.beam import BeamHypothesis, beam_search, exhaustive_search

MAX_NEW = 6
# num_beams, length_penalty, early_stopping, num_return_sequences
SETTINGS = [s for s in itertools.product((1, 3, 4), (0.0, 1.0, 2.0), (False, True, "never"), (1, 2)) if s[3] <= s[0]]


def seeded(build, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second thread only adds synchronisation (and a lot under CPU contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models():
    gpt2 = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=384, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return {"llama": build_model(build_tokenizer()).eval(), "gpt2": seeded(lambda: GPT2LMHeadModel(gpt2))}


@pytest.fixture(scope="module")
def small_vocab_model():
    """1-layer Llama over 8 tokens; init 0.3 (not 0.02) so the sequence log-probs are well separated."""
    config = LlamaConfig(vocab_size=8, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, initializer_range=0.3,
                         tie_word_embeddings=False)
    return seeded(lambda: LlamaForCausalLM(config))


# ---- worked examples on a bigram model -------------------------------------------------------------------

def bigram_llama(table):
    """A real HF Llama whose next-token distribution is table[last token]: no layers, one-hot embeddings.

    RMSNorm turns the one-hot embedding of token i into √V · e_i, so lm_head = log(table)ᵀ / √V gives
    logits log(table[i]). Zero probabilities become 1e-9 (a -inf weight would make the matmul NaN).
    """
    vocab = len(table)
    config = LlamaConfig(vocab_size=vocab, hidden_size=vocab, intermediate_size=4, num_hidden_layers=0,
                         num_attention_heads=1, num_key_value_heads=1, tie_word_embeddings=False,
                         head_dim=2,  # there is no attention, but the config's RoPE check wants an even head_dim
                         rms_norm_eps=1e-12)
    model = seeded(lambda: LlamaForCausalLM(config))
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab))
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight.copy_(torch.tensor(table).clamp(min=1e-9).log().T / math.sqrt(vocab))
    return model


def hf_beams(model, prompt, max_new_tokens, eos, **kwargs):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=max_new_tokens,
                         eos_token_id=eos, pad_token_id=eos, return_dict_in_generate=True, output_scores=True,
                         **kwargs)
    completions = []
    for row in out.sequences[:, len(prompt):].tolist():
        completions.append(row[:row.index(eos) + 1] if eos in row else row)
    return completions, out.sequences_scores.tolist()


def test_worked_example():
    third = 1 / 3
    model = bigram_llama([[0.0, 0.6, 0.3, 0.1],  # after the prompt's last token (0)
                          [0.0, 0.8, 0.1, 0.1],  # after 1
                          [0.0, third, third, third],  # after 2 (eos: never extended)
                          [0.0, third, third, third]])  # after 3
    best, second = beam_search(model, [0], num_beams=2, max_new_tokens=2, eos_token_id=2, num_return_sequences=2)
    assert best.ids == [1, 1] and second.ids == [2]
    assert best.logprob == pytest.approx(math.log(0.48), abs=1e-6)
    assert best.score == pytest.approx(math.log(0.48) / 2, abs=1e-6)  # −0.367: length 2
    assert second.score == second.logprob == pytest.approx(math.log(0.3), abs=1e-6)  # −1.204: length 1 (the eos)
    ids, scores = hf_beams(model, [0], 2, 2, num_beams=2, num_return_sequences=2)
    assert ids == [[1, 1], [2]] and scores == pytest.approx([best.score, second.score], abs=1e-6)


def test_early_stopping_false_can_cut_off_the_best_hypothesis():
    """HF's default stop test assumes running beams do not grow longer — not a bound when length_penalty > 0.

    eos = 2, num_beams 2, length_penalty 1 (score = mean log-prob), max_new_tokens 3.
    step 1  [2] ln 0.5 = −0.693 finishes; running [1] ln 0.3 = −1.204, [3] ln 0.2 = −1.609
    step 2  [3, 2] −1.609 + ln 0.9 = −1.715 finishes (score −0.857): the list is full. Best running beam
            [1, 4] −1.204 + ln 0.5 = −1.897. early_stopping=False bounds it by −1.897 / 2 = −0.949 ≤ −0.857:
            stop. "never" bounds it by −1.897 / 3 = −0.632 > −0.857: go on.
    step 3  [1, 4, 4] −1.897 + ln 0.99 = −1.907, score −0.636: better than every hypothesis found before.
    """
    model = bigram_llama([[0.0, 0.3, 0.5, 0.2, 0.0],  # after the prompt (0)
                          [0.0, 0.3, 0.05, 0.15, 0.5],  # after 1
                          [0.2, 0.2, 0.2, 0.2, 0.2],  # after 2 (eos)
                          [0.0, 0.05, 0.9, 0.0, 0.05],  # after 3
                          [0.0, 0.005, 0.005, 0.0, 0.99]])  # after 4
    expected = {False: [[2], [3, 2]], True: [[2], [3, 2]], "never": [[1, 4, 4], [2]]}
    for early_stopping, ids in expected.items():
        got = beam_search(model, [0], num_beams=2, num_return_sequences=2, max_new_tokens=3, eos_token_id=2,
                          early_stopping=early_stopping)
        assert [h.ids for h in got] == ids, early_stopping
        hf_ids, hf_scores = hf_beams(model, [0], 3, 2, num_beams=2, num_return_sequences=2,
                                     early_stopping=early_stopping)
        assert hf_ids == ids and hf_scores == pytest.approx([h.score for h in got], abs=1e-6), early_stopping
    assert got[0].score == pytest.approx(math.log(0.3 * 0.5 * 0.99) / 3, abs=1e-6)  # −0.636


def test_several_eos_ids_keep_more_candidates():
    """Why K = (1 + #eos ids) · num_beams: with eos ids 2 and 4, num_beams 2, the 4 best candidates of step 2
    all end in an eos — with K = 4 no beam would be left to run on.

    step 1  [1] ln 0.5, [3] ln 0.4 run on (the eos candidates rank 3rd and 4th: not eligible)
    step 2  [1, 2], [1, 4] at ln 0.5 + ln 0.45 = −1.492 finish (score −0.746); [3, 2], [3, 4] rank 3rd and 4th;
            5th and 6th: [1, 5] −0.693 + ln 0.1 = −2.996 and [3, 5] −3.219 run on ("never": bound −2.996 / 5)
    step 5  [1, 5, 5, 5, 5] −2.999 → score −0.600 and [3, 5, 5, 5, 5] → −0.645 beat both eos hypotheses.
    """
    eos_row = [0.0, 0.0, 0.45, 0.0, 0.45, 0.1, 0.0]
    uniform = [1 / 7] * 7
    model = bigram_llama([[0.0, 0.5, 0.05, 0.4, 0.05, 0.0, 0.0],  # after the prompt (0)
                          eos_row, uniform, eos_row, uniform,  # after 1, 2 (eos), 3, 4 (eos)
                          [0.0, 0.0, 0.0005, 0.0, 0.0005, 0.999, 0.0],  # after 5
                          uniform])
    got = beam_search(model, [0], num_beams=2, num_return_sequences=2, max_new_tokens=5, eos_token_id=[2, 4],
                      early_stopping="never")
    assert [h.ids for h in got] == [[1, 5, 5, 5, 5], [3, 5, 5, 5, 5]]
    assert got[0].score == pytest.approx(math.log(0.5 * 0.1 * 0.999 ** 3) / 5, abs=1e-6)
    ids = torch.tensor([[0]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=2,
                         num_return_sequences=2, max_new_tokens=5, eos_token_id=[2, 4], pad_token_id=0,
                         early_stopping="never", return_dict_in_generate=True, output_scores=True)
    assert out.sequences[:, 1:].tolist() == [h.ids for h in got]
    assert out.sequences_scores.tolist() == pytest.approx([h.score for h in got], abs=1e-6)


def test_exhaustive_docstring_example_sums_to_one():
    model = bigram_llama([[1 / 3] * 3] * 3)
    completions = exhaustive_search(model, [0], max_new_tokens=2, eos_token_id=2)
    assert len(completions) == 7 and completions[0] == ([2], pytest.approx(math.log(1 / 3)))
    assert sorted(ids for ids, _ in completions[1:]) == [[a, b] for a in (0, 1) for b in (0, 1, 2)]
    assert sum(math.exp(lp) for _, lp in completions) == pytest.approx(1.0)


# ---- parity with Hugging Face generate ----------------------------------------------------------------------

def hf_beam_search(model, prompt, num_beams, length_penalty, early_stopping, num_return_sequences, eos):
    ids = torch.tensor([prompt])
    beam_only = dict(length_penalty=length_penalty, early_stopping=early_stopping) if num_beams > 1 else {}
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=num_beams,
                         num_return_sequences=num_return_sequences, max_new_tokens=MAX_NEW, eos_token_id=eos,
                         pad_token_id=0, return_dict_in_generate=True, output_scores=True, **beam_only)
    eos = eos if isinstance(eos, list) else [eos]
    completions = []
    for row in out.sequences[:, len(prompt):].tolist():  # cut HF's padding after the first eos
        ends = [i for i, t in enumerate(row) if t in eos]
        completions.append(row[:ends[0] + 1] if ends else row)
    scores = out.sequences_scores.tolist() if num_beams > 1 else None  # greedy reports no sequence score
    return completions, scores


def runner_up_after_greedy(model, prompt, steps):
    """The second most likely token after `steps` greedy tokens."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            ids.append(model(torch.tensor([ids])).logits[0, -1].argmax().item())
        return model(torch.tensor([ids])).logits[0, -1].argsort(descending=True)[1].item()


@pytest.mark.parametrize("name", ["llama", "gpt2"])
@pytest.mark.parametrize("eos_kind", ["one", "two"])
def test_matches_hf_generate(models, name, eos_kind):
    model, prompt = models[name], [1, 20, 30, 40]
    # A random model almost never emits a fixed eos id. Declaring likely tokens to be eos (runners-up along the
    # greedy path) makes hypotheses end at many lengths, which is what exercises the finishing and stopping rules.
    late = runner_up_after_greedy(model, prompt, 2)
    eos = late if eos_kind == "one" else [runner_up_after_greedy(model, prompt, 0), late]
    lengths = set()
    for num_beams, length_penalty, early_stopping, num_return in SETTINGS:
        expected, scores = hf_beam_search(model, prompt, num_beams, length_penalty, early_stopping, num_return, eos)
        got = beam_search(model, prompt, num_beams=num_beams, max_new_tokens=MAX_NEW, eos_token_id=eos,
                          length_penalty=length_penalty, early_stopping=early_stopping,
                          num_return_sequences=num_return)
        setting = (num_beams, length_penalty, early_stopping, num_return)
        assert [h.ids for h in got] == expected, setting
        if scores is not None:
            assert [h.score for h in got] == pytest.approx(scores, abs=1e-4), setting
        lengths |= {len(ids) for ids in expected}
    # Not vacuous: some hypotheses ended at an eos after a few tokens, others ran to max_new_tokens.
    assert any(1 < n < MAX_NEW for n in lengths) and MAX_NEW in lengths, lengths


def test_one_beam_is_greedy(models):
    model, prompt = models["gpt2"], [1, 50, 60]
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(8):  # greedy by hand: full forward, argmax, no cache
            ids.append(model(torch.tensor([ids])).logits[0, -1].argmax().item())
    (hyp,) = beam_search(model, prompt, num_beams=1, max_new_tokens=8, eos_token_id=2)
    assert hyp.ids == ids[len(prompt):]


# ---- beam search against exhaustive search ----------------------------------------------------------------

def test_exhaustive_probabilities_sum_to_one(small_vocab_model):
    # No eos: exactly the 8³ sequences of length 3. With eos: every prefix ends at eos or at length 3, so the
    # completions still partition the probability mass (1 + 7 + 7² + 7³ = 400 of them).
    fixed = exhaustive_search(small_vocab_model, [1], max_new_tokens=3, eos_token_id=[])
    with_eos = exhaustive_search(small_vocab_model, [1], max_new_tokens=3, eos_token_id=2)
    for completions, count in ((fixed, 8 ** 3), (with_eos, 400)):
        assert len(completions) == count
        total = torch.logsumexp(torch.tensor([lp for _, lp in completions], dtype=torch.float64), 0).exp()
        assert total.item() == pytest.approx(1.0, abs=1e-6)
    assert [lp for _, lp in fixed] == sorted((lp for _, lp in fixed), reverse=True)


def test_wide_beam_finds_the_exhaustive_argmax(small_vocab_model):
    model, prompt = small_vocab_model, [1]
    exhaustive = exhaustive_search(model, prompt, max_new_tokens=3, eos_token_id=[])
    (best_ids, best_logprob), (_, runner_up) = exhaustive[:2]
    assert best_logprob - runner_up > 1e-2  # a clear winner, so the comparison is not decided by rounding

    # Narrow beams miss it on this prompt (greedy commits to a likely first token with poor continuations) …
    assert beam_search(model, prompt, num_beams=1, max_new_tokens=3, eos_token_id=[])[0].ids != best_ids
    # … a beam as wide as the tree keeps every prefix, so it returns every sequence in exhaustive order.
    wide = beam_search(model, prompt, num_beams=8 ** 3, num_return_sequences=8 ** 3, max_new_tokens=3,
                       eos_token_id=[], length_penalty=0.0)
    assert wide[0].ids == best_ids
    assert [h.ids for h in wide] == [ids for ids, _ in exhaustive]
    assert [h.logprob for h in wide] == pytest.approx([lp for _, lp in exhaustive], abs=1e-4)


def test_wide_beam_with_eos_and_length_penalty(small_vocab_model):
    model, prompt = small_vocab_model, [1]
    exhaustive = exhaustive_search(model, prompt, max_new_tokens=3, eos_token_id=2)
    for length_penalty in (0.0, 1.0, 2.0):
        scored = sorted(((lp / len(ids) ** length_penalty, ids) for ids, lp in exhaustive), reverse=True)
        assert scored[0][0] - scored[1][0] > 1e-3
        (best,) = beam_search(model, prompt, num_beams=400, max_new_tokens=3, eos_token_id=2,
                              length_penalty=length_penalty)
        assert best.ids == scored[0][1] and best.score == pytest.approx(scored[0][0], abs=1e-4)


def test_vocab_limit_truncates_the_tree(small_vocab_model):
    full = dict((tuple(ids), lp) for ids, lp in
                exhaustive_search(small_vocab_model, [1], max_new_tokens=3, eos_token_id=[]))
    limited = exhaustive_search(small_vocab_model, [1], max_new_tokens=3, eos_token_id=[], vocab_limit=2)
    assert len(limited) == 2 ** 3
    assert all(full[tuple(ids)] == pytest.approx(lp, abs=1e-9) for ids, lp in limited)  # full-model log-probs
    # Truncation can lose the true best: here its first token is not among the 2 most likely ones.
    assert limited[0][0] != list(max(full, key=full.get))


def test_exhaustive_refuses_huge_trees(models):
    with pytest.raises(ValueError, match="56,623,104"):  # 384³
        exhaustive_search(models["llama"], [1], max_new_tokens=3, eos_token_id=2)


def test_argument_errors(small_vocab_model):
    with pytest.raises(ValueError, match="num_return_sequences"):
        beam_search(small_vocab_model, [1], num_beams=2, num_return_sequences=3, max_new_tokens=2, eos_token_id=2)
    with pytest.raises(ValueError, match="early_stopping"):
        beam_search(small_vocab_model, [1], num_beams=2, max_new_tokens=2, eos_token_id=2, early_stopping="always")
    with pytest.raises(ValueError, match="prompt"):
        beam_search(small_vocab_model, [], num_beams=2, max_new_tokens=2, eos_token_id=2)
    assert isinstance(beam_search(small_vocab_model, [1], num_beams=2, max_new_tokens=2, eos_token_id=2)[0],
                      BeamHypothesis)
