"""The experience side of online RL: prompts in, scored completions out.

    prompts      rows with a `prompt` (text or messages) and any columns the reward reads (e.g. `answer`);
                 the built-in task's when no file is given. Drawn from an endless stream of per-epoch
                 permutations; the stream position is the run's data position (saved in checkpoints).
    generate     rl.generations completions per prompt with the rollout engine; sample k of the prompt at
                 stream position s is seeded by (seed, step, s, k), so a resumed run draws the same samples
    score        every reward source (verifier, user function, reward model), weighted; unscorable samples
                 are kept but marked (posttrain.rewards)
    shape        DAPO's overlong punishment and the length penalty are added to the rewards
    filter       (DAPO dynamic sampling) groups whose rewards are all equal give no gradient under a group
                 baseline: they are dropped and more prompts are drawn, up to rl.max_sampling_rounds rounds
                 (a refill draws the missing count divided by the share kept so far, so one round usually
                 suffices); a step still short of groups is filled with dropped ones, so the batch arithmetic
                 never changes
    ranks        each process generates and scores its share of the prompts; the results are gathered, so
                 every rank holds the whole batch and computes the same advantages
    episodes     with env.name set, a sample is a whole multi-turn episode (posttrain/envs): its "completion"
                 is every id after the prompt — the model's turns and the environment's answers — with a token
                 mask that keeps the environment's ids out of the loss; the final answer is scored by the
                 reward sources, plus any reward the environment gave along the way
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from posttrain import distributed, tasks
from posttrain.algos import shaping
from posttrain.algos.advantages import ADVANTAGES
from posttrain.config import RLConfig
from posttrain.data import load_rows
from posttrain.data.tokenize import DropReport
from posttrain.errors import DataError, UserError
from posttrain.models.loading import base_model_path
from posttrain.rollout import build_engine, cut_at_stop, format_prompt, stop_check
from posttrain.train.common import stream_indices


# ---------------------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class PromptData:
    rows: list[dict]               # {"prompt": …, other columns}
    prompt_ids: list[list[int]]    # the tokens the policy continues from, one list per row
    problems: list[dict]           # held-out task problems scored for greedy accuracy ([] when none)
    task: object | None
    use_chat_template: bool
    report: str
    make_env: object = None  # env.name set: make(row) -> a fresh environment (posttrain/envs)
    chat: object = None      # and the chat template that renders its turns (envs.ChatDeltas)

    @property
    def longest_prompt(self) -> int:
        return max(map(len, self.prompt_ids))


def load_prompts(cfg: RLConfig, tokenizer) -> PromptData:
    """Prompt rows from data.train_path, else the task's training problems; every prompt is tokenized once.
    A missing or empty prompt is an error naming the row; an over-long one follows data.truncation (error, or
    drop and count)."""
    wanted = cfg.eval.task_accuracy if cfg.eval.task_accuracy is not None else cfg.data.train_path is None
    needs_task = cfg.data.train_path is None or cfg.reward.verifier or wanted
    task = tasks.from_config(cfg.task) if needs_task else None
    source = cfg.data.train_path or f"task '{cfg.task.name}'"
    raw = load_rows(cfg.data.train_path, columns=cfg.data.columns) if cfg.data.train_path else \
        task.rows("train", cfg.task.num_train, cfg.seed)
    use_template = tokenizer.chat_template is not None
    make_env = chat = None
    if cfg.env.name:
        from posttrain.envs.builtin import environment
        if not use_template:
            raise UserError("env.name needs a model with a chat template (its turns are rendered through it) — "
                            "fix: a chat model, or env.name=''")
        make_env, chat = environment(cfg.env.name, tokenizer, raw[0], max_turns=cfg.env.max_turns,
                                     timeout=cfg.env.tool_timeout, progress_reward=cfg.env.progress_reward)
    rows, prompt_ids, report = [], [], DropReport(total=len(raw))
    row_numbers = getattr(raw, "row_numbers", range(1, len(raw) + 1))  # 1-based, as every command counts rows
    for i, row in enumerate(raw):
        prompt = row.get("prompt", row.get("messages"))
        if not prompt or not isinstance(prompt, (str, list)):
            raise DataError("no prompt (a non-empty string, or a list of chat messages)", file=source,
                            row=row_numbers[i], field="prompt",
                            fix="give every row a 'prompt' column (rename yours with data.columns=question:prompt)")
        ids = format_prompt(tokenizer, prompt, use_template) if make_env is None else \
            chat.prompt_ids(make_env(row).reset({**row, "prompt": prompt}))
        if len(ids) > cfg.data.max_length:
            if cfg.data.truncation == "error":
                raise DataError(f"the prompt has {len(ids)} tokens, more than data.max_length = "
                                f"{cfg.data.max_length}", file=source, row=row_numbers[i], field="prompt",
                                fix="raise data.max_length, or set data.truncation=drop")
            report.add("prompt too long")
            continue
        rows.append({**{k: v for k, v in row.items() if k != "messages"}, "prompt": prompt})
        prompt_ids.append(ids)
    if not rows:
        raise UserError(f"{source}: no usable prompts ({report.summary()})")
    problems = task.rows("eval", min(cfg.eval.num_samples, cfg.task.num_eval), cfg.seed) if wanted and task else []
    dropped = f" ({report.summary()})" if report.dropped else ""
    return PromptData(rows, prompt_ids, problems, task, use_template, dropped, make_env, chat)


# ---------------------------------------------------------------------------------------------------------------------
# Reward sources
# ---------------------------------------------------------------------------------------------------------------------

def build_reward_sources(cfg: RLConfig, data: PromptData, tokenizer, device) -> list[tuple[object, float]]:
    """(source, weight) for every configured reward. Called before the run directory is made, so a broken
    reward file or reward model stops the run before anything is written."""
    from posttrain.rewards import FileReward, VerifierReward, load_reward_model

    sources = []
    if cfg.reward.verifier:
        if data.task is None:
            raise UserError("reward.verifier needs a task — set task.name, or reward.verifier=false")
        verifier = VerifierReward(data.task.score)
        if cfg.data.train_path and not any(verifier.outcomes([_text(row["prompt"])], [""], [row])[0].value is not None
                                           for row in data.rows):  # no answer, no task problem in any prompt's text
            raise UserError(f"{cfg.data.train_path}: reward.verifier is on (the default) but no prompt has an "
                            "'answer' for it to check against — fix: reward.verifier=false to score with "
                            "reward.function / reward.model alone, or add an answer column")
        sources.append((verifier, cfg.reward.verifier_weight))
    if cfg.reward.function:
        sources.append((FileReward.from_spec(cfg.reward.function, timeout_s=cfg.reward.timeout_s,
                                             batched=cfg.reward.function_batched), cfg.reward.function_weight))
    if cfg.reward.model:
        sources.append((load_reward_model(cfg.reward.model, device=device, batch_size=cfg.eval.batch_size,
                                          precision=cfg.train.precision), cfg.reward.model_weight))
    return sources


def _text(prompt) -> str:
    """A prompt (text or chat messages) as the text a verifier searches for the problem."""
    return prompt if isinstance(prompt, str) else "\n".join(str(m.get("content", "")) for m in prompt)


def close_sources(sources) -> None:
    for source, _ in sources:
        if hasattr(source, "close"):
            source.close()


# ---------------------------------------------------------------------------------------------------------------------
# Rollouts
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class Rollout:
    """One step's samples, prompt-major (G consecutive samples per prompt), identical on every rank."""

    rows: list[dict]
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    completions: list[str]
    sampler_logps: list[list[float]]  # log-prob of each token under the distribution it was sampled from
    truncated: torch.Tensor           # [B] bool: stopped by the length limit
    group_index: torch.Tensor         # [B] the prompt (group) of each sample
    rewards: torch.Tensor             # [B] after shaping; 0 where unscored
    scored: torch.Tensor              # [B] bool
    token_masks: list[list[int]] | None = None  # episodes: 1 at the model's tokens, 0 at the environment's
    token_turns: list[list[int]] | None = None  # episodes: each token's model turn, −1 at the environment's
    turn_rewards: list[list[float]] | None = None  # episodes: the reward after each turn; sums to `rewards`
    baseline_rewards: torch.Tensor | None = None  # [B] reward of the greedy completion of the prompt (an estimator
    #                                               that declares needs_greedy_baseline, e.g. remax)
    metrics: dict = field(default_factory=dict)


