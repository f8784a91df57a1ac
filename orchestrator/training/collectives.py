"""The few collectives the orchestrator itself runs (loss sums, directives, barriers).

NCCL only moves CUDA tensors, gloo only CPU ones: each helper puts its small tensor
on the device the process group's backend needs and brings the result back.
"""
from __future__ import annotations

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


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_object(value):
    """Every rank's `value`, in rank order ([value] without a process group)."""
    if not is_distributed():
        return [value]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered
