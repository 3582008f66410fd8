"""Knowledge distillation (`posttrain distill`): a frozen teacher, a student of any size, three modes.

    logit      off-policy logit distillation (Hinton et al. 2015): on the data's completions (the task's SFT rows
               or data.train_path) the student matches the teacher's next-token distribution at every
               completion token, loss = α·D(teacher, student) + (1 − α)·CE, D the chosen divergence
               (posttrain.algos.distill: forward_kl, reverse_kl, jsd) at temperature τ, scaled by τ²
    on_policy  GKD (Agarwal et al. 2024, arXiv:2306.13649): each step, with probability λ (a pure function of
               seed and step, so resume is exact), the student samples the completions for the step's prompts
               (the rollout engine, sample k of example i seeded by (seed, step, i)) and the teacher scores them;
               otherwise the data's completions are used. Loss = D on those tokens: the student learns on the
               sequences it actually produces, mistakes included, which plain SFT never shows it
    cot        chain-of-thought distillation: the teacher writes solutions for the training prompts (sampled,
               kept when the task's verifier accepts them with distill.filter=verified), they are written to
               RUN_DIR/rationales.jsonl, and the student is trained on them by the SFT loop (train/sft.py) in
               RUN_DIR/student/ — text only, so teacher and student may even have different tokenizers

The logit / on_policy loop, top to bottom:

    setup      student tokenizer; the teacher (model, adapter or run directory) frozen in eval mode, its
               tokenizer checked equal to the student's (ConfigError otherwise); both output layers must cover
               the tokenizer, and logits are sliced to its length (padded vocabularies may differ); data and batch
               arithmetic as in SFT; run dir; student; optimizer; resume
    step       G examples (SFT's data order); on-policy steps replace their completions by the student's samples;
               per micro-batch both models run on the same packed batch, the teacher under no_grad; per-token
               losses are reduced by aggregate.py with the WHOLE step's token count (accumulation is exact)
    log        loss, distill_loss, ce_loss (data steps), on_policy, response_len/mean (on-policy steps), …
    eval       SFT's held-out loss and greedy task accuracy, plus eval/distill_loss: D on held-out completions
    checkpoint as SFT (model, optimizer, scheduler, RNGs; the data position and on-policy draws follow the step)
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from functools import partial
from pathlib import Path

import torch

from posttrain import checkpoint, config as C, distributed, tasks
from posttrain.algos import distill as divergences
from posttrain.algos.aggregate import aggregate
from posttrain.algos.logprobs import IGNORE_INDEX, logprobs_and_entropy
from posttrain.algos.sft import token_cross_entropy
from posttrain.config import DistillConfig, SFTConfig
from posttrain.data import collate, load_rows, normalize
from posttrain.errors import ConfigError, UserError
from posttrain.models.inference import load_for_inference
from posttrain.models.loading import base_model_path, load_model, load_tokenizer
from posttrain.models.logits import (chunkable_head, device_of, forward_logits, hidden_at_targets, reduce_at_targets,
                                     target_positions)
from posttrain.run_dir import classify, lock, open_run
from posttrain.rollout import HFEngine, SamplingParams, build_engine, generate_text
from posttrain.train import sft
from posttrain.train.common import (batch_indices, batch_plan, optimizer_step,
                                    prepare_run_dir, save_checkpoint, start_training, total_steps)
from posttrain.train.loop import StepEnd
from posttrain.train.preflight import check_inputs


def run(cfg: DistillConfig) -> dict:
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = distributed.init()
    check_inputs(cfg)  # model path, attention kernel, trackers; train.lr and data.max_length from the model
    if cfg.distill.mode == "cot":
        return run_cot(cfg, world)

    # ---- setup: every check on user input happens before the run directory is touched -----------------------------
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    teacher, teacher_tokenizer, teacher_dir = load_for_inference(cfg.distill.teacher)
    vocab = shared_vocabulary(tokenizer, teacher_tokenizer, cfg, teacher, teacher_dir)
    teacher = teacher.to(world.device).eval().requires_grad_(False)
    divergence = divergence_of(cfg)
    data = sft.load_sft_data(cfg, tokenizer)
    micro, accum, global_batch = batch_plan(cfg.train, world.world_size)
    num_steps = total_steps(cfg.train, len(data.train), global_batch)
    distributed.check_strategy(cfg.train, world)
    run_dir, resume_from = prepare_run_dir(cfg)

    model = load_model(cfg.model, cfg.lora, seed=cfg.seed,
                       weights_dir=resume_from / "model" if resume_from else None,
                       disable_dropout=cfg.train.disable_dropout)
    model, optimizer, scheduler, start_step, tracker, guard = start_training(
        cfg, model, world, run_dir, resume_from, num_steps, (micro, accum, global_batch),
        f"{len(data.train)} training examples{data.report}; {cfg.distill.mode} distillation from {teacher_dir} "
        f"({cfg.distill.loss}, τ = {cfg.distill.temperature})")
    if cfg.eval.at_start and start_step == 0:
        tracker.log(0, evaluate(model, teacher, tokenizer, data, cfg, divergence, vocab))

    # ---- loop -------------------------------------------------------------------------------------------------------
    end = StepEnd(cfg, num_steps, tracker, guard,
                  save=lambda step: save_checkpoint(run_dir, step, model, optimizer, scheduler, guard, cfg),
                  evaluate=lambda: evaluate(model, teacher, tokenizer, data, cfg, divergence, vocab))
    per_rank = micro * accum
    metrics: dict = {}
    engine = None  # the student's sampler, started at the first on-policy step
    try:
        for step in range(start_step, num_steps):
            t0 = time.perf_counter()
            indices = batch_indices(step, global_batch, len(data.train), cfg.seed)
            mine = indices[world.rank * per_rank:(world.rank + 1) * per_rank]  # this rank's contiguous block
            examples = [data.train[i] for i in mine]
            on_policy = student_samples_this_step(cfg, step)
            sampled = {}
            if on_policy:
                engine = engine or student_engine(cfg, model, tokenizer)
                engine.sync(model)  # vLLM: the student's current weights
                examples, sampled = student_samples(engine, examples, mine, step, cfg)
            micro_batches = [collate(examples[j:j + micro], pad_id=tokenizer.pad_token_id, packing=cfg.data.packing,
                                     pack_length=cfg.data.pack_length or None) for j in range(0, per_rank, micro)]
            sums = accumulate_gradients(model, teacher, micro_batches, cfg, divergence, vocab, on_policy)
            grad_norm = optimizer_step(model, optimizer, cfg, guard, sums["loss"])
            scheduler.step()
            done = step + 1
            tokens = sums.pop("tokens")
            metrics = {**sums, **sampled, "on_policy": float(on_policy), "grad_norm": grad_norm,
                       "lr": scheduler.get_last_lr()[0], "tokens_per_s": tokens / (time.perf_counter() - t0),
                       "epoch": done * global_batch / len(data.train)}
            end.step(done, metrics)  # skipped_steps, eval, log, checkpoint when due (train/loop.py)
    finally:
        if engine is not None:
            engine.close()

    # ---- outputs ----------------------------------------------------------------------------------------------------
    return end.finish(metrics, run_dir, model, tokenizer, world.is_main, shown=("loss", "distill_loss"))


# ---------------------------------------------------------------------------------------------------------------------
# The algorithm: one step's gradients, and where an on-policy step's completions come from
# ---------------------------------------------------------------------------------------------------------------------

def accumulate_gradients(model, teacher, micro_batches: list[dict], cfg: DistillConfig, divergence, vocab: int,
                         on_policy: bool) -> dict:
    """Backward over every micro-batch; the gradient is that of the token-mean loss of the whole step.

    Per token: D(teacher ‖ student) from `divergence` (both logits sliced to the shared `vocab`), and the
    cross-entropy of the data's token. Loss = D on on-policy steps and in mode on_policy (GKD); in mode logit
    α·D + (1 − α)·CE. Each micro-batch's sum is divided by the token count of all micro-batches on all ranks.
    Returns the step's loss, distill_loss, ce_loss (data steps) and the input token count, over all ranks.
    """
    num_tokens = distributed.all_reduce_sum(sum(int((mb["targets"] != -100).sum()) for mb in micro_batches))
    alpha = 1.0 if cfg.distill.mode == "on_policy" else cfg.distill.alpha
    device = device_of(model)
    totals = torch.zeros(3, dtype=torch.float64)
    for i, mb in enumerate(micro_batches):
        mb = {k: v.to(device) for k, v in mb.items()}
        with distributed.gradient_sync(model, enabled=i == len(micro_batches) - 1):
            divergence_tokens, ce_tokens, mask = token_losses(model, teacher, mb, cfg, divergence, vocab)
            distill_loss = aggregate(divergence_tokens, mask, "token_mean", num_tokens=num_tokens)
            ce_loss = aggregate(ce_tokens, mask, "token_mean", num_tokens=num_tokens)
            loss = alpha * distill_loss + (1 - alpha) * ce_loss
            (loss * distributed.world_size()).backward()
        totals += torch.tensor([loss.item(), distill_loss.item(), ce_loss.item()], dtype=torch.float64)
    loss, distill_loss, ce_loss = distributed.all_reduce_tensor(totals).tolist()
    tokens = distributed.all_reduce_sum(sum(int((mb["seq_index"] >= 0).sum()) for mb in micro_batches))
    out = {"loss": loss, "distill_loss": distill_loss, "tokens": tokens}
    if not on_policy:  # the NLL of the student's own samples says nothing; the data's CE does
        out["ce_loss"] = ce_loss
    return out


def token_losses(model, teacher, batch: dict, cfg: DistillConfig, divergence, vocab: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(D(teacher ‖ student), the student's cross-entropy, mask), each [R, K] at the positions with a target; the
    teacher without gradient.

    With train.logits_chunk > 0 (and two models whose logits are their output layer's output): the teacher's final
    hidden states at those positions first, then one student forward in which both output layers run on
    logits_chunk positions at a time and each chunk is reduced to its two numbers at once (models/logits.py) —
    neither model's [R, K, V] logits exist. Otherwise both models' full logits, sliced to the shared vocabulary.
    """
    precision, chunk = cfg.train.precision, cfg.train.logits_chunk
    teacher_head = chunkable_head(teacher) if chunk > 0 and chunkable_head(model) is not None else None
    if teacher_head is None:
        logits, targets = forward_logits(model, batch, precision)
        with torch.no_grad():
            teacher_logits, _ = forward_logits(teacher, batch, precision)
        mask = targets != IGNORE_INDEX
        return (divergence(logits[..., :vocab], teacher_logits[..., :vocab], mask),
                token_cross_entropy(logits, targets)[0], mask)

    def reduce(logits: torch.Tensor, teacher_hidden: torch.Tensor, targets: torch.Tensor):  # one chunk: [n, V] → [n]
        with torch.no_grad():
            teacher_logits = teacher_head(teacher_hidden)
        every = torch.ones(1, len(targets), dtype=torch.bool, device=logits.device)
        logp, = logprobs_and_entropy(logits, targets)
        return divergence(logits[None, :, :vocab], teacher_logits[None, :, :vocab], every)[0], -logp

    targets = batch["targets"][:, target_positions(batch["targets"])]
    mask = targets != IGNORE_INDEX
    with torch.no_grad():
        teacher_hidden = hidden_at_targets(teacher, batch, precision)
    divergence_tokens, ce_tokens = reduce_at_targets(model, batch, reduce, columns=(teacher_hidden, targets[mask]),
                                                     chunk=chunk, precision=precision)
    return divergence_tokens, ce_tokens, mask


