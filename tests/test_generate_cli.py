"""`posttrain generate` and `posttrain chat` through the real entry points."""

import importlib.util
import io
import json

import pytest
import torch

from conftest import run_cli, write_jsonl
from posttrain import cli, config as C
from posttrain.generate import run_chat


def test_generate_writes_one_line_per_sample_and_is_reproducible(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "12+3="}, {"prompt": "héllo 🙂"}, {"prompt": "7+8="}])
    args = ["generate", f"data_path={prompts}", "sampling.n=2", "sampling.max_new_tokens=5", "seed=3"]
    assert cli.main([*args, f"output={tmp_path}/a.jsonl"]) == 0
    assert cli.main([*args, f"output={tmp_path}/b.jsonl", "rollout.batch_size=1"]) == 0
    a = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert len(a) == 6 and [r["sample_index"] for r in a] == [0, 1] * 3
    # same seed, different batching: the same samples (log-probs to float tolerance: padding changes sums)
    assert [{k: v for k, v in r.items() if k != "logprob"} for r in a] == \
        [{k: v for k, v in r.items() if k != "logprob"} for r in b]
    assert all(abs(x["logprob"] - y["logprob"]) < 1e-4 for x, y in zip(a, b))
    assert all(r["num_tokens"] <= 5 and r["finish_reason"] in ("stop", "length") for r in a)


def test_generate_on_the_task_reports_scores_and_greedy_stop_strings(tmp_path):
    proc = run_cli("generate", f"output={tmp_path}/g.jsonl", "num_prompts=4", "sampling.temperature=0",
                   "sampling.max_new_tokens=8", "sampling.stop_strings=1", check=True)
    rows = [json.loads(line) for line in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all("score" in r for r in rows) and "mean score" in proc.stdout
    assert all("1" not in r["completion"] for r in rows)  # cut at the stop string


def test_generate_bad_sampling_value_exits_2(tmp_path, capsys):
    assert cli.main(["generate", f"output={tmp_path}/x.jsonl", "sampling.top_p=1.5"]) == 2
    assert "top_p" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_chat_keeps_the_conversation_and_resets():
    cfg = C.ChatConfig(system="Be brief.", sampling=C.SamplingParams(temperature=0, max_new_tokens=4))
    out = io.StringIO()
    messages = run_chat(cfg, stdin=io.StringIO("hi\nagain\n/reset\nnew\n/exit\n"), stdout=out)
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[1]["content"] == "new"
    assert out.getvalue().count("model> ") == 3


def test_generate_with_beam_search_equals_hf_beam_search(tmp_path):
    from transformers import AutoModelForCausalLM
    from posttrain.models.loading import load_tokenizer
    from posttrain.models.tiny import tiny_path
    from posttrain.rollout import format_prompt

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "12+3="}, {"prompt": "40+41="}])
    assert cli.main(["generate", f"data_path={prompts}", f"output={tmp_path}/beam.jsonl", "beam.num_beams=3",
                     "beam.num_return_sequences=2", "sampling.max_new_tokens=6"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "beam.jsonl").read_text().splitlines()]
    assert [r["sample_index"] for r in rows] == [0, 1, 0, 1]
    tokenizer, model = load_tokenizer(tiny_path()), AutoModelForCausalLM.from_pretrained(tiny_path()).eval()
    for i, prompt in enumerate(["12+3=", "40+41="]):
        ids = torch.tensor([format_prompt(tokenizer, prompt, use_chat_template=True)])
        hf = model.generate(ids, attention_mask=torch.ones_like(ids), num_beams=3, num_return_sequences=2,
                            do_sample=False, max_new_tokens=6, output_scores=True, return_dict_in_generate=True,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        expected = tokenizer.batch_decode(hf.sequences[:, ids.shape[1]:], skip_special_tokens=True)
        assert [r["completion"] for r in rows[2 * i:2 * i + 2]] == expected
        scores = [r["beam_score"] for r in rows[2 * i:2 * i + 2]]
        assert torch.allclose(torch.tensor(scores), hf.sequences_scores, atol=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None,
                    reason="vLLM is here: tests/rollout/test_vllm.py runs the real engine")
def test_vllm_engine_without_vllm_exits_2_with_the_fix(tmp_path, capsys):
    assert cli.main(["generate", f"output={tmp_path}/v.jsonl", "rollout.engine=vllm", "num_prompts=1"]) == 2
    err = capsys.readouterr().err
    assert "vllm" in err.lower() and "fix" in err
    assert not (tmp_path / "v.jsonl").exists()
