"""Verified preference pairs: sampled completions scored by the task verifier become chosen/rejected pairs."""

from posttrain import config as C, tasks
from posttrain.data.preference import verified_pairs
from posttrain.eval.accuracy import sampled_completions
from posttrain.models.loading import load_model, load_tokenizer
from posttrain.train.common import task_and_problems


def test_pairs_take_distinct_right_and_wrong_texts_of_one_prompt():
    rows = [{"prompt": "p1"}, {"prompt": "p2"}, {"prompt": "p3"}]
    samples = [[{"completion": "a", "score": 1.0}, {"completion": "b", "score": 0.0},
                {"completion": "a", "score": 1.0}, {"completion": "c", "score": 0.0}],
               [{"completion": "x", "score": 1.0}, {"completion": "y", "score": 1.0}],      # all right: no pair
               [{"completion": "d", "score": 1.0}, {"completion": "e", "score": None},     # unscorable: left out
                {"completion": "f", "score": 0.0}, {"completion": "g", "score": 1.0},
                {"completion": "h", "score": 0.5}]]
    assert verified_pairs(rows, samples) == [
        {"prompt": "p1", "chosen": "a", "rejected": "b"},
        {"prompt": "p3", "chosen": "d", "rejected": "f"}, {"prompt": "p3", "chosen": "g", "rejected": "h"}]
    assert len(verified_pairs(rows, samples, max_pairs_per_prompt=1)) == 2


def test_sampled_completions_are_scored_and_reproducible():
    task = tasks.get("arith", max_digits=1)
    rows = task.rows("train", 3, seed=0)
    tokenizer, model = load_tokenizer("tiny"), load_model(C.ModelConfig(), C.LoraConfig(), seed=0).eval()
    args = dict(n=2, use_chat_template=True, max_new_tokens=6, seed=5)
    a = sampled_completions(model, tokenizer, rows, task.score, batch_size=6, **args)
    b = sampled_completions(model, tokenizer, rows, task.score, batch_size=2, **args)
    assert a == b and [len(r) for r in a] == [2, 2, 2]
    for row, scored in zip(rows, a):
        assert all(s["score"] == task.score(row["prompt"], s["completion"], answer=row["answer"]) for s in scored)


def test_task_accuracy_is_scored_with_user_data_only_when_asked():
    cfg = C.DPOConfig(data=C.DataConfig(train_path="x.jsonl", eval_path="y.jsonl"))
    assert task_and_problems(cfg) == (None, [])
    task, problems = task_and_problems(C.DPOConfig(data=cfg.data, eval=C.EvalConfig(task_accuracy=True,
                                                                                      num_samples=5)))
    assert task is not None and len(problems) == 5
    assert len(task_and_problems(C.DPOConfig(eval=C.EvalConfig(num_samples=7)))[1]) == 7  # the task's own data
    assert task_and_problems(C.DPOConfig(eval=C.EvalConfig(task_accuracy=False)))[1] == []
