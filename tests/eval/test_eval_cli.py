"""`posttrain eval` end to end on the embedded tiny model (untrained: the mechanics, not the accuracy) with an
outcome RM and a PRM built from it: every requested row, token accounting, greedy = eval.accuracy, bad input."""

import json

import pytest

from conftest import write_jsonl
from posttrain import cli, tasks
from posttrain.config import LoraConfig, ModelConfig


@pytest.fixture(scope="module")
def reward_dirs(tmp_path_factory):
    """An outcome RM and a PRM directory shaped like `posttrain rm`'s final/ (untrained heads on the tiny model)."""
    from posttrain.models.loading import load_model, load_tokenizer

    root = tmp_path_factory.mktemp("rewards")
    tokenizer = load_tokenizer("tiny")
    for name, head in (("rm", "score"), ("prm", "token")):
        model = load_model(ModelConfig(name_or_path="tiny"), LoraConfig(), head=head, seed=1)
        model.config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(root / name / "final")
        tokenizer.save_pretrained(root / name / "final")
    return root / "rm", root / "prm"


COMMON = ["task.max_digits=2", "num_problems=3", "search.n=3", "search.max_new_tokens=12", "search.max_step_tokens=6",
          "search.pass_k=1,2", "search.temperature=1.0", "seed=5"]


def rows_of(out_dir) -> dict:
    results = json.loads((out_dir / "results.json").read_text())
    return {(r["strategy"], r["scorer"]): r for r in results["rows"]}


def test_eval_table_has_every_strategy_and_counts_tokens(tmp_path, reward_dirs, capsys):
    rm, prm = reward_dirs
    out = tmp_path / "eval"
    assert cli.main(["eval", f"reward_model={rm}", f"prm={prm}", f"output_dir={out}", *COMMON]) == 0
    rows = rows_of(out)
    expected = {("greedy", "—"), ("sampling (T=1)", "—"), ("pass@1", "verifier (oracle)"),
                ("pass@2", "verifier (oracle)"), ("pass@3", "verifier (oracle)"), ("maj@2", "—"), ("maj@3", "—"),
                ("best-of-3", "reward model"), ("best-of-3", "PRM (min)"), ("weighted vote@3", "reward model"),
                ("weighted vote@3", "PRM (min)"), ("step beam (B=2, k=4)", "PRM (min)"),
                ("MCTS (puct, k=4, prm)", "PRM (min)")}
    assert set(rows) == expected
    assert all(r["accuracy"] is not None and 0.0 <= r["accuracy"] <= 1.0 for r in rows.values())

    # token accounting: best-of-N, votes, maj@N spend exactly the N samples' tokens — N × one sample's
    one = rows[("sampling (T=1)", "—")]["tokens_per_problem"]
    for key in (("best-of-3", "reward model"), ("best-of-3", "PRM (min)"), ("weighted vote@3", "PRM (min)"),
                ("maj@3", "—"), ("pass@3", "verifier (oracle)")):
        assert rows[key]["tokens_per_problem"] == pytest.approx(3 * one)
    # … and that is what the engine really generated for 3 samples per problem with this seed
    from posttrain.models.inference import load_for_inference
    from posttrain.rollout import HFEngine, SamplingParams, generate_text

    model, tokenizer, _ = load_for_inference("tiny")
    problems = tasks.get("arith", max_digits=2, steps=True).rows("eval", 200, 5)[:3]
    engine = HFEngine(model, [tokenizer.eos_token_id], tokenizer.pad_token_id)
    generations = generate_text(engine, tokenizer, [p["prompt"] for p in problems],
                                SamplingParams(temperature=1.0, n=3, max_new_tokens=12), use_chat_template=True,
                                seed=5)
    assert sum(len(g.completion_ids) for g, _ in generations) / 3 == pytest.approx(3 * one)

    # greedy accuracy is eval.accuracy's on the same rows
    from posttrain.eval.accuracy import greedy_accuracy

    task = tasks.get("arith", max_digits=2, steps=True)
    expected_greedy, _ = greedy_accuracy(model, tokenizer, problems, task.score, use_chat_template=True,
                                         max_new_tokens=12)
    assert rows[("greedy", "—")]["accuracy"] == expected_greedy

    # compute-matched: beam and MCTS stop once a problem has spent best-of-3's tokens on it (the last round may
    # overshoot by at most one round, B·k or k steps of ≤ max_step_tokens, and one completion of an unfinished
    # answer, ≤ max_new_tokens)
    completions = [json.loads(line) for line in (out / "completions.jsonl").read_text().splitlines()]
    spent = {c["problem"]: c["generated_tokens"] for c in completions if c["strategy"] == "best-of-3 | PRM (min)"}
    for record in completions:
        if record["strategy"].startswith(("step beam", "MCTS")):
            assert record["generated_tokens"] < spent[record["problem"]] + 8 * 6 + 12

    # vs greedy: the difference and the sign test on the same problems' verdicts, for rows that chose one completion
    from posttrain.eval.metrics import paired_sign_test

    verdicts = {}
    for record in completions:
        verdicts.setdefault(record["strategy"], []).append(record["score"] or 0.0)
    for (strategy, scorer), row in rows.items():
        label = f"{strategy} | {scorer}"
        if label in verdicts and strategy != "greedy":
            delta, p = row["vs_greedy"]
            assert delta == pytest.approx(row["accuracy"] - rows[("greedy", "—")]["accuracy"])
            assert p == pytest.approx(paired_sign_test(verdicts["greedy | —"], verdicts[label]))
    assert rows[("maj@3", "—")]["vs_greedy"] is not None
    assert rows[("greedy", "—")]["vs_greedy"] is None and rows[("pass@2", "verifier (oracle)")]["vs_greedy"] is None
    table = (out / "results.md").read_text()
    assert "| best-of-3 | reward model |" in table and "compute-matched" in table.lower()
    assert "pass@3" in capsys.readouterr().out


