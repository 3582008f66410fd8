"""Rejection-sampling fine-tuning (`posttrain rft`), the loop top to bottom: sample, keep what the verifier
accepts, fine-tune on it, repeat. STaR (Zelikman et al. 2022, "STaR: Bootstrapping Reasoning With Reasoning",
arXiv:2203.14465) and RFT (Yuan et al. 2023, "Scaling Relationship on Learning Mathematical Reasoning with Large
Language Models", arXiv:2308.01825).

    round r = 1 … R, from M₀ = model.name_or_path
      sample    k = sampling.n completions per training prompt at sampling.temperature from M_{r−1}; sample j of
                the round's i-th prompt is seeded by (seed, r, i, j)
      keep      the completions the task's verifier accepts that also finished (a stop, not the length limit),
                duplicates (the same text for the same prompt) dropped, at most rft.keep_per_prompt per prompt in
                sample order → round_r/samples.jsonl (every sample, scored), round_r/kept.jsonl
      train     SFT (posttrain.train.sft.run with train.*, not a copy of it) on round_r/train.jsonl: this round's
                kept rows, from M_{r−1}; with rft.restart_from_base, the kept rows of rounds 1..r, from M₀ (STaR
                trains M₀ on the latest round's set; the union contains it when every round sees every prompt, and
                keeps earlier rounds' when each round takes a fresh slice) → M_r = round_r/sft/final (LoRA: merged
                into round_r/model, so the next round starts from a full model). A round that keeps nothing
                trains nothing: M_r is the model it would have started from.
      log       one metrics.jsonl line per round: rft/yield (prompts with ≥ 1 correct sample), rft/sample_accuracy,
                rft/kept, rft/train_rows, rft/generated_tokens (and _total), loss (the SFT's last), eval/accuracy
                (held-out greedy accuracy of M_r; step 0 is M₀'s)
      checkpoint checkpoints/step_r holds the round's state (which model is M_r, tokens so far): resume goes on at
                the next round boundary, and a half-done round is done again with the same seeds, so the same result

    rft.max_seconds caps the wall time: a round that would end past it (judged by the last round's duration) is
    not started. final/ = M_R. checkpoint.every is not used: the checkpoints are the round boundaries.

Measured (CPU, one thread; the demo's SFT checkpoint, 3-digit sums in steps, greedy accuracy 0.455 on 200 held-out
problems; 1000 prompts, k = 4, 2 rounds of one epoch, lr 1e-4 constant, batch 16; about 25 s a round):
    T = 0.5, keep 1 (the defaults)   eval/accuracy 0.455 → 0.485 → 0.54    kept rows with every step right: 91%
    T = 0.5, keep 4                  0.455 → 0.465 → 0.52
    T = 0.7, keep 4                  0.455 → 0.43 → 0.43                    78%
    the quick demo's 2-digit model   0.22 → 0.17 → 0.155 (T = 0.5, keep 1)  29%
    SFT on the task's worked solutions instead, the same 73 steps of 16: 0.515
The verifier sees only the answer: a weak policy's right answers often follow wrong steps ("3+1=3 / answer: 4"),
and fine-tuning on those teaches the wrong steps. RFT helps once most verified samples are right throughout —
a policy good enough, sampled close to greedy.

Worked example of `keep_correct`, k = 4, keep_per_prompt = 2: samples "a" ✓, "a" ✓, "b" ✗, "c" ✓ → kept "a",
"c" (the second "a" is a repeat, "b" is wrong); a prompt whose samples are all wrong adds nothing and lowers the
yield: that prompt and one like it give yield 1/2 and sample accuracy 3/8.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from posttrain import checkpoint, config as C, distributed, tasks
from posttrain.config import RFTConfig, SFTConfig
from posttrain.data import load_rows
from posttrain.errors import DataError, UserError
from posttrain.eval.accuracy import greedy_accuracy_metrics
from posttrain.models.inference import export_model, load_for_inference
from posttrain.models.loading import base_model_path, load_tokenizer, resolve_model_path
from posttrain.rollout import build_engine, generate_text
from posttrain.track import Tracker
from posttrain.train import sft
from posttrain.train.common import batch_plan, format_metrics, prepare_run_dir, stream_indices
from posttrain.train.preflight import check_inputs


def run(cfg: RFTConfig) -> dict:
    """Run the rounds; return the last round's metrics (also in RUN_DIR/metrics.jsonl)."""
    started = time.perf_counter()
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = distributed.init()
    check_inputs(cfg)  # model path, attention kernel, trackers; train.lr and data.max_length from the model
    if world.world_size > 1:
        raise UserError("posttrain rft runs in one process — fix: start it without torchrun")

    # ---- setup: every check on user input happens before the run directory is touched -----------------------------
    data = load_rft_data(cfg)
    run_dir, resume_from = prepare_run_dir(cfg)
    state = {"round": 0, "model": cfg.model.name_or_path, "generated_tokens": 0}
    if resume_from is not None:
        state = json.loads((resume_from / "trainer_state.json").read_text())
    tracker = Tracker(run_dir, total_steps=cfg.rft.rounds, start_step=state["round"], report_to=cfg.log.report_to,
                      progress=False, config=C.to_dict(cfg))
    tracker.write(f"{len(data.train)} training prompts ({data.source}), {cfg.rft.rounds} rounds of k = "
                  f"{cfg.sampling.n} samples per prompt at temperature {cfg.sampling.temperature}"
                  + (f"; resuming after round {state['round']}" if state["round"] else ""))
    model_dir = model_path(run_dir, state["model"])
    model, tokenizer, _ = load_for_inference(str(model_dir))
    model = model.to(world.device)
    # vLLM starts once, from M_0's directory (a LoRA round's base); each round's model is then synced into it
    engine = build_engine(cfg.rollout, model, tokenizer, model_path=base_model_path(str(model_dir)),
                          seed=cfg.seed) if cfg.rollout.engine == "vllm" else None
    if state["round"] == 0 and cfg.eval.at_start and data.held_out:
        tracker.log(0, evaluate(model, tokenizer, data, cfg))

    # ---- rounds -----------------------------------------------------------------------------------------------------
    metrics: dict = {}
    try:
        for r in range(state["round"] + 1, cfg.rft.rounds + 1):
            t0 = time.perf_counter()
            if metrics and cfg.rft.max_seconds and t0 - started + metrics["round_s"] > cfg.rft.max_seconds:
                tracker.write(f"stopping before round {r}: {t0 - started:.0f} s used and the last round took "
                              f"{metrics['round_s']:.0f} s, which would pass rft.max_seconds = {cfg.rft.max_seconds:g}")
                break
            round_dir = run_dir / f"round_{r}"
            shutil.rmtree(round_dir, ignore_errors=True)  # left by an interrupted run: the round is done again
            round_dir.mkdir(parents=True)
            rows = round_prompts(cfg, data, r)
            if engine is not None:
                engine.sync(model)
            sampler = engine or build_engine(cfg.rollout, model, tokenizer)
            groups, generated = sample_and_verify(sampler, tokenizer, rows, data, cfg, r)
            kept = keep_correct(groups, cfg.rft.keep_per_prompt)
            write_jsonl(round_dir / "samples.jsonl", [s for g in groups for s in g])
            write_jsonl(round_dir / "kept.jsonl", kept)

            start = cfg.model.name_or_path if cfg.rft.restart_from_base else state["model"]
            train_rows = accumulated(run_dir, r) if cfg.rft.restart_from_base else kept
            trained: dict = {}
            if train_rows:
                write_jsonl(round_dir / "train.jsonl", train_rows)
                trained = sft.run(round_sft_config(cfg, round_dir, model_path(run_dir, start), len(train_rows)))
                model_dir = round_model(cfg, round_dir)
                state_model = str(model_dir.relative_to(run_dir))
            else:
                model_dir, state_model = model_path(run_dir, start), start
            model, tokenizer, _ = load_for_inference(str(model_dir))
            model = model.to(world.device)

            state = {"round": r, "model": state_model, "generated_tokens": state["generated_tokens"] + generated}
            metrics = {"rft/yield": sum(any(s["score"] == 1.0 for s in g) for g in groups) / len(groups),
                       "rft/sample_accuracy": sum(s["score"] == 1.0 for g in groups for s in g) / sum(map(len, groups)),
                       "rft/kept": len(kept), "rft/train_rows": len(train_rows), "rft/generated_tokens": generated,
                       "rft/generated_tokens_total": state["generated_tokens"]}
            if "loss" in trained:
                metrics["loss"] = trained["loss"]
            if data.held_out:
                metrics.update(evaluate(model, tokenizer, data, cfg))
            metrics["round_s"] = time.perf_counter() - t0
            tracker.log(r, metrics)
            tracker.write(f"round {r}: " + format_metrics({k: v for k, v in metrics.items() if k != "round_s"}))
            checkpoint.save(run_dir, r, lambda d: (d / "trainer_state.json").write_text(json.dumps(state, indent=2)),
                            keep_last=cfg.checkpoint.keep_last)
    finally:
        if engine is not None:
            engine.close()

    # ---- outputs ----------------------------------------------------------------------------------------------------
    tracker.close()
    source = model_path(run_dir, state["model"])
    checkpoint.replace_dir(run_dir / "final.tmp", run_dir / "final",
                           lambda d: shutil.copytree(source, d, dirs_exist_ok=True))
    print(f"done: {format_metrics(metrics)} — model in {run_dir / 'final'}", flush=True)
    return metrics


