"""The few collectives the orchestrator itself runs (loss sums, directives, barriers).

NCCL only moves CUDA tensors, gloo only CPU ones: each helper puts its small tensor
on the device the process group's backend needs and brings the result back.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_initialized() and dist.get_world_size() > 1


def all_reduce(tensor: torch.Tensor, op=dist.ReduceOp.SUM) -> None:
    """In-place all-reduce of a small CPU tensor over every rank."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        moved = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(moved, op=op)
        tensor.copy_(moved.cpu())
    else:
        dist.all_reduce(tensor, op=op)


def all_reduce_async(tensor: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Start a sum all-reduce of a small CPU tensor over every rank; returns a function
    that waits for it and gives the result (a CPU tensor). Until then the caller goes on:
    later collectives on the group queue behind it, in the same order on every rank."""
    if not is_distributed():
        return lambda: tensor
    if dist.get_backend() == "nccl":
        moved = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        work = dist.all_reduce(moved, async_op=True)
        return lambda: (work.wait(), moved.cpu())[1]
    work = dist.all_reduce(tensor, async_op=True)
    return lambda: (work.wait(), tensor)[1]


def barrier(group: dist.ProcessGroup | None = None) -> None:
    """Wait for every rank (of `group`, default: all of them)."""
    if is_distributed():
        dist.barrier(group=group)


def all_gather_object(value, group: dist.ProcessGroup | None = None):
    """Every rank's `value`, in rank order ([value] without a process group)."""
    if not is_distributed():
        return [value]
    gathered = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, value, group=group)
    return gathered


def side_group(timeout: timedelta) -> dist.ProcessGroup | None:
    """A gloo group of every rank for collectives run on another thread than training's
    (a background checkpoint): on a group of its own, their order never interleaves with
    the training's. None without a process group. Call on every rank, in the same order."""
    if not is_distributed():
        return None
    return dist.new_group(backend="gloo", timeout=timeout)