def student_samples_this_step(cfg: DistillConfig, step: int) -> bool:
    """GKD's coin: True with probability λ, drawn from (seed, step) alone, so a resumed run draws the same."""
    if cfg.distill.mode != "on_policy":
        return False
    return random.Random(f"distill-on-policy:{cfg.seed}:{step}").random() < cfg.distill.lam


def student_engine(cfg: DistillConfig, model, tokenizer):
    """The built-in engine on the student itself, or vLLM started from the student's starting weights (the base of
    a LoRA student) and synced before each sampling."""
    if cfg.rollout.engine == "vllm":
        return build_engine(cfg.rollout, None, tokenizer, base_model_path(cfg.model.name_or_path), seed=cfg.seed)
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return HFEngine(distributed.unwrap(model), eos, tokenizer.pad_token_id,
                    batch_size=cfg.distill.generation_batch_size)


@torch.no_grad()
def student_samples(engine, examples: list[dict], example_ids: list[int], step: int,
                    cfg: DistillConfig) -> tuple[list[dict], dict]:
    """The same prompts with completions sampled by the student: [{"input_ids": prompt + sample, "labels":
    -100 on the prompt, the sample's tokens (eos included) after}], and response-length metrics.

    The prompt is everything before an example's first trained token (for a chat row: up to and including the
    assistant header), so the student continues exactly where the data's completion starts.
    """
    prompts = [ex["input_ids"][:next(j for j, label in enumerate(ex["labels"]) if label != -100)]
               for ex in examples]
    params = SamplingParams(temperature=cfg.distill.sample_temperature, max_new_tokens=cfg.distill.max_new_tokens)
    generations = engine.generate(prompts, params, seed=cfg.seed, step=step, example_ids=example_ids)
    samples = [{"input_ids": p + g.completion_ids, "labels": [-100] * len(p) + g.completion_ids}
               for p, g in zip(prompts, generations)]
    lengths = [len(g.completion_ids) for g in generations]
    truncated = sum(g.finish_reason == "length" for g in generations)
    return samples, {"response_len/mean": sum(lengths) / len(lengths), "response/truncated_frac":
                     truncated / len(generations)}


