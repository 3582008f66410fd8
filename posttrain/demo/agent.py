"""`posttrain demo model=smollm2-135m-instruct env=calculator`: a real pretrained instruct model learns to use a
calculator tool for arithmetic word problems — on a laptop CPU, offline. env=code does the same with the
run_python tool (the sandbox) on the `code` task, env=search with the search tool on the `lookup` task.

    zero-shot   the model as it comes, offered the calculator (through its chat template; SmolLM2's knows no
                tools, so they are described in the system message): greedy multi-turn episodes on 300 held-out
                problems of the `word` task, all five levels; the final answer scored by the task's verifier.
                SmolLM2-135M never calls the tool (0% of episodes), so RL alone has nothing to reinforce.
    SFT         a warm start on demonstrations of the environment (`posttrain sft env.name=calculator`): each
                problem's own calculator calls, one a turn, played through the environment, then "The answer is
                N." — 80 demonstrations, 10 steps, full fine-tuning at lr 5e-5. It teaches the call format and
                when to answer; it is also wrong in ways RL can fix (it often stops after the first of two calls).
    GRPO        from the SFT model, LoRA (rank 16, all linear layers), 8 problems × 8 episodes a step at T = 0.7,
                no KL term; the reward: the verifier's 1 for a right final answer, plus 0.25 for each tool turn
                that finds a step's result first (env.progress_reward; calculator and search) — twice, on the
                same budget and the same rewards: trajectory-level credit (grpo: the episode's total reward,
                one advantage per episode) and per-turn credit (turn_grpo: the return from each turn against the
                group's mean at that turn, MT-GRPO/GiGPO), so that only the credit differs.
    after       each model's episodes on the same 300 problems: accuracy, per level, tool-call rate, turns, and
                the exact sign test against the SFT model and against zero-shot.

Writes RUN_DIR/summary.json, every episode's final answer in RUN_DIR/eval/NAME/completions.jsonl and prints the
table. The numbers measured on 2 cores are in benchmarks/RESULTS.md ("Agents").
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from posttrain.config import (AlgoConfig, CheckpointConfig, DemoConfig, EvalConfig, KLSection, LogConfig,
                              LoraConfig, ModelConfig, RLBatchConfig, RLConfig, RLRewardConfig, SamplingParams,
                              SFTConfig, TaskConfig, TrainConfig)
from posttrain.config.sections import EnvSection
from posttrain.envs.builtin import PROGRESS
from posttrain.eval.metrics import by_group, paired_sign_test, wins

HELD_OUT = 300  # the code task has 8 held-out problems, the others more than 300
# env → (its task, the new tokens of one model turn: a calculator call or an answer is 20-40 tokens, a function
# with a test run 60-120)
ENVIRONMENTS = {"calculator": ("word", 64), "search": ("lookup", 64), "code": ("code", 192)}


PROGRESS_REWARD = 0.25  # GRPO's reward per step result a tool turn finds, where the environment names them


def env_config(cfg: DemoConfig, progress_reward: float = 0.0) -> EnvSection:
    return EnvSection(name=cfg.env, max_turns=4, max_tokens=4 * turn_tokens(cfg), progress_reward=progress_reward)


def turn_tokens(cfg: DemoConfig) -> int:
    return 16 if cfg.quick else ENVIRONMENTS[cfg.env][1]


def task_config(cfg: DemoConfig, held_out: int = HELD_OUT) -> TaskConfig:
    return TaskConfig(name=ENVIRONMENTS[cfg.env][0], num_train=16 if cfg.quick else 80,
                      num_eval=8 if cfg.quick else held_out)


def sft_config(cfg: DemoConfig) -> SFTConfig:
    return SFTConfig(
        output_dir=str(Path(cfg.output_dir) / "sft"), overwrite=True, seed=cfg.seed,
        model=ModelConfig(name_or_path=cfg.model), task=task_config(cfg, held_out=16), env=env_config(cfg),
        train=TrainConfig(lr=5e-5, max_steps=2 if cfg.quick else 10, micro_batch_size=8, schedule="constant"),
        eval=EvalConfig(every=0, task_accuracy=False), checkpoint=CheckpointConfig(every=0, keep_last=1),
        log=LogConfig(every=1, progress=False))


def grpo_config(cfg: DemoConfig, advantage: str, start: str) -> RLConfig:
    return RLConfig(
        output_dir=str(Path(cfg.output_dir) / advantage), overwrite=True, seed=cfg.seed,
        model=ModelConfig(name_or_path=start), lora=LoraConfig(r=16, alpha=32, target_modules=["all-linear"]),
        algo=AlgoConfig(name="grpo", advantage=advantage), kl=KLSection(coef=0.0),
        rl=RLBatchConfig(prompts_per_step=2 if cfg.quick else 8, generations=4 if cfg.quick else 8),
        reward=RLRewardConfig(verifier=True),
        env=env_config(cfg, PROGRESS_REWARD if cfg.env in PROGRESS else 0.0),
        sampling=SamplingParams(temperature=0.7, max_new_tokens=turn_tokens(cfg)),
        task=task_config(cfg, held_out=16),
        train=TrainConfig(lr=2e-4, max_steps=2 if cfg.quick else 8, micro_batch_size=8 if cfg.quick else 16,
                          schedule="constant"),
        eval=EvalConfig(every=0, task_accuracy=False), checkpoint=CheckpointConfig(every=0, keep_last=1),
        log=LogConfig(every=1, progress=False))


def evaluate(cfg: DemoConfig, name: str, model_path: str) -> dict:
    """Greedy episodes with the tools on the held-out problems, as `posttrain eval env.name=…` runs them (the
    rollout engine auto-chosen: vLLM where it is installed and faster); each final answer and verdict go to
    eval/NAME/completions.jsonl."""
    from posttrain import tasks
    from posttrain.config.sections import RolloutConfig
    from posttrain.eval.accuracy import episode_summary, greedy_episodes
    from posttrain.models.inference import load_for_inference
    from posttrain.models.loading import base_model_path
    from posttrain.rollout import inference_engine

    t0 = time.time()
    task = tasks.from_config(task_config(cfg))
    rows = task.rows("eval", task_config(cfg).num_eval, cfg.seed)
    model, tokenizer, _ = load_for_inference(model_path)
    engine = inference_engine(RolloutConfig(), model, tokenizer, base_model_path(model_path))
    try:
        episodes = greedy_episodes(engine, tokenizer, rows, env_config(cfg), max_new_tokens=turn_tokens(cfg),
                                   seed=cfg.seed)
    finally:
        engine.close()
    scores = [task.score(r["prompt"], t.answer, **{k: v for k, v in r.items() if k != "prompt"}) or 0.0
              for r, t in zip(rows, episodes)]
    samples = [{"prompt": r["prompt"], "answer": r.get("answer"), "level": r.get("level"), "final": t.answer,
                "tool_calls": t.tool_calls, "turns": t.turns, "score": s} for r, t, s in zip(rows, episodes, scores)]
    out = Path(cfg.output_dir) / "eval" / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "completions.jsonl").write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    result = {"accuracy": sum(scores) / len(scores), "by_level": by_group(rows, scores), "scores": scores,
              **episode_summary(episodes), "seconds": time.time() - t0}
    print(f"{name}: accuracy {result['accuracy']:.3f}, tool calls in {result['tool_call_rate']:.0%} of episodes, "
          f"{result['turns']:.2f} turns ({result['seconds']:.0f} s)", flush=True)
    return result


def versus(before: dict, after: dict) -> dict:
    lost, won = wins(before["scores"], after["scores"])
    return {"gain": after["accuracy"] - before["accuracy"], "won": won, "lost": lost,
            "p_value": paired_sign_test(before["scores"], after["scores"])}


def run(cfg: DemoConfig) -> dict:
    from posttrain.train import rl, sft

    out, t0 = Path(cfg.output_dir), time.time()
    print(f"posttrain demo{' (quick)' if cfg.quick else ''}: {cfg.model} learns the {cfg.env} tool on the "
          f"{ENVIRONMENTS[cfg.env][0]} task; zero-shot → SFT on demonstrations → GRPO with trajectory vs per-turn "
          "credit", flush=True)
    evals, seconds = {"zero-shot": evaluate(cfg, "zero-shot", cfg.model)}, {}
    sft_final = str(out / "sft" / "final")
    for name, run_stage, stage in [("SFT", sft.run, sft_config(cfg)),
                                   ("GRPO (grpo)", rl.run, grpo_config(cfg, "grpo", sft_final)),
                                   ("GRPO (turn_grpo)", rl.run, grpo_config(cfg, "turn_grpo", sft_final))]:
        started = time.time()
        run_stage(stage)
        seconds[name] = time.time() - started
        evals[name] = evaluate(cfg, Path(stage.output_dir).name, str(Path(stage.output_dir) / "final"))
    stages = [{"stage": name, "accuracy": e["accuracy"], "by_level": e["by_level"],
               "tool_call_rate": e["tool_call_rate"], "turns": e["turns"], "training_seconds": seconds.get(name, 0.0),
               **({"vs_zero_shot": versus(evals["zero-shot"], e)} if name != "zero-shot" else {}),
               **({"vs_sft": versus(evals["SFT"], e)} if name.startswith("GRPO") else {})}
              for name, e in evals.items()]
    summary = {"model": cfg.model, "env": cfg.env, "task": ENVIRONMENTS[cfg.env][0],
               "progress_reward": grpo_config(cfg, "grpo", sft_final).env.progress_reward,
               "held_out": len(evals["zero-shot"]["scores"]), "stages": stages,
               "eval_seconds": {name: e["seconds"] for name, e in evals.items()}, "seconds": time.time() - t0}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_table(summary)
    return {s["stage"]: s["accuracy"] for s in stages} | {"seconds": summary["seconds"]}


def print_table(summary: dict) -> None:
    print(f"\n{summary['model']} with the {summary['env']} tool: greedy episodes on {summary['held_out']} held-out "
          f"{summary['task']} problems (accuracy: the mean verifier score); won/lost and the exact sign test against "
          "the SFT model (GRPO) or zero-shot (SFT)"
          + (f"; GRPO's reward: the answer's 1 plus {summary['progress_reward']:g} per step result a tool turn found"
             if summary["progress_reward"] else ""))
    levels = sorted({k for s in summary["stages"] for k in s["by_level"]})
    print(f"{'stage':<18} {'accuracy':>8} " + "".join(f"{k.replace('_', ' '):>9}" for k in levels)
          + f" {'tool calls':>10} {'turns':>6} {'change':>7} {'won/lost':>9} {'p':>8} {'train (s)':>9}")
    for s in summary["stages"]:
        against = s.get("vs_sft") or s.get("vs_zero_shot")
        rest = (f"{against['gain']:>+7.3f} {str(against['won']) + '/' + str(against['lost']):>9} "
                f"{against['p_value']:>8.2g}") if against else f"{'—':>7} {'—':>9} {'—':>8}"
        print(f"{s['stage']:<18} {s['accuracy']:>8.3f} " + "".join(f"{s['by_level'][k]:>9.3f}" for k in levels)
              + f" {s['tool_call_rate']:>10.0%} {s['turns']:>6.2f} {rest} {s['training_seconds']:>9.0f}")
    train = sum(s["training_seconds"] for s in summary["stages"])
    print(f"total wall time {summary['seconds']:.0f} s: training {train:.0f} s, evaluations "
          f"{sum(summary['eval_seconds'].values()):.0f} s")
