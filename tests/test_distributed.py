"""Data parallelism under torchrun (gloo, CPU, two processes): the same global batch gives the same run as one
process, for DDP and FSDP2; a killed two-process run resumes exactly; bad batch arithmetic is refused."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO, losses, run_cli
from posttrain.config import TrainConfig
from posttrain.errors import ConfigError
from posttrain.train.common import batch_plan

ARGS = ["train.micro_batch_size=4", "train.global_batch_size=8", "train.lr=3e-3", "task.num_train=200",
        "task.num_eval=16", "eval.num_samples=8", "eval.max_new_tokens=6", "log.progress=false", "log.every=1",
        "threads=1"]


def torchrun(*args, nproc=2, **popen):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "posttrain", *args]
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                **popen)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def assert_same(a, b, loss_tol=1e-5, weight_tol=1e-5):
    la, lb = losses(a), losses(b)
    assert la and la.keys() == lb.keys()
    for step in la:
        assert abs(la[step] - lb[step]) <= loss_tol, (step, la[step], lb[step])
    wa, wb = load_file(str(a / "final" / "model.safetensors")), load_file(str(b / "final" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=weight_tol, rtol=0), name


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_equal_one_at_the_same_global_batch(tmp_path, strategy):
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli("sft", f"output_dir={one}", *ARGS, "train.max_steps=4", check=True)  # 1 process: 4 × accumulation 2
    proc = torchrun("sft", f"output_dir={two}", *ARGS, "train.max_steps=4", f"train.strategy={strategy}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 per micro-batch × 1 accumulation × 2 process(es)" in proc.stdout
    assert_same(one, two)
    assert json.loads((two / "checkpoints" / "step_000004" / "trainer_state.json").read_text())["world_size"] == 2
    if strategy == "fsdp":  # the optimizer state is sharded: one file per rank
        assert len(list((two / "checkpoints" / "step_000004" / "optimizer").glob("*.distcp"))) == 2


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_killed_two_process_run_resumes_exactly(tmp_path, strategy):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = [*ARGS, "train.max_steps=16", "checkpoint.every=4", f"train.strategy={strategy}"]
    assert torchrun("sft", f"output_dir={straight}", *args).returncode == 0

    proc = torchrun("sft", f"output_dir={killed}", *args, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:  # kill the whole group once past step 8's checkpoint
        if (killed / "metrics.jsonl").exists() and max(losses(killed), default=0) >= 10:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()

    resumed = torchrun("sft", f"output_dir={killed}", *args, "checkpoint.resume=true")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at step" in resumed.stdout
    assert_same(straight, killed, loss_tol=1e-6)

    # the consolidated export loads in one process with plain transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(killed / "final", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(killed / "final")
    assert model(torch.tensor([tokenizer("12+3=")["input_ids"]])).logits.isfinite().all()


def test_indivisible_global_batch_is_refused_by_every_rank(tmp_path):
    proc = torchrun("sft", f"output_dir={tmp_path}/run", "train.micro_batch_size=4", "train.global_batch_size=12")
    assert proc.returncode != 0
    assert "exitcode: 2" in proc.stderr and "train.global_batch_size = 12" in proc.stderr
    assert proc.stderr.count("posttrain sft: error:") == 1  # said once, by rank 0
    assert not (tmp_path / "run").exists()


def test_batch_plan_arithmetic():
    plan = lambda world, **kw: batch_plan(TrainConfig(**kw), world)
    assert plan(1, micro_batch_size=4, grad_accum=3) == (4, 3, 12)
    assert plan(2, micro_batch_size=4, grad_accum=3) == (4, 3, 24)              # global grows with processes
    assert plan(1, micro_batch_size=4, global_batch_size=16) == (4, 4, 16)      # … unless it is fixed
    assert plan(4, micro_batch_size=4, global_batch_size=16) == (4, 1, 16)
    with pytest.raises(ConfigError, match="zero accumulation steps"):
        plan(8, micro_batch_size=4, global_batch_size=16)
    with pytest.raises(ConfigError, match="multiple of 8"):
        plan(2, micro_batch_size=4, global_batch_size=20)


def test_fsdp_bf16_and_lora_run_and_cpu_offload_without_gpu_is_refused(tmp_path):
    short = [*ARGS, "train.max_steps=2", "train.strategy=fsdp"]
    bf16 = torchrun("sft", f"output_dir={tmp_path}/bf16", *short, "train.precision=bf16")
    assert bf16.returncode == 0, bf16.stderr[-3000:]
    lora = torchrun("sft", f"output_dir={tmp_path}/lora", *short, "lora.r=4")
    assert lora.returncode == 0 and (tmp_path / "lora" / "final" / "adapter_model.safetensors").is_file()
    if not torch.cuda.is_available():
        offload = torchrun("sft", f"output_dir={tmp_path}/offload", *short, "train.fsdp_cpu_offload=true")
        assert "exitcode: 2" in offload.stderr and "train.fsdp_cpu_offload" in offload.stderr
        assert not (tmp_path / "offload").exists()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL data parallelism needs at least 2 GPUs; "
                    "the CPU (gloo) tests above cover the same code path")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_nccl_two_gpus_equal_one(tmp_path, strategy):
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli("sft", f"output_dir={one}", *ARGS, "train.max_steps=4", check=True)
    proc = torchrun("sft", f"output_dir={two}", *ARGS, "train.max_steps=4", f"train.strategy={strategy}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same(one, two, loss_tol=1e-4, weight_tol=1e-3)  # GPU kernels reduce in a different order