@torch.no_grad()
def evaluate(model, teacher, tokenizer, data: sft.SFTData, cfg: DistillConfig, divergence, vocab: int) -> dict:
    """SFT's held-out metrics (eval/loss, eval/ppl, eval/accuracy) and eval/distill_loss, the token-mean
    divergence from the teacher on the held-out completions."""
    out = sft.evaluate(model, tokenizer, data, cfg)
    if not data.eval:
        return out
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(data.eval), cfg.eval.batch_size):
        batch = collate(data.eval[start:start + cfg.eval.batch_size], pad_id=tokenizer.pad_token_id,
                        packing=cfg.data.packing, pack_length=cfg.data.pack_length or None)
        batch = {k: v.to(device_of(model)) for k, v in batch.items()}
        divergence_tokens, _, mask = token_losses(model, teacher, batch, cfg, divergence, vocab)
        total += divergence_tokens.sum().item()
        count += int(mask.sum())
    model.train()
    out["eval/distill_loss"] = total / max(count, 1)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Chain-of-thought distillation: the teacher's verified solutions, then the SFT loop
# ---------------------------------------------------------------------------------------------------------------------

def run_cot(cfg: DistillConfig, world) -> dict:
    """Sample the teacher's solutions for the training prompts, keep the verified (or all finished) ones in
    RUN_DIR/rationales.jsonl, and train the student on them with train/sft.py in RUN_DIR/student/.

    Resume (checkpoint.resume=true) reuses rationales.jsonl and continues the student's SFT run."""
    if world.world_size > 1:
        raise ConfigError("distill.mode=cot runs in one process (the teacher writes one file of solutions) — fix: "
                          "run it without torchrun, or distill with mode=logit or on_policy")
    run_dir = Path(cfg.output_dir)
    rationales = run_dir / "rationales.jsonl"
    if cfg.checkpoint.resume and rationales.is_file():
        lock(run_dir)  # the rationales are kept; the student's own run directory is opened (and locked) by sft
    else:
        teacher, teacher_tokenizer, teacher_dir = load_for_inference(cfg.distill.teacher)
        task, rows = cot_prompts(cfg)
        open_cot_dir(cfg, run_dir)
        kept, summary = teacher_rationales(cfg, teacher.to(world.device), teacher_tokenizer, task, rows)
        summary["teacher"] = str(teacher_dir)
        (run_dir / "rationales_summary.json").write_text(json.dumps(summary, indent=2))
        print(f"teacher {teacher_dir}: {summary['kept']} of {summary['sampled']} solutions kept "
              f"({cfg.distill.filter}); {summary['truncated']} cut at distill.max_new_tokens", flush=True)
        if not kept:
            raise UserError(f"the teacher produced no usable solution for {len(rows)} prompts (filter="
                            f"{cfg.distill.filter}) — fix: use a trained teacher, raise distill.max_new_tokens or "
                            "distill.samples_per_prompt, or set distill.filter=none")
        tmp = rationales.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
        tmp.replace(rationales)
    return sft.run(student_sft_config(cfg, run_dir, rationales))


