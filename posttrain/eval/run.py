"""`posttrain eval`: how accurate is a policy, and how much does spending more tokens at test time buy?

Loads the policy (a model, adapter or run directory, or 'tiny'), the held-out problems (the task's, or a file of
prompt + answer rows), and optionally an outcome reward model (`reward_model=`) and a process reward model
(`prm=`). Then, per strategy, the accuracy (the task's verifier on the chosen completion) and the mean number of
GENERATED tokens spent per problem — the compute that test-time search trades for accuracy:

    greedy               one greedy solution
    sampling (T)         one sample: accuracy averaged over the n samples (pass@1)
    pass@k               an oracle: some of k samples is right (Chen et al.'s unbiased estimator over the n)
    maj@n                self-consistency: the most frequent answer among the n samples
    best-of-n            the n samples' best by the reward model, or by the PRM
    weighted vote        each sample votes with its RM (through σ) or PRM score
    step beam            step-level beam search with the PRM
    MCTS                 tree search over steps, values from the PRM (or rollouts scored by the RM / PRM)
    greedy + tools       (env.name set) greedy multi-turn episodes with the environment's tools (posttrain/envs):
                         the success rate of the final answers, with tool-call rate, tool errors and turns

Sampling, pass@k, maj@n, best-of-n and the votes choose among the SAME n samples (seeded by problem and sample
index), so their differences are the choice rule's alone. Step beam search and MCTS are compute-matched: each
problem may spend what best-of-n spent on it (search.budget_tokens=0), or search.budget_tokens. A strategy whose
model was not given is listed as skipped, with what to pass. Every strategy that picks one completion per problem
is compared with greedy on the same problems: the accuracy difference and the exact sign test's p-value
(`eval.metrics.paired_sign_test`), so a lead of a few problems is not read as a win. When the problems carry a
`level` (task.name=word, or a data file with that column), every row also gets its accuracy per level
(`accuracy_by_level` in results.json, a second table in results.md).

Writes OUTPUT_DIR/results.json (the rows and the config), results.md (the table) and completions.jsonl (every
chosen completion with its tokens and verdict).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from posttrain import tasks
from posttrain.config import EvaluateConfig, to_dict
from posttrain.data import load_rows, normalize
from posttrain.errors import DataError
from posttrain.eval.accuracy import episode_summary, greedy_episodes
from posttrain.eval.metrics import (accuracy, by_group, correct_counts, maj_at_k, mean_over_problems,
                                    paired_sign_test, pass_at_k)
from posttrain.models.inference import load_for_inference
from posttrain.models.loading import base_model_path
from posttrain.rollout import inference_engine, use_template
from posttrain.search import (Policy, SearchResult, choose_best, choose_by_vote, load_outcome_rm, load_prm,
                              mcts_search, prm_value, rollout_value, sample_candidates, step_beam_search)
from posttrain.search.best_of_n import vote_weights
from posttrain.search.scorers import Verifier


@dataclass
class Row:
    """One line of the table; accuracy None = skipped (the note says why). per_problem: the chosen completion's
    verdict on each problem (None for rows that average over samples); vs_greedy: (accuracy − greedy's, the sign
    test's p-value), filled in by `compare_with_greedy`; accuracy_by_level: {"level_1": …} when the problems carry
    a `level` (eval.metrics.by_group), else None."""

    strategy: str
    scorer: str
    accuracy: float | None
    tokens_per_problem: float | None
    seconds: float = 0.0
    note: str = ""
    per_problem: list[float] | None = field(default=None, repr=False)
    vs_greedy: tuple[float, float] | None = None
    accuracy_by_level: dict[str, float] | None = None


def run(cfg: EvaluateConfig) -> dict:
    # ---- setup: every check on user input happens before anything is generated -----------------------------------
    search = cfg.validate().search
    task = tasks.from_config(cfg.task)
    problems = load_problems(cfg, task)
    rm = load_outcome_rm(cfg.reward_model, field="reward_model") if cfg.reward_model else None
    prm = load_prm(cfg.prm, aggregate=search.prm_aggregate, field="prm") if cfg.prm else None
    model, tokenizer, path = load_for_inference(cfg.model)
    engine = inference_engine(cfg.rollout, model, tokenizer, base_model_path(str(path)))
    policy = Policy(engine, tokenizer, use_template(tokenizer, cfg.chat_template), temperature=search.temperature,
                    top_p=search.top_p, max_new_tokens=search.max_new_tokens, max_step_tokens=search.max_step_tokens,
                    answer_marker=search.answer_marker)
    verifier = Verifier(task.score)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"posttrain eval: {len(problems)} problems, policy {path}, n = {search.n}, T = {search.temperature}"
          + (f", reward model {cfg.reward_model}" if rm else "") + (f", PRM {cfg.prm}" if prm else ""), flush=True)

    # ---- the strategies --------------------------------------------------------------------------------------------
    wanted = set(cfg.strategies)
    rows: list[Row] = []
    chosen: dict[str, list[SearchResult]] = {}  # table label → per-problem results, for completions.jsonl
    if "greedy" in wanted:
        rows.append(timed(lambda: greedy_row(policy, problems, verifier, chosen)))
    if cfg.env.name:
        rows.append(timed(lambda: episodes_row(cfg, engine, tokenizer, problems, verifier, chosen)))
    samples, t0 = [], time.perf_counter()
    if wanted - {"greedy"}:
        samples = sample_candidates(policy, problems, search.n, seed=cfg.seed)
        seconds = time.perf_counter() - t0
        print(f"  drew {search.n} samples per problem in {seconds:.1f} s", flush=True)
        rows += sampled_rows(cfg, problems, samples, seconds, task.extract_answer, verifier, rm, prm, chosen)
    if samples and ({"beam", "mcts"} & wanted):
        budgets = ([search.budget_tokens] * len(problems) if search.budget_tokens
                   else [sum(s.num_tokens for s in candidates) for candidates in samples])
        rows += search_rows(cfg, policy, problems, budgets, verifier, rm, prm, chosen)

    # ---- outputs ---------------------------------------------------------------------------------------------------
    compare_with_greedy(rows)
    table = markdown_table(rows, cfg, len(problems))
    print("\n" + table, flush=True)
    results = {"model": str(path), "problems": len(problems), "config": to_dict(cfg),
               "rows": [row_record(r) for r in rows]}
    (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    (out / "results.md").write_text(table + "\n")
    write_completions(out / "completions.jsonl", problems, chosen, verifier)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.md'} and {out / 'completions.jsonl'}", flush=True)
    return results


# ---- the rows --------------------------------------------------------------------------------------------------------

def greedy_row(policy: Policy, problems: list[dict], verifier: Verifier, chosen: dict) -> Row:
    samples = policy.sample([p["prompt"] for p in problems], [""] * len(problems), 1, seed=0, step=0,
                            example_ids=list(range(len(problems))), temperature=0.0)
    results = [SearchResult(s.text, s.num_tokens) for (s,) in samples]
    return result_row("greedy", "—", results, problems, verifier, chosen)


def episodes_row(cfg: EvaluateConfig, engine, tokenizer, problems: list[dict], verifier: Verifier,
                 chosen: dict) -> Row:
    """Greedy multi-turn episodes with the environment's tools; the final answers scored by the verifier."""
    episodes = greedy_episodes(engine, tokenizer, problems, cfg.env, max_new_tokens=cfg.search.max_new_tokens,
                               seed=cfg.seed)
    summary = episode_summary(episodes)
    note = (f"tool calls in {summary['tool_call_rate']:.0%} of episodes, {summary['tool_errors']:.2f} errors and "
            f"{summary['turns']:.1f} turns per episode")
    results = [SearchResult(t.answer, sum(t.mask)) for t in episodes]
    return result_row("greedy + tools", cfg.env.name, results, problems, verifier, chosen, note=note)


def sampled_rows(cfg: EvaluateConfig, problems: list[dict], samples: list, sample_seconds: float, extract_answer,
                 verifier: Verifier, rm, prm, chosen: dict) -> list[Row]:
    """The rows that choose among the n samples: sampling, pass@k, maj@n, best-of-n, weighted vote. Each row's
    seconds include drawing the samples."""
    n, wanted = cfg.search.n, set(cfg.strategies)
    texts = [[s.text for s in candidates] for candidates in samples]
    verdicts = [verifier.scores(p, t) for p, t in zip(problems, texts)]
    per_sample = mean_over_problems([sum(s.num_tokens for s in c) / n for c in samples])
    rows = []
    if "sampling" in wanted:
        values = [accuracy(v) for v in verdicts]
        rows.append(Row(f"sampling (T={cfg.search.temperature:g})", "—", mean_over_problems(values), per_sample,
                        note=f"one sample; mean over the {n} samples", accuracy_by_level=by_level(problems, values)))
    if "pass@k" in wanted:
        counts = correct_counts(verdicts)
        for k in sorted(set(cfg.search.pass_k) | {n}):
            values = [pass_at_k(m, c, k) for m, c in counts]
            rows.append(Row(f"pass@{k}", "verifier (oracle)", mean_over_problems(values), k * per_sample,
                            note="upper bound: needs the reference answer",
                            accuracy_by_level=by_level(problems, values)))
    answers = [[extract_answer(t) for t in ts] for ts in texts]
    if "maj@k" in wanted:  # the first k samples vote; ties go to the answer seen first
        for k in sorted({k for k in cfg.search.pass_k if k > 1} | {n}):
            per_problem = [maj_at_k(a, v, k) for a, v in zip(answers, verdicts)]
            rows.append(Row(f"maj@{k}", "—", mean_over_problems(per_problem), k * per_sample,
                            note="self-consistency", per_problem=per_problem,
                            accuracy_by_level=by_level(problems, per_problem)))
    scorers = [s for s in (rm, prm) if s is not None]
    for name, label in (("best_of_n", f"best-of-{n}"), ("weighted_vote", f"weighted vote@{n}")):
        if name not in wanted:
            continue
        if not scorers:
            rows.append(Row(label, "—", None, None, note="skipped: needs reward_model= or prm="))
        for scorer in scorers:
            t0 = time.perf_counter()
            if name == "best_of_n":
                results = [choose_best(c, scorer.scores(p, t)) for p, c, t in zip(problems, samples, texts)]
            else:
                results = [choose_by_vote(c, a, vote_weights(scorer, p, t))
                           for p, c, t, a in zip(problems, samples, texts, answers)]
            rows.append(result_row(label, scorer.name, results, problems, verifier, chosen,
                                   seconds=time.perf_counter() - t0))
    for row in rows:
        row.seconds += sample_seconds
    return rows


def search_rows(cfg: EvaluateConfig, policy: Policy, problems: list[dict], budgets: list[int], verifier: Verifier,
                rm, prm, chosen: dict) -> list[Row]:
    """Step-level beam search and MCTS, each problem limited to its token budget."""
    s, wanted, rows = cfg.search, set(cfg.strategies), []
    budget_note = (f"budget {s.budget_tokens} tokens/problem" if s.budget_tokens
                   else f"budget: best-of-{s.n}'s tokens on each problem")
    if "beam" in wanted:
        if prm is None:
            rows.append(Row("step beam", "—", None, None, note="skipped: needs prm="))
        else:
            rows.append(timed(lambda: result_row(
                f"step beam (B={s.beam_width}, k={s.beam_expansions})", prm.name,
                step_beam_search(policy, problems, prm, beam_width=s.beam_width, expansions=s.beam_expansions,
                                 max_steps=s.max_steps, budget_tokens=budgets, seed=cfg.seed),
                problems, verifier, chosen, note=budget_note)))
    if "mcts" in wanted:
        value_scorer = prm if s.mcts_evaluation == "prm" else (rm or prm)
        if value_scorer is None:
            needs = "prm=" if s.mcts_evaluation == "prm" else "reward_model= or prm="
            rows.append(Row("MCTS", "—", None, None, note=f"skipped: needs {needs}"))
        else:
            evaluate = (prm_value(prm) if s.mcts_evaluation == "prm"
                        else rollout_value(policy, value_scorer, seed=cfg.seed, children=s.mcts_children))
            label = f"MCTS ({s.mcts_selection}, k={s.mcts_children}, {s.mcts_evaluation})"
            rows.append(timed(lambda: result_row(
                label, value_scorer.name,
                mcts_search(policy, problems, evaluate, children=s.mcts_children, rule=s.mcts_selection,
                            c=s.mcts_c, max_steps=s.max_steps, max_iterations=s.mcts_max_iterations,
                            budget_tokens=budgets, seed=cfg.seed),
                problems, verifier, chosen, note=budget_note)))
    return rows


def result_row(strategy: str, scorer: str, results: list[SearchResult], problems: list[dict], verifier: Verifier,
               chosen: dict, *, note: str = "", seconds: float = 0.0) -> Row:
    """A row from per-problem results: verifier accuracy and mean generated tokens."""
    verdicts = [verifier.scores(p, [r.completion])[0] for p, r in zip(problems, results)]
    chosen[f"{strategy} | {scorer}"] = results
    return Row(strategy, scorer, accuracy(verdicts), mean_over_problems([r.generated_tokens for r in results]),
               seconds, note, per_problem=[v or 0.0 for v in verdicts],
               accuracy_by_level=by_level(problems, verdicts))


def by_level(problems: list[dict], values: list[float | None]) -> dict[str, float] | None:
    """The per-problem values' mean per level ({"level_1": …}), or None when the problems carry no level."""
    return by_group(problems, values) or None


def compare_with_greedy(rows: list[Row]) -> None:
    """Set vs_greedy on every row that chose one completion per problem, when the table has a greedy row."""
    greedy = next((r for r in rows if r.strategy == "greedy" and r.per_problem is not None), None)
    for row in rows:
        if greedy is not None and row is not greedy and row.per_problem is not None:
            row.vs_greedy = (row.accuracy - greedy.accuracy, paired_sign_test(greedy.per_problem, row.per_problem))


def timed(make_row) -> Row:
    t0 = time.perf_counter()
    row = make_row()
    row.seconds = time.perf_counter() - t0
    print(f"  {row.strategy} ({row.scorer}): {row.accuracy:.3f} in {row.seconds:.1f} s", flush=True)
    return row


# ---- input and output ------------------------------------------------------------------------------------------------

def load_problems(cfg: EvaluateConfig, task) -> list[dict]:
    """The task's held-out problems, or data_path's rows (each needs prompt and answer), first num_problems."""
    if cfg.data_path is None:
        rows = task.rows("eval", cfg.task.num_eval, cfg.seed)
    else:
        loaded = normalize(load_rows(cfg.data_path), kind="prompt")
        for i, row in enumerate(loaded):
            if row.get("answer") is None:
                raise loaded.error(i, "no reference answer to verify against", field="answer",
                                   fix="add an 'answer' field to every row (the task's verifier compares with it)")
        rows = list(loaded)
    rows = rows[:cfg.num_problems] if cfg.num_problems else rows
    if not rows:
        raise DataError("no problems to evaluate", field="num_problems" if cfg.num_problems else "data_path",
                        fix="give a data file with rows, or raise task.num_eval")
    return rows


def row_record(row: Row) -> dict:
    """A row of results.json: the Row's fields without per_problem (and without accuracy_by_level when the problems
    have no levels)."""
    return {k: v for k, v in asdict(row).items()
            if k != "per_problem" and not (k == "accuracy_by_level" and v is None)}


def markdown_table(rows: list[Row], cfg: EvaluateConfig, num_problems: int) -> str:
    s = cfg.search
    budget = (f"{s.budget_tokens} generated tokens per problem" if s.budget_tokens
              else f"the generated tokens best-of-{s.n} spent on each problem")
    lines = [f"Test-time compute on {num_problems} problems (seed {cfg.seed}). Accuracy: the task's verifier on the "
             f"chosen completion. Tokens: generated tokens per problem, every sample, expansion and rollout "
             f"counted (reward-model forward passes are not). Compute-matched: step beam and MCTS stop at {budget}. "
             "The column vs greedy: the accuracy difference on the same problems and the exact sign test's "
             "two-sided p-value.",
             "", "| strategy | scored by | accuracy | vs greedy (p) | tokens / problem | seconds | note |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        acc = "—" if r.accuracy is None else f"{r.accuracy:.3f}"
        versus = "—" if r.vs_greedy is None else f"{r.vs_greedy[0]:+.3f} ({r.vs_greedy[1]:.2g})"
        tokens = "—" if r.tokens_per_problem is None else f"{r.tokens_per_problem:.1f}"
        lines.append(f"| {r.strategy} | {r.scorer} | {acc} | {versus} | {tokens} | {r.seconds:.1f} | {r.note} |")
    return "\n".join(lines + level_table(rows))


def level_table(rows: list[Row]) -> list[str]:
    """The lines of the accuracy-per-level table (after a blank line), or none when no row has levels.

    Example, two levels: | strategy | scored by | level 1 | level 2 | / | greedy | — | 0.500 | 0.250 |
    """
    groups = list(dict.fromkeys(g for r in rows if r.accuracy_by_level for g in r.accuracy_by_level))
    if not groups:
        return []
    lines = ["", "Accuracy per level (the problems' `level`):", "",
             "| strategy | scored by | " + " | ".join(g.replace("_", " ") for g in groups) + " |",
             "|---|---|" + "---:|" * len(groups)]
    for r in rows:
        if r.accuracy_by_level:
            cells = [f"{r.accuracy_by_level[g]:.3f}" if g in r.accuracy_by_level else "—" for g in groups]
            lines.append(f"| {r.strategy} | {r.scorer} | " + " | ".join(cells) + " |")
    return lines


def write_completions(path: Path, problems: list[dict], chosen: dict, verifier: Verifier) -> None:
    with open(path, "w") as f:
        for label, results in chosen.items():
            for i, (problem, result) in enumerate(zip(problems, results)):
                record = {"strategy": label, "problem": i, "prompt": problem["prompt"],
                          "answer": problem.get("answer"), "completion": result.completion,
                          "generated_tokens": result.generated_tokens,
                          "score": verifier.scores(problem, [result.completion])[0]}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