def rollout_engine(cfg: RLConfig, model, tokenizer, data: PromptData):
    """The run's engine, built once: the built-in one samples from the policy itself; vLLM loads the policy's
    starting weights (for a LoRA adapter, its base model) and the loop keeps it in step with engine.sync(model)
    before every rollout. vLLM reports the log-probs of the distribution it sampled from, the policy's π_old."""
    if cfg.rollout.engine != "vllm":
        return build_engine(cfg.rollout, distributed.unwrap(model), tokenizer)
    return build_engine(cfg.rollout, None, tokenizer, base_model_path(cfg.model.name_or_path),
                        logprobs="processed", seed=cfg.seed,
                        max_model_len=data.longest_prompt + cfg.sampling.max_new_tokens + 1 +
                        (cfg.env.max_tokens if data.make_env is not None else 0))


def collect(cfg: RLConfig, engine, tokenizer, data: PromptData, sources, step: int, cursor: int,
            guard) -> tuple[Rollout, int]:
    """Generate and score one step's groups with `engine` (rollout_engine); returns (rollout, the stream position
    after it)."""
    from posttrain.rewards import reward_metrics

    P = cfg.rl.prompts_per_step
    params = _sampling_params(cfg)
    kept, dropped, rounds, drawn, first_round = [], [], 0, 0, None
    while True:
        count = P
        if rounds:  # a refill: enough prompts for the missing groups at the rate groups were kept so far
            count = min(P, math.ceil((P - len(kept)) / max(len(kept) / drawn, 0.25)))
        count = math.ceil(count / distributed.world_size()) * distributed.world_size()
        groups, batch = _generate_and_score(cfg, engine, params, tokenizer, data, sources, step, cursor, count)
        cursor += count
        drawn += count
        rounds += 1
        if first_round is None:
            first_round = batch
            first_round_zero = sum(g["zero_variance"] for g in groups) / len(groups)
        if not cfg.rl.dynamic_sampling:
            kept = groups
            break
        kept += [g for g in groups if not g["zero_variance"]]
        dropped += [g for g in groups if g["zero_variance"]]
        if len(kept) >= P or rounds >= cfg.rl.max_sampling_rounds:
            break
    filled = max(0, P - len(kept))
    groups = (kept + dropped)[:P]
    rollout = _assemble(cfg, data, groups)
    guard.check(first_round, step)
    rollout.metrics = reward_metrics(first_round)
    if data.make_env is not None:
        rollout.metrics.update(episode_metrics([g for group in groups for g in group["gens"]], rollout.turn_rewards))
    if cfg.rl.generations > 1:  # a group of one has no variance to speak of
        rollout.metrics["rollout/zero_variance_frac"] = first_round_zero
    if cfg.rl.dynamic_sampling:
        rollout.metrics.update({"rollout/sampling_rounds": rounds, "rollout/filled_groups": filled})
    if ADVANTAGES.entry(cfg.algo.advantage).needs_greedy_baseline:
        rollout.baseline_rewards = _greedy_baseline(cfg, engine, tokenizer, data, sources, groups, step)
    return rollout, cursor