# ---- the algorithm ---------------------------------------------------------------------------------------------------

def sample_and_verify(engine, tokenizer, rows: list[dict], data: "RFTData", cfg: RFTConfig, round_: int):
    """k = sampling.n completions for every row, scored by the verifier → (groups, generated tokens).

    groups[i] lists row i's samples in sample order: {"prompt", "completion", "score" (1.0, 0.0 or None),
    "finished" (ended by a stop, not by the length limit), "kept" (filled in by keep_correct), and the row's other
    columns, e.g. "answer"}. The per-sample seeds are (seed, round, i, j), so a round is reproducible.
    """
    outputs = generate_text(engine, tokenizer, [row["prompt"] for row in rows], cfg.sampling,
                            use_chat_template=data.use_chat_template, seed=cfg.seed, step=round_)
    k = cfg.sampling.n
    groups = []
    for i, row in enumerate(rows):
        columns = {key: v for key, v in row.items() if key != "prompt"}
        groups.append([{**row, "completion": text, "score": data.score(row["prompt"], text, **columns),
                        "finished": generation.finish_reason != "length", "kept": False}
                       for generation, text in outputs[i * k:(i + 1) * k]])
    return groups, sum(len(generation.completion_ids) for generation, _ in outputs)


def keep_correct(groups: list[list[dict]], keep_per_prompt: int) -> list[dict]:
    """The SFT rows of a round: per prompt, the verified (score 1.0) and finished samples, without repeats (the same
    completion text, ignoring surrounding whitespace), the first `keep_per_prompt` in sample order. A prompt that
    appears in several groups (data drawn with replacement) shares one quota. Marks the kept samples "kept" in
    `groups`. Returns rows {"prompt", "completion", "answer"?}.

    Example (keep_per_prompt 2): "a" ✓, "a" ✓, "b" ✗, "c" ✓ → "a", "c".
    """
    kept, seen = [], {}  # prompt (as JSON) → the completions kept for it
    for group in groups:
        for sample in group:
            text, texts = sample["completion"].strip(), seen.setdefault(json.dumps(sample["prompt"]), set())
            if len(texts) == keep_per_prompt or sample["score"] != 1.0 or not sample["finished"] or text in texts:
                continue
            texts.add(text)
            sample["kept"] = True
            kept.append({"prompt": sample["prompt"], "completion": sample["completion"],
                         **({"answer": sample["answer"]} if "answer" in sample else {})})
    return kept


