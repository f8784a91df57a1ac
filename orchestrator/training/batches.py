"""Rows of a prepared split as tensors on the worker's device."""
from __future__ import annotations

import numpy as np
import torch


def batch_tensors(split, ids: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows `ids` of `split` (a `PreparedData` split: in memory or streamed); on a GPU
    through pinned host memory, so the copies are asynchronous and the host goes on
    queueing the step's kernels meanwhile."""
    inputs, targets = split.take(ids)
    return _to_device(inputs, device), _to_device(targets, device)


def _to_device(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(rows)  # fancy indexing made a fresh array: no copy here
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)
