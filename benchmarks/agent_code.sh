#!/usr/bin/env bash
# The code environment through the CLI, the way a user runs it: SmolLM2-135M-Instruct with the run_python tool
# (the sandbox) on the `code` task — zero-shot → SFT on demonstrations → GRPO (LoRA) with the hidden unit tests
# as the reward — each model evaluated by greedy episodes on the held-out problems (pass rate = the mean fraction
# of hidden tests passed), and the processes left behind counted after every command.
#
#   bash benchmarks/agent_code.sh [OUT_DIR]        (in .venv-vllm for vLLM rollouts, else .venv)
set -euo pipefail
OUT=${1:-runs/agent-code}
PT=${PT:-$( [ -x .venv-vllm/bin/posttrain ] && echo .venv-vllm/bin/posttrain || echo .venv/bin/posttrain )}
MODEL=smollm2-135m-instruct
ENV="env.name=code env.max_turns=3 env.max_tokens=576 task.name=code"
export HF_HUB_OFFLINE=1

leftover() {  # the sandbox's supervisors and children, and posttrain processes, still alive after a command
  echo "processes left after $1: $(pgrep -fc 'sandbox/supervisor.py|-I main.py|bin/posttrain' || true)"
}

evaluate() {  # NAME MODEL_DIR
  $PT eval model="$2" $ENV strategies=greedy search.max_new_tokens=192 output_dir="$OUT/eval-$1" | grep -E "^\| greedy"
  leftover "eval $1"
}

mkdir -p "$OUT"
start=$(date +%s)
evaluate zero-shot $MODEL
$PT sft model.name_or_path=$MODEL $ENV task.num_train=96 task.num_eval=8 train.max_steps=12 train.micro_batch_size=8 \
  train.lr=1e-4 eval.every=0 output_dir="$OUT/sft" overwrite=true log.progress=false | tail -1
leftover sft
evaluate sft "$OUT/sft/final"
$PT rl --algo grpo model.name_or_path="$OUT/sft/final" $ENV lora.r=16 lora.alpha=32 lora.target_modules=all-linear \
  kl.coef=0 rl.prompts_per_step=4 rl.generations=8 sampling.temperature=0.7 sampling.max_new_tokens=192 \
  train.lr=2e-4 train.max_steps=6 train.micro_batch_size=8 train.schedule=constant eval.task_accuracy=false \
  checkpoint.every=0 output_dir="$OUT/grpo" overwrite=true log.progress=false | tail -1
leftover grpo
evaluate grpo "$OUT/grpo/final"
echo "wall time $(( $(date +%s) - start )) s"
