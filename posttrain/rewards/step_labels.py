"""Process-reward labels without human labels: Monte-Carlo step labels, as in Math-Shepherd (Wang et al. 2024,
"Math-Shepherd: Verify and Reinforce LLMs Step-by-step without Human Annotations", arXiv:2312.08935).

A label here is a score: the verifier's verdict on rollouts from a prefix, an estimate of the prefix's value under the
policy. It needs a policy (models), the rollout engine and the task's verifier, which is why it lives with the
rewards and not with the data: what it writes is ordinary PRM data (prompt, completions, labels), which
data/process.py tokenizes like any user file.

A step is good when the policy, continuing from it, can still reach the right answer:

    solutions   a policy writes N solutions per problem in the task's steps format (one step per line)
    prefixes    a solution of n steps gives the prefixes "s₁\\n", "s₁\\ns₂\\n", …, up to step n − 1; identical
                prefixes of the same problem (solutions often begin alike) are rolled out once
    rollouts    m completions continue each prefix, sampled from the policy (`complete`)
    labels      the task's verifier scores prefix + completion; with c of the m reaching the right answer,
                    hard  y = 1 if c ≥ 1 else 0      (Math-Shepherd's "hard estimation")
                    soft  y = c / m                  (its "soft estimation")
                the last step is the whole solution: its label is the solution's own verifier score, 0 or 1
                (continuing a finished solution would only re-read its answer)

Worked example, m = 4, problem 47+85= (answer 132), a solution whose second line is wrong:
    s₁  "7+5=12 carry 1"       rollouts answer 132, 132, 142, 132     c = 3  →  hard 1, soft 0.75
    s₂  "4+8+1=14 carry 1"     rollouts answer 142, 142, 142, 142     c = 0  →  hard 0, soft 0.0
    s₃  "answer: 142"          the solution's own answer is wrong            →  hard 0, soft 0.0
(tests/rewards/test_prm_labels.py builds exactly this with a scripted policy.)

Each step is labelled on its own evidence, as in Math-Shepherd; a 0 is not carried forward to the later steps
(PRM800K's convention, "false from the first error on", is what the task's exact labels use). The label
estimates the prefix's value under the policy, and a sampling policy can miss from a sound prefix by chance (all
m rollouts wrong) and still reach the answer from the next, longer prefix: carrying the 0 forward would turn one
unlucky estimate into a run of wrong labels. A real error needs no carrying, since every later prefix contains it
and its rollouts fail as well — unless the policy writes the right answer despite the wrong line, which a
sampling policy does (the tiny SFT model answers "3+1=3 / answer: 4"); the agreement with exact labels
(`agreement`) measures how often.

Measured (the demo's 3-digit SFT checkpoint as the policy, 300 problems × 4 solutions, m = 4, T = 0.7: 4105
steps, 1709 distinct prefixes of 2905, 164,803 generated tokens, about a minute on one CPU thread): hard labels
agree with the exact ones on 79.6% of steps (11.6% of wrong steps labelled good, 30.3% of right steps labelled bad:
all 4 rollouts failed from a sound prefix of a hard problem); carrying a 0 forward would agree on 77.8%, soft
labels read at 0.5 on 76.2%. A PRM trained on them scores held-out samples of that policy better than one trained
on as many of the task's error-injected solutions, and the task's error-injected held-out rows worse:
    step accuracy on (200 steps of 16, from the SFT model)   policy samples   task's held-out rows
    MC hard labels                                                0.649             0.500
    MC soft labels                                                0.593             0.412
    task labels                                                   0.470             0.670
(policy samples: 800 held-out solutions of the policy with exact labels, 45% of steps right; the task's rows: 68%).

Cost: the rollouts, (n − 1) unique prefixes × m samples per solution, each to the end of a solution.
`PolicyCompleter` puts all prefixes of all solutions into one engine call and counts the generated tokens.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from posttrain import distributed, tasks
from posttrain.errors import ConfigError, UserError
from posttrain.models.inference import load_for_inference
from posttrain.rollout import HFEngine, SamplingParams, format_prompt

Prefix = tuple  # (prompt, text): the problem's prompt (a string or chat messages) and the solution so far
Complete = Callable[[list[Prefix]], list[list[str]]]  # prefixes → for each, the continuations sampled after it
DATA_FILE = "prm_data.jsonl"
STATS_FILE = "prm_data_stats.json"


# ---- the labels ------------------------------------------------------------------------------------------------------

def split_steps(text: str, separator: str = "\n") -> list[str]:
    """A solution's steps: its non-blank pieces between separators.

    Example: "7+5=12 carry 1\\n\\nanswer: 12\\n" → ["7+5=12 carry 1", "answer: 12"].
    """
    return [step for step in text.split(separator) if step.strip()]


def step_prefixes(steps: list[str], separator: str = "\n") -> list[str]:
    """The texts rolled out from: steps 1..i, each followed by the separator, for i = 1 … n − 1.

    Example: ["a", "b", "answer: 3"] → ["a\\n", "a\\nb\\n"] (the whole solution is scored as it is).
    """
    return [separator.join(steps[:i]) + separator for i in range(1, len(steps))]


def mc_labels(solutions: list[dict], complete: Complete, score, *, target: str = "hard",
              separator: str = "\n") -> tuple[list[dict], dict]:
    """Label every step of `solutions` by Monte-Carlo rollouts (see the module docstring).

    solutions: rows {"prompt", "completions": the steps, "answer"}; complete(prefixes) → for each (prompt, text)
    its m continuations, the text sampled after the prefix; score(prompt, completion, answer=…) → 1.0, 0.0 or
    None (the task's verifier; None counts as not reaching the answer). target: "hard" or "soft".

    Returns (rows, stats). rows: the solutions with "labels" (hard: true/false; soft: c/m as floats) and
    "mc_values" (c/m for every step; the last step's is its own score), in the PRM schema that `posttrain rm
    reward.mode=prm` trains on. stats: {"prefixes": distinct prefixes rolled out, "prefix_steps": steps labelled
    by rollouts (prefixes before merging duplicates), "rollouts": continuations scored}.
    """
    if target not in ("hard", "soft"):
        raise ConfigError(f"reward.mc_target = {target!r} is not one of: hard, soft")
    index: dict[tuple[str, str], int] = {}  # (prompt as JSON, prefix text) → position in `unique`
    unique: list[Prefix] = []
    for row in solutions:
        for text in step_prefixes(row["completions"], separator):
            key = (json.dumps(row["prompt"]), text)
            if key not in index:
                index[key] = len(unique)
                unique.append((row["prompt"], text))
    continuations = complete(unique) if unique else []
    if len(continuations) != len(unique) or not all(continuations):
        raise ValueError(f"complete() must return a non-empty list of continuations for each of the {len(unique)} "
                         f"prefixes, got {len(continuations)} lists")

    def reached(i: int, answer) -> float:
        prompt, text = unique[i]
        hits = [score(prompt, text + c, answer=answer) == 1.0 for c in continuations[i]]
        return sum(hits) / len(hits)

    rows = []
    for row in solutions:
        values = [reached(index[(json.dumps(row["prompt"]), text)], row["answer"])
                  for text in step_prefixes(row["completions"], separator)]
        whole = score(row["prompt"], separator.join(row["completions"]), answer=row["answer"])
        values.append(1.0 if whole == 1.0 else 0.0)
        labels = [v > 0 for v in values] if target == "hard" else values
        rows.append({**row, "labels": labels, "mc_values": values})
    stats = {"prefixes": len(unique), "prefix_steps": sum(len(r["completions"]) - 1 for r in solutions),
             "rollouts": sum(len(c) for c in continuations)}
    return rows, stats


# ---- the policy ------------------------------------------------------------------------------------------------------

class PolicyCompleter:
    """`complete` backed by a causal LM on the rollout engine: `n` samples continue every prefix.

    The model reads the prompt's tokens (format_prompt: the chat template, or bos + text) followed by the prefix's
    tokens, tokenized on their own. With a character-level tokenizer (the tiny model's) these are exactly the
    tokens the model wrote; a BPE tokenizer may split the text differently at the seam, as in any text-level
    pipeline. All prefixes of one call go to the engine together (it batches `batch_size` sequences); sample k of
    prefix i is seeded by (seed, call number, i, k), so a run is reproducible whatever the batch size.
    `generated_tokens` counts every sampled token: the cost of the labels.
    """

    def __init__(self, model, tokenizer, *, temperature: float, max_new_tokens: int, seed: int = 0,
                 use_chat_template: bool | None = None, batch_size: int = 64):
        eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
        self.engine = HFEngine(model, eos, tokenizer.pad_token_id, batch_size=batch_size)
        self.tokenizer, self.temperature, self.max_new_tokens, self.seed = tokenizer, temperature, max_new_tokens, seed
        self.use_chat_template = tokenizer.chat_template is not None if use_chat_template is None \
            else use_chat_template
        self.calls = self.generated_tokens = 0

    def __call__(self, prefixes: list[Prefix], n: int) -> list[list[str]]:
        tok = self.tokenizer
        ids = [format_prompt(tok, prompt, self.use_chat_template) + tok(text, add_special_tokens=False)["input_ids"]
               for prompt, text in prefixes]
        params = SamplingParams(temperature=self.temperature, n=n, max_new_tokens=self.max_new_tokens)
        generations = self.engine.generate(ids, params, seed=self.seed, step=self.calls)
        self.calls += 1
        self.generated_tokens += sum(len(g.completion_ids) for g in generations)
        texts = [tok.decode(g.completion_ids, skip_special_tokens=True) for g in generations]
        return [texts[i * n:(i + 1) * n] for i in range(len(prefixes))]  # prompt-major


def sample_and_label(complete: PolicyCompleter, problems: list[dict], score, *, solutions: int, rollouts: int,
                     target: str = "hard", separator: str = "\n") -> tuple[list[dict], dict]:
    """The policy writes `solutions` solutions for every problem ({"prompt", "answer"}), then `mc_labels` labels
    their steps with `rollouts` continuations each. Solutions with no step are left out (counted).

    Returns (rows, stats) as mc_labels, stats with "solutions", "empty_solutions" and "generated_tokens" added.
    """
    written = complete([(p["prompt"], "") for p in problems], n=solutions)
    rows, empty = [], 0
    for problem, texts in zip(problems, written):
        for text in texts:
            steps = split_steps(text, separator)
            if steps:
                rows.append({"prompt": problem["prompt"], "completions": steps, "answer": problem["answer"]})
            else:
                empty += 1
    labelled, stats = mc_labels(rows, lambda prefixes: complete(prefixes, n=rollouts), score, target=target,
                                separator=separator)
    return labelled, {"solutions": len(rows), "empty_solutions": empty, **stats,
                      "generated_tokens": complete.generated_tokens}


# ---- how good are the labels: exact step correctness on arith --------------------------------------------------------

_ARITH_PROMPT = re.compile(r"(\d+)([+-])(\d+)=\s*$")


def arith_exact_labels(task, prompt, steps: list[str]) -> list[bool] | None:
    """Exact step labels for the arith task: step i is right when lines 1..i equal the task's own worked
    solution (PRM800K's convention, as in the task's process_rows: false from the first wrong line on).
    None when the prompt is not an "a+b=" string.

    Example: 47+85=, ["7+5=12 carry 1", "4+8+1=14 carry 1", "answer: 142"] → [True, False, False].
    """
    match = _ARITH_PROMPT.search(prompt) if isinstance(prompt, str) else None
    if match is None:
        return None
    a, op, b = int(match.group(1)), match.group(2), int(match.group(3))
    reference = task.solution_text(a, op, b).split("\n")
    return [steps[:i + 1] == reference[:i + 1] for i in range(len(steps))]


def agreement(rows: list[dict], exact: list[list[bool] | None]) -> dict:
    """How MC labels (good when ≥ 0.5) compare with exact ones, over the steps of rows that have exact labels.

    → {"agreement": fraction of steps where they agree, "false_good": fraction of exactly-wrong steps labelled
    good, "false_bad": fraction of exactly-right steps labelled bad, "good": fraction labelled good, "exact_good":
    fraction exactly right, "steps": steps compared}.
    Example: MC [1, 1, 0] vs exact [T, F, F] → agreement 2/3, false_good 1/2, false_bad 0/1.
    """
    pairs = [(float(y) >= 0.5, e) for row, ex in zip(rows, exact) if ex is not None
             for y, e in zip(row["labels"], ex)]
    wrong = [mc for mc, e in pairs if not e]
    right = [mc for mc, e in pairs if e]
    n = max(1, len(pairs))
    return {"agreement": sum(mc == e for mc, e in pairs) / n,
            "false_good": sum(wrong) / max(1, len(wrong)),
            "false_bad": sum(not mc for mc in right) / max(1, len(right)),
            "good": sum(mc for mc, _ in pairs) / n, "exact_good": len(right) / n, "steps": len(pairs)}


# ---- `posttrain rm reward.mode=prm reward.labels=mc` -----------------------------------------------------------------

def rows_for_run(cfg, run_dir: Path, device) -> list[dict]:
    """The MC-labelled training rows of an `rm` run: read from RUN_DIR/prm_data.jsonl when it is there (a resumed
    run keeps its data), else sampled from reward.label_policy on the task's training problems and written there,
    with RUN_DIR/prm_data_stats.json (counts, generated tokens, agreement with exact labels on arith). Rank 0
    samples; the other ranks wait and read the file."""
    path = Path(run_dir) / DATA_FILE
    if not path.is_file() and distributed.rank() == 0:
        r = cfg.reward
        task = tasks.from_config(cfg.task, steps=True)
        model, tokenizer, _ = load_for_inference(r.label_policy)
        complete = PolicyCompleter(model.to(device), tokenizer, temperature=r.mc_temperature,
                                   max_new_tokens=r.mc_max_new_tokens, seed=cfg.seed, batch_size=cfg.eval.batch_size)
        problems = task.rows("train", cfg.task.num_train, cfg.seed)
        print(f"labelling steps by Monte-Carlo rollouts: {len(problems)} problems × {r.mc_solutions} solutions from "
              f"{r.label_policy}, {r.mc_rollouts} rollouts per step", flush=True)
        rows, stats = sample_and_label(complete, problems, task.score, solutions=r.mc_solutions,
                                       rollouts=r.mc_rollouts, target=r.mc_target, separator=r.step_separator)
        if not rows:
            raise UserError(f"reward.label_policy {r.label_policy} wrote no solution with a step — fix: a policy "
                            "trained on the task's steps format (posttrain sft task.steps=true)")
        if cfg.task.name == "arith":
            stats["exact"] = agreement(rows, [arith_exact_labels(task, row["prompt"], row["completions"])
                                              for row in rows])
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        tmp.rename(path)
        (Path(run_dir) / STATS_FILE).write_text(json.dumps(stats, indent=2) + "\n")
        print(f"{len(rows)} labelled solutions in {path}: {stats['generated_tokens']:,} tokens generated, "
              f"{stats['prefixes']} prefixes rolled out"
              + (f"; agreement with exact step labels {stats['exact']['agreement']:.3f}" if "exact" in stats else ""),
              flush=True)
    distributed.barrier()
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