def accumulated(run_dir: Path, round_: int) -> list[dict]:
    """restart_from_base: the kept rows of rounds 1..round_, each (prompt, completion) once, earliest first."""
    rows, seen = [], set()
    for r in range(1, round_ + 1):
        for row in read_jsonl(run_dir / f"round_{r}" / "kept.jsonl"):
            key = (json.dumps(row["prompt"]), row["completion"].strip())
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def round_prompts(cfg: RFTConfig, data: "RFTData", round_: int) -> list[dict]:
    """Every training prompt (rft.prompts_per_round 0), or the round's slice of the shuffled stream of them."""
    per_round = cfg.rft.prompts_per_round
    if per_round == 0:
        return data.train
    return [data.train[i] for i in stream_indices((round_ - 1) * per_round, per_round, len(data.train), cfg.seed)]


def round_sft_config(cfg: RFTConfig, round_dir: Path, start: Path, num_rows: int) -> SFTConfig:
    """The round's SFT: train.*, data.* (max length, packing …), lora.*, log.* of the rft config, on the round's
    train.jsonl (num_rows rows), from `start`; no held-out loss or accuracy inside it (the round measures accuracy
    itself). Without train.max_steps a round trains train.epochs passes over its rows, rounded up, so a round that
    kept fewer rows than one batch still takes a step: e.g. 1 epoch of 20 rows at batch 8 → 3 steps."""
    steps = cfg.train.max_steps or math.ceil(cfg.train.epochs * num_rows / batch_plan(cfg.train)[2])
    return SFTConfig(
        output_dir=str(round_dir / "sft"), overwrite=True, seed=cfg.seed, threads=cfg.threads,
        model=replace(cfg.model, name_or_path=str(start), init="pretrained"), lora=cfg.lora, task=cfg.task,
        data=replace(cfg.data, train_path=str(round_dir / "train.jsonl"), eval_path=None, columns={}),
        train=replace(cfg.train, max_steps=steps), eval=replace(cfg.eval, task_accuracy=False, at_start=False, every=0),
        checkpoint=replace(cfg.checkpoint, every=0, resume=False, keep_last=1), log=cfg.log)


