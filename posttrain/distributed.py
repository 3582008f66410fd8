"""Data-parallel training on torch.distributed, launched by `torchrun` — DDP or FSDP2 (`fully_shard`).

One process per device. Everything here is a thin layer over torch.distributed; with one process (no
torchrun environment) every function is a no-op and the single-process path stays as it was.

    torchrun --nproc-per-node 2 -m posttrain sft train.global_batch_size=64 train.strategy=fsdp

The rules the loops follow so that results do not depend on the number of processes:

- the global batch is fixed (`train.global_batch_size`, or micro_batch_size × grad_accum × world size);
  rank r takes the r-th contiguous block of each step's examples, in the one-process order;
- the loss normalizer is the GLOBAL token count (an all-reduce), and each rank's loss is multiplied by the
  world size because DDP and FSDP average gradients over ranks: the result is the gradient of the global
  token mean, exactly as with one process;
- rank 0 alone writes metrics, configs and the consolidated model; checkpoints are written by every rank
  where state is sharded (FSDP optimizer), inside the same atomic step directory.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init() -> World:
    """Read the torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK) and join the process group.

    gloo on CPU, NCCL on GPU (one device per local rank). Without torchrun: a world of one.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return World(rank, world_size, local_rank, device)


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(value: float | int) -> float:
    """Sum a Python number over ranks (float64 on the CPU/GPU the backend wants)."""
    if not dist.is_initialized():
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()


def all_reduce_tensor(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place on a copy where the backend needs another device); returns the sum."""
    if not dist.is_initialized():
        return t
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    moved = t.to(device)
    dist.all_reduce(moved)
    return moved.to(t.device)


def broadcast_object(obj):
    """Rank 0's Python object, on every rank (used so all ranks take the same decision)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj) -> list:
    """Every rank's Python object, in rank order, on every rank ([obj] without torch.distributed)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Wrapping the model
# ---------------------------------------------------------------------------------------------------------------------

def check_strategy(train_cfg, world: World) -> None:
    """Refuse, before anything is written, options this world cannot honour."""
    from posttrain.errors import ConfigError
    if train_cfg.fsdp_cpu_offload and world.device.type == "cpu":
        raise ConfigError("train.fsdp_cpu_offload=true moves FSDP shards from GPU to CPU memory, and this run has "
                          "no GPU (the weights already live in CPU memory) — drop train.fsdp_cpu_offload")


def wrap(model, world: World, strategy: str, *, precision: str = "fp32", cpu_offload: bool = False):
    """DDP: replicate, all-reduce gradients. FSDP2: shard parameters, gradients and optimizer state by
    `fully_shard` on every decoder layer and then the root (each layer's weights are gathered only while
    it runs). A world of one returns the model unchanged."""
    if not world.distributed:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel
        ids = [world.device.index] if world.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    kwargs = {}
    if precision == "bf16":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated transformer blocks (the unit FSDP shards), found by the model's own `_no_split_modules`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(base).__name__} does not name its decoder layers (_no_split_modules); "
                         "use train.strategy=ddp")
    return layers


def unwrap(model):
    """The module whose methods (generate, save_pretrained, config) the rest of the code calls."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def gradient_sync(model, enabled: bool):
    """Skip the gradient all-reduce / reduce-scatter on all but the last micro-batch of a step."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # FSDP2
        model.set_requires_gradient_sync(enabled)
    yield


def is_fsdp(model) -> bool:
    return hasattr(model, "set_requires_gradient_sync")


def full_state_dict(model) -> dict | None:
    """The unsharded model weights on rank 0 (CPU tensors); None on other ranks."""
    if is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank() != 0:
            return None
        # Gathering unties tied weights (lm_head = embeddings); let them share storage again so that
        # save_pretrained writes the tensor once, as it does for an unsharded model.
        for target, source in (getattr(model, "all_tied_weights_keys", None) or {}).items():
            if target in state and source in state:
                state[target] = state[source]
        return state
    return unwrap(model).state_dict()


def save_pretrained(model, directory) -> None:
    """Write the consolidated model (HF layout, or a PEFT adapter) from rank 0. Every rank must call this:
    under FSDP gathering the weights is a collective."""
    weights = full_state_dict(model) if dist.is_initialized() else None
    if rank() == 0:
        kwargs = {"state_dict": weights} if weights is not None else {}
        unwrap(model).save_pretrained(directory, safe_serialization=True, **kwargs)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (e.g. FSDP's gradient norm); plain tensors unchanged."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
