"""Task accuracy: generate greedily for held-out prompts and score each completion with the task verifier; and
sampled, scored completions (the raw material of verified preference pairs, rejection sampling, pass@k)."""

from __future__ import annotations

from posttrain.eval.metrics import by_group
from posttrain.rollout import HFEngine, SamplingParams, generate_text


def _engine(model, tokenizer, batch_size: int) -> HFEngine:
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return HFEngine(model, eos, tokenizer.pad_token_id, batch_size=batch_size)


def _score(score, row: dict, completion: str):
    return score(row["prompt"], completion, **{k: v for k, v in row.items() if k != "prompt"})


def greedy_completions(model, tokenizer, prompts: list[str], *, use_chat_template: bool,
                       max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy decoding of each prompt through the rollout engine."""
    params = SamplingParams(temperature=0, max_new_tokens=max_new_tokens)
    return [text for _, text in generate_text(_engine(model, tokenizer, batch_size), tokenizer, prompts, params,
                                              use_chat_template=use_chat_template)]


def greedy_episodes(engine, tokenizer, rows: list[dict], env, *, max_new_tokens: int, seed: int = 0) -> list:
    """One greedy multi-turn episode per row with environment `env` (an EnvSection: name, max_turns, max_tokens,
    tool_timeout) → the envs.Trajectory of each; its `answer` is the final answer, for the verifier."""
    from posttrain.envs import run_episodes
    from posttrain.envs.builtin import environment

    make_env, chat = environment(env.name, tokenizer, rows[0], max_turns=env.max_turns, timeout=env.tool_timeout)
    return run_episodes(engine, [make_env(r) for r in rows], rows, chat,
                        SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens), max_turns=env.max_turns,
                        max_tokens=env.max_tokens, seed=seed)


def episode_summary(episodes: list) -> dict[str, float]:
    """{"tool_call_rate": share of episodes with a tool call, "tool_errors": per episode, "turns": per episode}."""
    n = max(1, len(episodes))
    return {"tool_call_rate": sum(t.tool_calls > 0 for t in episodes) / n,
            "tool_errors": sum(t.tool_errors for t in episodes) / n, "turns": sum(t.turns for t in episodes) / n}


def greedy_accuracy(model, tokenizer, rows: list[dict], score, *, use_chat_template: bool,
                    max_new_tokens: int = 32, batch_size: int = 64) -> tuple[float, list[dict]]:
    """Mean verifier score over `rows` ({"prompt", "answer", …}); unscorable rows (None) count as wrong.

    Returns (accuracy, samples) where samples hold prompt, completion and score for inspection.
    """
    completions = greedy_completions(model, tokenizer, [r["prompt"] for r in rows],
                                     use_chat_template=use_chat_template, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size)
    samples = []
    for row, completion in zip(rows, completions):
        s = _score(score, row, completion)
        samples.append({"prompt": row["prompt"], "completion": completion, "score": s})
    accuracy = sum(s["score"] or 0.0 for s in samples) / max(1, len(samples))
    return accuracy, samples


def greedy_accuracy_metrics(model, tokenizer, rows: list[dict], score, **options) -> dict[str, float]:
    """The trainers' eval metrics of greedy_accuracy (same options): {"eval/accuracy": …}, and when rows carry a
    `level` (the word task's), the accuracy per level too: "eval/accuracy/level_1", "eval/accuracy/level_2", …"""
    accuracy, samples = greedy_accuracy(model, tokenizer, rows, score, **options)
    per_level = by_group(rows, [s["score"] for s in samples])
    return {"eval/accuracy": accuracy, **{f"eval/accuracy/{group}": value for group, value in per_level.items()}}


def sampled_completions(model, tokenizer, rows: list[dict], score, *, n: int, temperature: float = 1.0,
                        use_chat_template: bool, max_new_tokens: int = 32, batch_size: int = 64,
                        seed: int = 0) -> list[list[dict]]:
    """n completions sampled for each of `rows` ({"prompt", "answer", …}), each scored by the verifier →
    per row a list of {"completion", "score"} (score None = unscorable). Reproducible in `seed`, whatever the
    batch size (the engine's per-sample seeds)."""
    params = SamplingParams(temperature=temperature, n=n, max_new_tokens=max_new_tokens)
    outputs = generate_text(_engine(model, tokenizer, batch_size), tokenizer, [r["prompt"] for r in rows], params,
                            use_chat_template=use_chat_template, seed=seed)
    texts = [text for _, text in outputs]  # prompt-major: row i's samples are texts[i·n:(i+1)·n]
    return [[{"completion": text, "score": _score(score, row, text)} for text in texts[i * n:(i + 1) * n]]
            for i, row in enumerate(rows)]