def _sampling_params(cfg: RLConfig, greedy: bool = False):
    from dataclasses import replace
    return replace(cfg.sampling, n=1 if greedy else cfg.rl.generations, temperature=0.0 if greedy else
                   cfg.sampling.temperature)


def _generate_and_score(cfg, engine, params, tokenizer, data, sources, step, cursor, count):
    """Groups for stream positions [cursor, cursor + count): this rank generates and scores its share, then
    every rank gets all of them. Returns (groups, the ScoredBatch of all of them)."""
    from posttrain.rewards import ScoredBatch, score_all

    rank, world = distributed.rank(), distributed.world_size()
    positions = list(range(cursor, cursor + count))[rank::world]
    indices = [stream_indices(p, 1, len(data.rows), cfg.seed)[0] for p in positions]
    if data.make_env is not None:
        gens, texts = _episodes(cfg, engine, data, params, step, positions, indices)
    else:
        gens = engine.generate([data.prompt_ids[i] for i in indices], params, seed=cfg.seed, step=step,
                               example_ids=positions, stop_sequence=stop_check(tokenizer, cfg.sampling.stop_strings))
        texts = [cut_at_stop(tokenizer.decode(g.completion_ids, skip_special_tokens=True), cfg.sampling.stop_strings)
                 for g in gens]
    rows = [data.rows[indices[j // params.n]] for j in range(len(gens))]
    scored = score_all(sources, [r["prompt"] for r in rows], texts, [_columns(r) for r in rows])
    if data.make_env is not None:  # the environment's own rewards add to the final answer's score
        from_env = torch.tensor([g.reward or 0.0 for g in gens])
        scored.rewards = torch.where(scored.scored, scored.rewards + from_env, scored.rewards)
    G = params.n
    mine = []
    for j, index in enumerate(indices):
        block = slice(j * G, (j + 1) * G)
        mine.append({"index": index, "position": positions[j], "gens": gens[block], "texts": texts[block],
                     "rewards": scored.rewards[block], "scored": scored.scored[block],
                     "per_source": {k: v[block] for k, v in scored.per_source.items()}})
    groups = sorted((g for part in distributed.all_gather_objects(mine) for g in part), key=lambda g: g["position"])
    for g in groups:
        values = g["rewards"][g["scored"]]
        g["zero_variance"] = len(values) < 2 or bool((values == values[0]).all())
    failures: dict[str, int] = {}
    first_error: dict[str, str] = {}
    for part_failures, part_errors in distributed.all_gather_objects((scored.failures, scored.first_error)):
        for reason, n in part_failures.items():
            failures[reason] = failures.get(reason, 0) + n
        first_error = {**part_errors, **first_error}
    batch = ScoredBatch(rewards=torch.cat([g["rewards"] for g in groups]),
                        scored=torch.cat([g["scored"] for g in groups]),
                        per_source={k: torch.cat([g["per_source"][k] for g in groups])
                                    for k in groups[0]["per_source"]},
                        failures=failures, first_error=first_error)
    return groups, batch


def _episodes(cfg, engine, data: PromptData, params, step: int, positions: list[int], indices: list[int]):
    """rl.generations episodes per prompt, side by side (envs.run_episodes); episode k of the prompt at stream
    position s has id s·G + k, so its turns are seeded as the single-turn sample (s, k) is. Returns (the
    trajectories, prompt-major; their final answers)."""
    from posttrain.envs import run_episodes
    G = params.n
    rows = [data.rows[i] for i in indices for _ in range(G)]
    episodes = run_episodes(engine, [data.make_env(row) for row in rows], rows, data.chat, params,
                            max_turns=cfg.env.max_turns, max_tokens=cfg.env.max_tokens, seed=cfg.seed, step=step,
                            episode_ids=[p * G + k for p in positions for k in range(G)])
    return episodes, [t.answer for t in episodes]


def episode_metrics(rollout_gens, turn_rewards: list[list[float]]) -> dict:
    """Multi-turn rollouts: turns per episode, the share of episodes that called a tool, tool calls and errors
    per episode, the reward per model turn (the whole reward, final answer's score included, over all turns),
    and the environment's own reward per episode (e.g. env.progress_reward's)."""
    n = max(1, len(rollout_gens))
    turns = sum(t.turns for t in rollout_gens)
    return {"env/turns_mean": turns / n,
            "env/reward_per_turn": sum(map(sum, turn_rewards)) / max(1, turns),
            "env/env_reward_mean": sum(t.reward or 0.0 for t in rollout_gens) / n,
            "env/tool_call_rate": sum(t.tool_calls > 0 for t in rollout_gens) / n,
            "env/tool_calls_mean": sum(t.tool_calls for t in rollout_gens) / n,
            "env/tool_errors_mean": sum(t.tool_errors for t in rollout_gens) / n}


def _assemble(cfg: RLConfig, data: PromptData, groups: list[dict]) -> Rollout:
    """The kept groups as one prompt-major batch, with the length shaping added to scored rewards."""
    gens = [g for group in groups for g in group["gens"]]
    indices = [group["index"] for group in groups for _ in group["gens"]]
    masks = [g.mask for g in gens] if data.make_env is not None else None  # episodes: the model's tokens
    lengths = torch.tensor([sum(m) for m in masks] if masks else [len(g.completion_ids) for g in gens])
    max_len = cfg.sampling.max_new_tokens
    scored = torch.cat([group["scored"] for group in groups])
    shaped = torch.cat([group["rewards"] for group in groups]).float() \
        + shaping.overlong_penalty(lengths, max_len, cfg.rl.overlong_buffer * max_len) \
        + shaping.length_penalty(lengths, max_len, cfg.rl.length_penalty)
    rewards = torch.where(scored, shaped, torch.zeros_like(shaped))
    turns = turn_rewards = None
    if masks is not None:  # per turn: the environment's rewards, the rest of the episode's on its last turn
        turns = [g.token_turns for g in gens]
        turn_rewards = [[r or 0.0 for r in g.turn_rewards] + [0.0] * (g.turns - len(g.turn_rewards)) for g in gens]
        for row, total in zip(turn_rewards, rewards.tolist()):
            if row:
                row[-1] += total - sum(row)
    return Rollout(
        rows=[data.rows[i] for i in indices],
        # episodes: the prompt each was sampled from (its environment's reset may differ from the one at load time)
        prompt_ids=[g.prompt_ids for g in gens] if masks is not None else [data.prompt_ids[i] for i in indices],
        completion_ids=[g.completion_ids for g in gens], token_masks=masks, token_turns=turns,
        turn_rewards=turn_rewards,
        completions=[t for group in groups for t in group["texts"]],
        sampler_logps=[g.sampling_logprobs for g in gens],
        truncated=torch.tensor([g.finish_reason == "length" for g in gens]),
        group_index=torch.tensor([i for i, group in enumerate(groups) for _ in group["gens"]]),
        rewards=rewards, scored=scored)


def _greedy_baseline(cfg, engine, tokenizer, data, sources, groups, step) -> torch.Tensor:
    """The greedy baseline (ReMax's): the reward of the greedy completion of each prompt, repeated over its group
    (an unscorable greedy completion gives baseline 0)."""
    from posttrain.rewards import score_all

    indices = [g["index"] for g in groups]
    gens = engine.generate([data.prompt_ids[i] for i in indices], _sampling_params(cfg, greedy=True),
                           seed=cfg.seed, step=step, stop_sequence=stop_check(tokenizer, cfg.sampling.stop_strings))
    texts = [cut_at_stop(tokenizer.decode(g.completion_ids, skip_special_tokens=True), cfg.sampling.stop_strings)
             for g in gens]
    rows = [data.rows[i] for i in indices]
    scored = score_all(sources, [r["prompt"] for r in rows], texts, [_columns(r) for r in rows])
    baseline = torch.where(scored.scored, scored.rewards, torch.zeros_like(scored.rewards))
    return baseline.repeat_interleave(cfg.rl.generations)


def _columns(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "prompt"}
