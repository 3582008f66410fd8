#!/usr/bin/env bash
# On a CUDA machine: install posttrain with vLLM and TRL in .venv-gpu, then run
#   1. the vLLM tests (tests/needs_vllm: parity, weight sync with its planted failure, server mode, the CLI runs);
#   2. rollout tokens/s, posttrain's built-in engine vs vLLM (benchmarks/vllm_rollout.py, bf16 and fp32);
#   3. one GRPO step, posttrain with vLLM colocated vs TRL GRPOTrainer with vLLM colocate, same model and settings
#      (benchmarks/grpo_step.py --variants ours-vllm,trl-vllm), with a KL term.
# Writes everything to the results file (default benchmarks/gpu_results.txt). Targets: rollout within 1.3× of vLLM;
# a GRPO step no slower than TRL + vLLM.
#
#   bash benchmarks/gpu.sh [RESULTS_FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/gpu_results.txt}
export HF_HUB_OFFLINE=1
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi >/dev/null 2>&1; then
    echo "benchmarks/gpu.sh needs a CUDA GPU (nvidia-smi found none)" >&2
    exit 2
fi
VENV=.venv-gpu
test -x $VENV/bin/python || python3 -m venv $VENV
$VENV/bin/pip install -q torch==2.13.0                     # the CUDA build on a Linux GPU machine
$VENV/bin/pip install -q -e '.[dev,bench,vllm]'
PY=$VENV/bin/python
$PY -m posttrain generate model=smollm2-135m-instruct num_prompts=1 output=/tmp/posttrain-gpu-warm.jsonl >/dev/null
{
    echo "# posttrain on $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader) — $(date -u +%F\ %T) UTC"
    $PY -c "import torch, transformers, vllm, trl; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'vllm', vllm.__version__, 'trl', trl.__version__)"
    echo; echo "## tests/needs_vllm"
    $PY -m pytest tests/needs_vllm -q 2>&1 | tail -5
    echo; echo "## rollout tokens/s: built-in engine vs vLLM"
    $PY benchmarks/vllm_rollout.py --model smollm2-135m-instruct --batch 64 --new-tokens 128 --dtype bfloat16
    $PY benchmarks/vllm_rollout.py --model smollm2-135m-instruct --batch 64 --new-tokens 128 --dtype float32
    echo; echo "## GRPO step: posttrain + vLLM colocated vs TRL GRPOTrainer + vLLM colocate"
    $PY benchmarks/grpo_step.py --model smollm2-135m-instruct --task word --beta 0.04 --micro-batch 16 \
        --steps 10 --rounds 1 --warmup 0 --variants ours-vllm,trl-vllm
} 2>&1 | tee "$OUT"