def cot_prompts(cfg: DistillConfig) -> tuple[object, list[dict]]:
    """The task (its verifier) and the prompts the teacher solves: data.train_path rows with a `prompt` (and the
    columns the verifier reads, e.g. `answer`), else the task's training problems."""
    task = tasks.from_config(cfg.task)
    if cfg.data.train_path is None:
        return task, task.rows("train", cfg.task.num_train, cfg.seed)
    return task, list(normalize(load_rows(cfg.data.train_path, columns=cfg.data.columns), kind="prompt"))


def teacher_rationales(cfg: DistillConfig, teacher, tokenizer, task, rows: list[dict]) -> tuple[list[dict], dict]:
    """distill.samples_per_prompt solutions per prompt from the teacher → the kept {"prompt", "completion"} rows
    and counts. Solutions cut at max_new_tokens are never kept (the student would learn to stop mid-way)."""
    n = cfg.distill.samples_per_prompt
    engine = HFEngine(teacher, [tokenizer.eos_token_id], tokenizer.pad_token_id,
                      batch_size=cfg.distill.generation_batch_size)
    params = SamplingParams(temperature=cfg.distill.sample_temperature, n=n, max_new_tokens=cfg.distill.max_new_tokens)
    use_template = cfg.task.format == "chat" and tokenizer.chat_template is not None
    outputs = generate_text(engine, tokenizer, [r["prompt"] for r in rows], params, use_chat_template=use_template,
                            seed=cfg.seed)
    kept, verified, truncated = [], 0, 0
    for k, (generation, text) in enumerate(outputs):  # prompt-major: output k belongs to row k // n
        row = rows[k // n]
        right = task.score(row["prompt"], text, **{c: v for c, v in row.items() if c != "prompt"}) == 1.0
        verified += right
        truncated += generation.finish_reason == "length"
        if generation.finish_reason != "length" and (right or cfg.distill.filter == "none"):
            kept.append({"prompt": row["prompt"], "completion": text})
    return kept, {"prompts": len(rows), "sampled": len(outputs), "verified": verified, "truncated": truncated,
                  "kept": len(kept), "filter": cfg.distill.filter}


def open_cot_dir(cfg: DistillConfig, run_dir: Path) -> None:
    """Open a cot run directory by the rules of every run directory (run_dir.py): never a folder that is not a
    run, never a live one; an old run is replaced only with overwrite=true. A cot run holds no checkpoint of its own
    (its student does), so what a resume continues is RUN_DIR/rationales.jsonl: checkpoint.resume=true without it is
    refused, and checkpoint.resume=auto without it starts afresh."""
    if cfg.checkpoint.resume is True and classify(run_dir) == "run":
        raise UserError(f"checkpoint.resume is set but {run_dir} has no rationales.jsonl to resume from — fix: "
                        "drop checkpoint.resume, or point output_dir at the run to continue")
    resume = "auto" if cfg.checkpoint.resume == "auto" else False
    open_run(dataclasses.replace(cfg, checkpoint=dataclasses.replace(cfg.checkpoint, resume=resume)), "distill")


def student_sft_config(cfg: DistillConfig, run_dir: Path, rationales: Path) -> SFTConfig:
    """The student's SFT run on the rationales: this config's model, training and eval sections; task accuracy
    scored on the task's held-out problems when the prompts came from the task."""
    sft_cfg = SFTConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(SFTConfig)})
    student_dir = run_dir / "student"
    resume = cfg.checkpoint.resume and checkpoint.latest(student_dir) is not None
    task_accuracy = cfg.data.train_path is None if cfg.eval.task_accuracy is None else cfg.eval.task_accuracy
    return dataclasses.replace(
        sft_cfg, output_dir=str(student_dir), overwrite=not resume,  # no checkpoint: a student run never saved
        data=dataclasses.replace(cfg.data, train_path=str(rationales), eval_path=None, columns={}),
        eval=dataclasses.replace(cfg.eval, task_accuracy=task_accuracy),
        checkpoint=dataclasses.replace(cfg.checkpoint, resume=resume))