def test_eval_skips_what_needs_a_missing_model_and_budget_is_honoured(tmp_path, reward_dirs):
    _, prm = reward_dirs
    out = tmp_path / "eval"
    args = ["eval", f"output_dir={out}", "strategies=best_of_n,beam,mcts", "search.budget_tokens=10",
            "search.mcts_evaluation=rollout", *COMMON]
    assert cli.main(args) == 0
    rows = rows_of(out)
    assert rows[("best-of-3", "—")]["accuracy"] is None and "reward_model=" in rows[("best-of-3", "—")]["note"]
    assert rows[("step beam", "—")]["accuracy"] is None and "prm=" in rows[("step beam", "—")]["note"]
    assert rows[("MCTS", "—")]["accuracy"] is None

    assert cli.main([*args, f"prm={prm}", f"output_dir={out}2"]) == 0
    rows = rows_of(tmp_path / "eval2")
    mcts = rows[("MCTS (puct, k=4, rollout)", "PRM (min)")]
    # one iteration's 4 steps (≤ 6 tokens each) plus their rollouts (≤ 12 each) at most past the 10-token budget
    assert 10 <= mcts["tokens_per_problem"] < 10 + 4 * (6 + 12)


def test_eval_on_a_data_file(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "1+2=", "answer": "3"}, {"prompt": "4+4=", "answer": "8"}])
    out = tmp_path / "eval"
    assert cli.main(["eval", f"data_path={data}", f"output_dir={out}", "strategies=greedy,maj@k",
                     "search.n=2", "search.pass_k=1", "search.max_new_tokens=6"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["problems"] == 2 and [r["strategy"] for r in results["rows"]] == ["greedy", "maj@2"]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "1+2="}])
    assert cli.main(["eval", f"data_path={bad}", f"output_dir={out}"]) == 2


@pytest.mark.parametrize("args, words", [
    (["search.n=0"], ["search.n", "≥ 1"]),
    (["search.pass_k=1,9"], ["search.pass_k", "search.n"]),
    (["strategies=greedy,beamz"], ["strategies", "beamz"]),
    (["prm=/nonexistent/prm"], ["prm", "does not exist"]),
    (["reward_model=/nonexistent/rm"], ["reward_model", "does not exist"]),
])
def test_eval_bad_input_exits_2_naming_the_field(tmp_path, capsys, args, words):
    assert cli.main(["eval", f"output_dir={tmp_path}/x", *args]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_eval_refuses_a_prm_that_is_not_a_token_classifier(tmp_path, reward_dirs, capsys):
    rm, prm = reward_dirs
    assert cli.main(["eval", f"output_dir={tmp_path}/x", f"prm={rm}"]) == 2
    err = capsys.readouterr().err
    assert "prm" in err and "ForTokenClassification" in err and "reward.mode=prm" in err
    assert cli.main(["eval", f"output_dir={tmp_path}/x", f"reward_model={prm}"]) == 2
    assert "reward_model" in capsys.readouterr().err
