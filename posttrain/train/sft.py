"""Supervised fine-tuning (and pretraining): the loop, top to bottom.

    setup     tokenizer → data (validated before anything is written) → run dir → model → optimizer → resume
    step      G = micro_batch_size × grad_accum examples; each micro-batch's summed token losses are divided by
              the number of loss tokens in the WHOLE step, so accumulation is exact (mb 8 × acc 1 = mb 1 × acc 8)
    log       metrics.jsonl every log.every steps, progress bar
    eval      held-out loss / perplexity and task accuracy by greedy generation
    checkpoint atomic, rotated, resumable exactly (the data position is a function of the step)

Pretraining is the same loop on `text` rows, where every token is in the loss.
"""

from __future__ import annotations

import math
import time

import torch

from posttrain import distributed
from posttrain.algos.aggregate import aggregate
from posttrain.algos.logprobs import IGNORE_INDEX, LOGITS_CHUNK
from posttrain.config import SFTConfig
from posttrain.data import build_sft_examples, collate, load_rows, normalize
from posttrain.envs.builtin import ENVIRONMENTS, demonstrations
from posttrain.errors import ConfigError
from posttrain.eval.accuracy import greedy_accuracy_metrics
from posttrain.models.loading import load_model, load_tokenizer
from posttrain.models.logits import device_of, target_logprobs
from posttrain.train.common import (NonFiniteGuard, batch_indices, batch_plan, optimizer_step, prepare_run_dir,
                                    save_checkpoint, start_training, task_and_problems, total_steps)
from posttrain.train.loop import StepEnd
from posttrain.train.preflight import check_inputs


def run(cfg: SFTConfig) -> dict:
    """Train; return the final metrics (also in RUN_DIR/metrics.jsonl). Under torchrun, every process runs
    this same function; see posttrain/distributed.py for what each rank does."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    world = distributed.init()
    check_inputs(cfg)  # model path, attention kernel, trackers; train.lr and data.max_length from the model

    # ---- setup: every check on user input happens before the run directory is touched -----------------------------
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    data = load_sft_data(cfg, tokenizer)
    micro, accum, global_batch = batch_plan(cfg.train, world.world_size)
    num_steps = total_steps(cfg.train, len(data.train), global_batch)
    distributed.check_strategy(cfg.train, world)
    run_dir, resume_from = prepare_run_dir(cfg)

    model = load_model(cfg.model, cfg.lora, seed=cfg.seed,
                       weights_dir=resume_from / "model" if resume_from else None,
                       disable_dropout=cfg.train.disable_dropout)
    model, optimizer, scheduler, start_step, tracker, guard = start_training(
        cfg, model, world, run_dir, resume_from, num_steps, (micro, accum, global_batch),
        f"{len(data.train)} training examples{data.report}")
    if cfg.eval.at_start and start_step == 0:
        tracker.log(0, evaluate(model, tokenizer, data, cfg))

    # ---- loop -------------------------------------------------------------------------------------------------------
    end = StepEnd(cfg, num_steps, tracker, guard,
                  save=lambda step: save_checkpoint(run_dir, step, model, optimizer, scheduler, guard, cfg),
                  evaluate=lambda: evaluate(model, tokenizer, data, cfg))
    per_rank = micro * accum
    metrics: dict = {}
    for step in range(start_step, num_steps):
        t0 = time.perf_counter()
        indices = batch_indices(step, global_batch, len(data.train), cfg.seed)
        mine = indices[world.rank * per_rank:(world.rank + 1) * per_rank]  # this rank's contiguous block
        micro_batches = [collate([data.train[i] for i in mine[j:j + micro]], pad_id=tokenizer.pad_token_id,
                                 packing=cfg.data.packing, pack_length=cfg.data.pack_length or None)
                         for j in range(0, per_rank, micro)]
        loss, grad_norm, n_tokens = train_step(model, optimizer, micro_batches, cfg, guard)
        scheduler.step()
        done = step + 1
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0],
                   "tokens_per_s": n_tokens / (time.perf_counter() - t0),
                   "epoch": done * global_batch / len(data.train)}
        end.step(done, metrics)  # skipped_steps, eval, log, checkpoint when due (train/loop.py)

    # ---- outputs ----------------------------------------------------------------------------------------------------
    return end.finish(metrics, run_dir, model, tokenizer, world.is_main, shown=("loss",))


def train_step(model, optimizer, micro_batches: list[dict], cfg: SFTConfig, guard: NonFiniteGuard):
    """One optimizer step over this rank's micro-batches. Returns (loss, grad_norm, input tokens), each for
    the whole step over all ranks."""
    loss = accumulate_gradients(model, micro_batches, cfg.train.precision, cfg.train.logits_chunk)
    grad_norm = optimizer_step(model, optimizer, cfg, guard, loss)
    n_tokens = distributed.all_reduce_sum(sum(int((mb["seq_index"] >= 0).sum()) for mb in micro_batches))
    return loss, grad_norm, n_tokens


def accumulate_gradients(model, micro_batches: list[dict], precision: str = "fp32",
                         logits_chunk: int = LOGITS_CHUNK) -> float:
    """Backward over every micro-batch; the gradients equal those of the token-mean loss of the whole step.

    The per-token loss is the cross-entropy −log π(target) (`token_losses`), computed from the output layer
    logits_chunk positions at a time (models/logits.target_logprobs; 0: from the full logits). Each micro-batch's
    summed token losses are divided by the loss-token count of ALL micro-batches on ALL ranks, so the sum over
    micro-batches and ranks is the global token mean, whatever the split. DDP and FSDP average gradients over
    ranks, hence the × world size. Returns that global loss (a float).
    """
    local_tokens = sum(int((mb["targets"] != -100).sum()) for mb in micro_batches)
    num_loss_tokens = distributed.all_reduce_sum(local_tokens)
    world_size = distributed.world_size()
    device = device_of(model)
    local_loss = torch.zeros((), device=device)
    for i, mb in enumerate(micro_batches):
        with distributed.gradient_sync(model, enabled=i == len(micro_batches) - 1):
            token_loss, mask = token_losses(model, {k: v.to(device) for k, v in mb.items()}, precision, logits_chunk)
            loss = aggregate(token_loss, mask, "token_mean", num_tokens=num_loss_tokens)
            (loss * world_size).backward()
        local_loss += loss.detach()
    return distributed.all_reduce_sum(local_loss.item())


def token_losses(model, batch: dict, precision: str, logits_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross-entropy of each target (the same numbers as algos.sft.token_cross_entropy on the full logits) and
    its mask, both [R, K] at the positions with a target."""
    out = target_logprobs(model, batch, precision, chunk=logits_chunk)
    return -out.logps, out.targets != IGNORE_INDEX


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------

