"""Data-parallel training across processes (`torchrun --nproc_per_node=N -m attnres train`).

`batch_size` is the global batch, split evenly across the processes, so a recipe means the
same thing on any number of them. Only rank 0 writes files. Without torchrun every helper
here is a no-op for one process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..utils import resolve_device


@dataclass
class Dist:
    """This process's place in the group (one process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    started_here: bool = False  # this process called init_process_group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> Dist:
    """Join the process group torchrun describes in the environment (NCCL for CUDA, gloo
    for CPU); one process when WORLD_SIZE is unset or 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name.startswith("cuda") or (device_name == "auto"
                                                  and torch.cuda.is_available())
    started = False
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        started = True
    return Dist(rank, world_size, local_rank, started)


def teardown_distributed(ddp: Dist) -> None:
    """Leave the process group if `setup_distributed` joined it."""
    if ddp.started_here and dist.is_initialized():
        dist.destroy_process_group()


def pick_device(device_name: str, ddp: Dist) -> torch.device:
    """The device of this process: `device_name` resolved, and plain "cuda" under DDP
    meaning this process's own GPU (its local rank)."""
    device = resolve_device(device_name)
    if device.type == "cuda" and device.index is None and ddp.enabled:
        device = torch.device(f"cuda:{ddp.local_rank}")
    return device


def all_reduce(values: list[float], ddp: Dist, device: torch.device) -> list[float]:
    """`values` summed over the processes (in float64)."""
    if not ddp.enabled:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def min_over_ranks(value: int, ddp: Dist, device: torch.device) -> int:
    """The smallest `value` of all processes."""
    if not ddp.enabled:
        return value
    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return int(tensor.item())


def average_buffers(model: nn.Module, ddp: Dist) -> None:
    """Average floating-point buffers (batch-norm running statistics) over the ranks.

    DDP copies rank 0's buffers at each forward, but the last forward of an epoch leaves
    each rank with its own; averaging (timm's "reduce") makes validation, the checkpoint and
    every rank agree, with statistics drawn from all shards.
    """
    if not ddp.enabled:
        return
    buffers = [b for b in model.buffers() if b.is_floating_point()]
    if not buffers:
        return
    flat = torch.cat([b.detach().reshape(-1).double() for b in buffers])
    dist.all_reduce(flat)
    flat /= ddp.world_size
    offset = 0
    for b in buffers:
        b.copy_(flat[offset:offset + b.numel()].view_as(b))
        offset += b.numel()


def wrap_model(net: nn.Module, ddp: Dist, device: torch.device) -> nn.Module:
    """`net` in DistributedDataParallel when there are several processes, else `net`."""
    if not ddp.enabled:
        return net
    return nn.parallel.DistributedDataParallel(
        net, device_ids=[device.index] if device.type == "cuda" else None)


__all__ = ["Dist", "all_reduce", "average_buffers", "min_over_ranks", "pick_device",
           "setup_distributed", "teardown_distributed", "wrap_model"]