def round_model(cfg: RFTConfig, round_dir: Path) -> Path:
    """M_r: the round's SFT model. New adapters (lora.r > 0) are merged into their base: a full model the next
    round samples from and trains new adapters on. A full model, or an adapter continued (lora.r unset, starting
    from an adapter directory), is kept as it is: the next round trains it further."""
    if not cfg.lora.r:
        return round_dir / "sft" / "final"
    export_model(round_dir / "sft" / "final", round_dir / "model")
    return round_dir / "model"


@torch.no_grad()
def evaluate(model, tokenizer, data: "RFTData", cfg: RFTConfig) -> dict:
    """eval/accuracy: greedy accuracy on the held-out rows, scored by the verifier (and eval/accuracy/level_N per
    level when the rows carry one)."""
    return greedy_accuracy_metrics(model, tokenizer, data.held_out, data.score,
                                   use_chat_template=data.use_chat_template, max_new_tokens=cfg.eval.max_new_tokens,
                                   batch_size=cfg.eval.batch_size)


# ---- setup -----------------------------------------------------------------------------------------------------------

@dataclass
class RFTData:
    train: list[dict]       # {"prompt", "answer", other columns}: what the rounds sample for
    held_out: list[dict]    # the same, scored for eval/accuracy ([] when there are none)
    score: object           # the verifier: score(prompt, completion, **columns) → 1.0 / 0.0 / None
    use_chat_template: bool
    source: str


def load_rft_data(cfg: RFTConfig) -> RFTData:
    """The task's problems, or prompt rows from data.train_path (held out: data.eval_path, or the task's problems
    when eval.task_accuracy is true). User rows need an `answer` for the task's verifier."""
    task = tasks.from_config(cfg.task)
    if cfg.data.train_path is None:
        train, source = task.rows("train", cfg.task.num_train, cfg.seed), f"task '{cfg.task.name}'"
    else:
        train, source = prompt_rows(cfg.data.train_path, cfg), cfg.data.train_path
    task_held_out = cfg.eval.task_accuracy if cfg.eval.task_accuracy is not None else cfg.data.train_path is None
    if cfg.data.eval_path is not None:
        held_out = prompt_rows(cfg.data.eval_path, cfg)[:cfg.eval.num_samples]
    elif task_held_out:
        held_out = task.rows("eval", min(cfg.eval.num_samples, cfg.task.num_eval), cfg.seed)
    else:
        held_out = []
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    return RFTData(train, held_out, task.score, tokenizer.chat_template is not None, source)


def prompt_rows(path: str, cfg: RFTConfig) -> list[dict]:
    """Rows {"prompt", "answer", …} of a user file; DataError naming the row and field when one is missing."""
    rows = load_rows(path, columns=cfg.data.columns)
    for i, row in enumerate(rows):
        if not row.get("prompt") or not isinstance(row["prompt"], (str, list)):
            raise rows.error(i, "no prompt (a non-empty string, or a list of chat messages)", field="prompt",
                             fix="give every row a 'prompt' column (rename yours with data.columns=question:prompt)")
        if "answer" not in row:
            raise rows.error(i, f"no answer: the samples are verified by the task '{cfg.task.name}', which compares "
                             "them with the row's answer", field="answer",
                             fix="add an 'answer' column (rename yours with data.columns=solution:answer)")
    if not len(rows):
        raise DataError("no rows", file=path, fix="give it rows with a prompt and an answer")
    return list(rows)


# ---- files -----------------------------------------------------------------------------------------------------------

def model_path(run_dir: Path, model: str) -> Path:
    """A state's model: a path inside the run ("round_1/sft/final"), else the given model directory, run directory
    (its final/) or 'tiny'."""
    inside = Path(run_dir) / model
    return Path(resolve_model_path(str(inside) if inside.exists() else model))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