def demonstrations_of(cfg: SFTConfig, task):
    """rows_of(split, n, seed) for env.name: the built-in task's tool-use demonstrations."""
    if cfg.data.train_path is not None or cfg.task.format != "chat" or not hasattr(task, "tool_rows") or \
            cfg.env.name not in ENVIRONMENTS:
        raise ConfigError(f"sft env.name={cfg.env.name} trains on demonstrations of a built-in environment "
                          f"({', '.join(ENVIRONMENTS)}) made from a built-in task with tool rows (word, lookup, "
                          "code) in chat format; a data file carries its own tools and tool calls — fix: e.g. "
                          "task.name=word env.name=calculator, or drop env.name")
    return lambda split, n, seed: demonstrations(cfg.env.name, task.tool_rows(split, n, seed),
                                                 max_turns=cfg.env.max_turns, timeout=cfg.env.tool_timeout)


class SFTData:
    """Tokenized train/eval examples plus the held-out problems scored for accuracy."""

    def __init__(self, train, eval_examples, problems, score, use_chat_template, report):
        self.train, self.eval, self.problems, self.score = train, eval_examples, problems, score
        self.use_chat_template, self.report = use_chat_template, report


def load_sft_data(cfg: SFTConfig, tokenizer) -> SFTData:
    """User files when data.train_path is set, else the built-in task. Raises DataError on bad input."""
    task, problems = task_and_problems(cfg)
    rows_of = None if task is None else task.text_rows if cfg.task.format == "text" else task.sft_rows
    if cfg.env.name:
        problems, rows_of = [], demonstrations_of(cfg, task)

    if cfg.data.train_path is not None:
        train_rows = normalize(load_rows(cfg.data.train_path, columns=cfg.data.columns), kind="sft")
    else:
        train_rows = normalize(rows_of("train", cfg.task.num_train, cfg.seed), kind="sft")
    if cfg.data.eval_path is not None:
        eval_rows = normalize(load_rows(cfg.data.eval_path, columns=cfg.data.columns), kind="sft")
    elif cfg.data.train_path is None:
        eval_rows = normalize(rows_of("eval", cfg.task.num_eval, cfg.seed), kind="sft")
    else:
        eval_rows = None

    train, report = build_sft_examples(train_rows, tokenizer, max_length=cfg.data.max_length,
                                       truncation=cfg.data.truncation)
    eval_examples = []
    if eval_rows is not None:
        eval_examples, _ = build_sft_examples(eval_rows, tokenizer, max_length=cfg.data.max_length,
                                              truncation=cfg.data.truncation)
    dropped = f" ({report.summary()})" if report.dropped else ""
    use_template = cfg.task.format == "chat" and tokenizer.chat_template is not None
    return SFTData(train, eval_examples, problems, task.score if task else None, use_template, dropped)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation and outputs
# ---------------------------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model, tokenizer, data: SFTData, cfg: SFTConfig) -> dict:
    """eval/loss and eval/ppl over held-out examples; eval/accuracy by greedy generation when a task scores it.

    Runs under `fork_rng` so evaluating never changes the training random stream (resume stays exact).
    """
    out = {}
    device = device_of(model)
    with torch.random.fork_rng(devices=[]):
        model.eval()
        if data.eval:
            loss_sum = torch.zeros((), device=device)
            count = 0
            for start in range(0, len(data.eval), cfg.eval.batch_size):
                batch = collate(data.eval[start:start + cfg.eval.batch_size], pad_id=tokenizer.pad_token_id,
                                packing=cfg.data.packing, pack_length=cfg.data.pack_length or None)
                token_loss, mask = token_losses(model, {k: v.to(device) for k, v in batch.items()},
                                                cfg.train.precision, cfg.train.logits_chunk)
                loss_sum += token_loss.sum()
                count += int(mask.sum())
            out["eval/loss"] = (loss_sum / max(count, 1)).item()
            out["eval/ppl"] = math.exp(min(out["eval/loss"], 50.0))
        if data.problems:
            out.update(greedy_accuracy_metrics(distributed.unwrap(model), tokenizer, data.problems, data.score,
                                               use_chat_template=data.use_chat_template,
                                               max_new_tokens=cfg.eval.max_new_tokens, batch_size=cfg.eval.batch_size))
        model.train()
    return out