# ---------------------------------------------------------------------------------------------------------------------
# Checks: the teacher's tokenizer and vocabulary against the student's (the settings: DistillConfig.validate)
# ---------------------------------------------------------------------------------------------------------------------

def divergence_of(cfg: DistillConfig):
    """The registered loss with this config's τ (and β where the loss takes it):
    fn(student_logits, teacher_logits, mask) → per-token losses."""
    entry = divergences.DISTILL_LOSSES.entry(cfg.distill.loss)
    kwargs = {"temperature": cfg.distill.temperature}
    if "beta" in entry.hparams:
        kwargs["beta"] = cfg.distill.beta
    return partial(entry.fn, **kwargs)


def shared_vocabulary(tokenizer, teacher_tokenizer, cfg: DistillConfig, teacher, teacher_dir) -> int:
    """The number of token ids both models' distributions are compared over: the tokenizer's length.

    The teacher's tokenizer must be the student's (same token → id map), else the i-th logit of one model and
    of the other mean different tokens. Output layers are often padded (to a multiple of 64, 128 …) and may
    differ in size between the two; both must cover the tokenizer, and the padding logits are sliced off.
    """
    student_vocab, teacher_vocab = tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if student_vocab != teacher_vocab:
        differing = sorted(set(student_vocab.items()) ^ set(teacher_vocab.items()), key=lambda kv: kv[1])[:3]
        raise ConfigError(
            f"distill.teacher ({teacher_dir}) has a different tokenizer from the student ({cfg.model.name_or_path}): "
            f"{len(teacher_vocab)} vs {len(student_vocab)} tokens, differing e.g. at "
            f"{', '.join(f'{tok!r}→{i}' for tok, i in differing)}. Logit distillation compares the two "
            "next-token distributions id by id, so both models must share one tokenizer — fix: choose a teacher and "
            "student of one model family, or use distill.mode=cot (text only)")
    vocab = len(tokenizer)
    sizes = {"teacher": teacher.get_output_embeddings().weight.shape[0], "student": student_output_size(cfg)}
    for who, size in sizes.items():
        if size < vocab:
            raise ConfigError(f"the {who}'s output layer has {size} rows but the tokenizer has {vocab} tokens — "
                              "fix: resize the model's embeddings to the tokenizer before distilling")
    return vocab


def student_output_size(cfg: DistillConfig) -> int:
    """The student's vocab_size from its config, read without loading the weights."""
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(base_model_path(cfg.model.name_or_path),  # adapters keep the vocabulary
                                        trust_remote_code=cfg.model.trust_remote_code)
    return config.get_text_config().vocab_size
