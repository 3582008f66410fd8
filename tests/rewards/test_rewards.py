"""posttrain.rewards: user reward code in a worker process (failures counted by reason, hangs killed and the worker
restarted, loading errors before training), the verifier, the reward model (agrees with a direct forward, whatever
the batch size), the weighted sum, the metrics and the unscorable guard."""

import math
import os
import textwrap
import time

import pytest
import torch

from posttrain.errors import UserError
from posttrain.rewards import (FAILURE_REASONS, FileReward, ModelReward, ScoredBatch, UnscorableGuard, VerifierReward,
                               load_reward_model, reward_metrics, score_all)
from posttrain.tasks.arith import ArithTask


def write(tmp_path, source: str, name: str = "my_reward.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


def rows_for(completions, **columns):
    return [{"prompt": "p", **columns} for _ in completions]


# ---- user code in a worker process ----------------------------------------------------------------------------------

def test_exceptions_leave_those_samples_unscored_and_the_others_scored(tmp_path):
    path = write(tmp_path, """
        def reward(prompt, completion, **row):
            return 1 / int(completion)
    """)
    completions = ["2", "0", "x", "4"]
    with FileReward(path) as source:
        batch = score_all([(source, 1.0)], ["p"] * 4, completions, rows_for(completions))
    assert batch.scored.tolist() == [True, False, False, True]
    assert batch.rewards.tolist() == [0.5, 0.0, 0.0, 0.25]
    assert batch.failures == {"exception": 2, "none": 0, "nan": 0, "timeout": 0}
    assert "ZeroDivisionError" in batch.first_error["exception"] and "(line 3)" in batch.first_error["exception"]
    assert "sample 1" in batch.first_error["exception"]


def test_none_nan_inf_and_non_numbers_are_counted_by_reason(tmp_path):
    path = write(tmp_path, """
        def reward(prompt, completion, **row):
            return {"none": None, "nan": float("nan"), "inf": float("-inf"), "text": "1.0", "int": 7}[completion]
    """)
    completions = ["none", "nan", "inf", "text", "int"]
    with FileReward(path) as source:
        outcomes = source.outcomes(["p"] * 5, completions, rows_for(completions))
    assert [o.reason for o in outcomes] == ["none", "nan", "nan", "exception", None]
    assert outcomes[4].value == 7.0 and "not a number" in outcomes[3].detail


def test_a_hang_is_killed_after_the_timeout_and_the_restarted_worker_scores_the_rest(tmp_path):
    path = write(tmp_path, """
        import os, time
        def reward(prompt, completion, **row):
            if completion == "hang":
                time.sleep(60)
            if completion == "pid":
                return os.getpid()
            return len(completion)
    """)
    completions = ["pid", "pid", "hang", "abc", "pid"]
    with FileReward(path, timeout_s=1.0) as source:
        start = time.perf_counter()
        outcomes = source.outcomes(["p"] * 5, completions, rows_for(completions))
        elapsed = time.perf_counter() - start
    assert elapsed < 20  # liveness: the 60 s sleep must not block the run
    assert outcomes[2].value is None and outcomes[2].reason == "timeout"
    assert outcomes[3].value == 3.0
    assert outcomes[0].value == outcomes[1].value  # one worker, reused across samples
    assert outcomes[4].value not in (None, outcomes[0].value)  # a new worker after the hang


def test_close_and_the_with_block_end_the_worker(tmp_path):
    path = write(tmp_path, """
        import os
        def reward(prompt, completion, **row):
            return os.getpid()
    """)
    with FileReward(path) as source:
        pid = int(source.score(["p"], ["c"], [{}])[0])
        os.kill(pid, 0)  # alive while the source is open
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_row_columns_reach_the_function_as_keywords_per_sample_and_batched(tmp_path):
    path = write(tmp_path, """
        def reward(prompt, completion, answer, bonus=0, **row):
            return float(completion == answer) + bonus

        def batched(prompts, completions, answer, bonus, **columns):
            return [float(c == a) + (b or 0) for c, a, b in zip(completions, answer, bonus)]
    """)
    completions = ["12", "13", "7"]
    rows = [{"prompt": "5+7=", "answer": "12"}, {"prompt": "6+7=", "answer": "13", "bonus": 10},
            {"prompt": "3+3=", "answer": "6"}]  # `prompt` is passed once, as the sample's own; a missing column: None
    prompts = [r["prompt"] for r in rows]
    with FileReward(path) as one, FileReward(path, "batched", batched=True, name="batched") as many:
        assert one.score(prompts, completions, rows) == [1.0, 11.0, 0.0]
        assert many.score(prompts, completions, rows) == [1.0, 11.0, 0.0]


def test_a_batched_function_that_raises_leaves_the_whole_batch_unscored(tmp_path):
    path = write(tmp_path, """
        def reward(prompts, completions, **columns):
            raise KeyError("answer")
    """)
    with FileReward(path, batched=True) as source:
        outcomes = source.outcomes(["p"] * 3, ["a", "b", "c"], [{}] * 3)
    assert [o.reason for o in outcomes] == ["exception"] * 3 and "KeyError" in outcomes[0].detail


def test_a_batched_function_returning_the_wrong_length_is_a_user_error(tmp_path):
    path = write(tmp_path, """
        def reward(prompts, completions, **columns):
            return [1.0]
    """)
    with FileReward(path, batched=True) as source:
        with pytest.raises(UserError, match=r"a list of 1 values for a batch of 3 .*expected a list of 3") as e:
            source.score(["p"] * 3, ["a", "b", "c"], [{}] * 3)
    assert "my_reward.py:reward" in str(e.value)


@pytest.mark.parametrize("source, function, expected", [
    (None, "reward", "does not exist"),
    ("def reward(prompt, completion:\n    return 1\n", "reward", "syntax error"),
    ("def other(prompt, completion, **row):\n    return 1\n", "reward", "no function 'reward' (it defines other)"),
    ("import no_such_module_here\n", "reward", "ModuleNotFoundError"),
])
def test_loading_errors_are_user_errors_naming_the_file_when_the_source_is_built(tmp_path, source, function,
                                                                                  expected):
    path = tmp_path / "broken_reward.py"
    if source is not None:
        path.write_text(source)
    with pytest.raises(UserError, match="broken_reward.py") as e:
        FileReward(path, function)
    assert expected in str(e.value) and "fix:" in str(e.value)


def test_from_spec_reads_file_and_function(tmp_path):
    path = write(tmp_path, """
        def shout(prompt, completion, **row):
            return 2.0
    """)
    with FileReward.from_spec(f"{path}:shout", timeout_s=5.0) as source:
        assert (source.function, source.timeout_s, source.name) == ("shout", 5.0, "my_reward")
        assert source.score(["p"], ["c"], [{}]) == [2.0]


# ---- the verifier, the weighted sum ---------------------------------------------------------------------------------

def test_verifier_scores_the_arith_task_and_a_raising_verifier_leaves_samples_unscored():
    task = ArithTask(max_digits=2)
    rows = [{"prompt": "47+85=", "answer": "132"}, {"prompt": "52-17=", "answer": "35"}]
    verifier = VerifierReward(task.score)
    assert verifier.score([r["prompt"] for r in rows], ["132", "34"], rows) == [1.0, 0.0]

    def broken(prompt, completion, **row):
        return int(completion) / 0

    outcomes = VerifierReward(broken).outcomes(["47+85="], ["132"], rows[:1])
    assert outcomes[0].value is None and outcomes[0].reason == "exception" and "ZeroDivisionError" in outcomes[0].detail


def test_score_all_adds_weighted_sources_and_one_failure_unscores_the_sample():
    length = VerifierReward(lambda p, c, **row: float(len(c)), name="length")
    picky = VerifierReward(lambda p, c, **row: None if c == "bad" else float(row["answer"]), name="picky")
    completions = ["ab", "bad", "abcd"]
    rows = [{"answer": 1}, {"answer": 2}, {"answer": 3}]
    batch = score_all([(length, 0.5), (picky, 2.0)], ["p"] * 3, completions, rows)
    # sample 0: 0.5·2 + 2·1 = 3; sample 1: picky returned None → unscored, 0; sample 2: 0.5·4 + 2·3 = 8
    assert batch.rewards.tolist() == [3.0, 0.0, 8.0]
    assert batch.scored.tolist() == [True, False, True]
    assert batch.per_source["length"].tolist() == [2.0, 3.0, 4.0]
    assert batch.per_source["picky"][[0, 2]].tolist() == [1.0, 3.0] and math.isnan(batch.per_source["picky"][1])
    assert batch.failures["none"] == 1 and sum(batch.failures.values()) == 1
    assert batch.rewards.dtype == torch.float32 and batch.scored.dtype == torch.bool


def test_score_all_refuses_a_source_that_returns_the_wrong_number_of_values():
    class Short:
        name = "short"

        def score(self, prompts, completions, rows):
            return [1.0]

    with pytest.raises(UserError, match="'short' returned 1 values for 2 samples"):
        score_all([(Short(), 1.0)], ["p", "q"], ["a", "b"], [{}, {}])


# ---- metrics and the guard ------------------------------------------------------------------------------------------

def hand_made_batch(scored: list[bool]) -> ScoredBatch:
    values = torch.tensor([1.0, 5.0, 3.0, 2.0])
    mask = torch.tensor(scored)
    failures = dict.fromkeys(FAILURE_REASONS, 0)
    failures["exception"] = scored.count(False)
    return ScoredBatch(torch.where(mask, values, 0.0), mask, {"only": torch.where(mask, values, math.nan)}, failures,
                       {"exception": "source 'only', sample 1: KeyError: 'answer' (line 4)"})


def test_reward_metrics_on_a_hand_made_batch():
    metrics = reward_metrics(hand_made_batch([True, False, True, True]))
    # scored values 1, 3, 2: mean 2, population std √((1 + 1 + 0) / 3)
    assert metrics["reward/mean"] == pytest.approx(2.0)
    assert metrics["reward/std"] == pytest.approx(math.sqrt(2 / 3))
    assert (metrics["reward/min"], metrics["reward/max"]) == (1.0, 3.0)
    assert metrics["reward/only/mean"] == pytest.approx(2.0) and metrics["reward/only/max"] == 3.0
    assert metrics["reward/unscored_frac"] == 0.25
    assert metrics["reward/failures/exception"] == 1 and metrics["reward/failures/timeout"] == 0
    nothing = reward_metrics(hand_made_batch([False] * 4))
    assert "reward/mean" not in nothing and nothing["reward/unscored_frac"] == 1.0  # no NaN in metrics.jsonl


def test_unscorable_guard_raises_above_the_fraction_and_not_at_it():
    guard = UnscorableGuard(max_fraction=0.25)
    guard.check(hand_made_batch([True, True, True, True]), step=3)
    guard.check(hand_made_batch([True, False, True, True]), step=3)  # exactly 0.25: allowed
    with pytest.raises(UserError) as e:
        guard.check(hand_made_batch([True, False, False, True]), step=7)
    message = str(e.value)
    for part in ("step 7", "2 of 4", "exception 2", "reward.max_unscored_fraction", "reward function", "KeyError"):
        assert part in message
    assert UnscorableGuard().max_fraction == 0.5


# ---- the reward model ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reward_model():
    from posttrain.config import LoraConfig, ModelConfig
    from posttrain.models.loading import load_model, load_tokenizer

    torch.set_num_threads(1)
    tokenizer = load_tokenizer("tiny")
    model = load_model(ModelConfig(), LoraConfig(), head="score").eval()
    return model, tokenizer


PROMPTS = ["1+2=", "47+85=", "123+456=", "9-3=", "52-17=", "8+8=", "700+300=", "5-50=", "2+2=", "31+4="]
COMPLETIONS = ["3", "132", "579 because the columns add up", "6", "35", "16!", "1000", "-45", "four", "35 35"]


def test_reward_model_scores_equal_a_direct_forward_of_the_training_tokenization(reward_model):
    from posttrain.data.preference import build_preference_pairs

    model, tokenizer = reward_model
    got = ModelReward(model, tokenizer, batch_size=4).score(PROMPTS, COMPLETIONS, [{}] * len(PROMPTS))
    # the reward-model trainer's own tokenization (`posttrain rm`), one unpadded sequence at a time
    rows = [{"prompt": p, "chosen": c, "rejected": c + " no"} for p, c in zip(PROMPTS, COMPLETIONS)]
    pairs, _ = build_preference_pairs(rows, tokenizer, max_length=512,
                                      use_chat_template=tokenizer.chat_template is not None)
    with torch.no_grad():
        direct = [model(input_ids=torch.tensor([pair["chosen"]["input_ids"]])).logits[0, 0].item() for pair in pairs]
    assert got == pytest.approx(direct, abs=1e-5)
    assert len(set(round(v, 4) for v in got)) > 1  # the scores differ: the check compares something


def test_reward_model_scores_do_not_depend_on_the_batch_size(reward_model):
    model, tokenizer = reward_model
    rows = [{}] * len(PROMPTS)
    one = ModelReward(model, tokenizer, batch_size=1).score(PROMPTS, COMPLETIONS, rows)
    eight = ModelReward(model, tokenizer, batch_size=8).score(PROMPTS, COMPLETIONS, rows)
    assert eight == pytest.approx(one, abs=1e-5)


def test_reward_model_nan_scores_are_unscored(reward_model):
    model, tokenizer = reward_model
    head = model.score.weight
    saved = head.detach().clone()
    try:
        with torch.no_grad():
            head.fill_(math.nan)
        outcomes = ModelReward(model, tokenizer).outcomes(PROMPTS[:2], COMPLETIONS[:2], [{}, {}])
    finally:
        with torch.no_grad():
            head.copy_(saved)
    assert [o.reason for o in outcomes] == ["nan", "nan"]


def test_load_reward_model_from_a_run_directory_gives_the_same_scores(reward_model, tmp_path):
    model, tokenizer = reward_model
    model.save_pretrained(tmp_path / "final")
    tokenizer.save_pretrained(tmp_path / "final")
    expected = ModelReward(model, tokenizer).score(PROMPTS, COMPLETIONS, [{}] * len(PROMPTS))
    loaded = load_reward_model(tmp_path)
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert loaded.score(PROMPTS, COMPLETIONS, [{}] * len(PROMPTS)) == pytest.approx(expected, abs=1e-6)


def test_load_reward_model_refuses_a_language_model(tmp_path):
    from posttrain.models.tiny import tiny_path

    with pytest.raises(UserError, match="not an outcome reward model"):
        load_reward_model(tiny_path())


def test_load_reward_model_from_a_lora_run_gives_the_same_scores(tmp_path):
    from posttrain.config import LoraConfig, ModelConfig
    from posttrain.models.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer("tiny")
    model = load_model(ModelConfig(), LoraConfig(r=4), head="score").eval()
    with torch.no_grad():  # trained-looking adapters (LoRA's B starts at zero, which would hide a lost adapter)
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(generator=torch.Generator().manual_seed(0))
    model.save_pretrained(tmp_path / "final")
    tokenizer.save_pretrained(tmp_path / "final")
    rows = [{}] * len(PROMPTS)
    expected = ModelReward(model, tokenizer).score(PROMPTS, COMPLETIONS, rows)
    assert load_reward_model(tmp_path / "final").score(PROMPTS, COMPLETIONS, rows) == pytest.approx(expected, abs=1e-6)
