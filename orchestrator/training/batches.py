"""Rows of a prepared split as tensors on the worker's device."""
from __future__ import annotations

import numpy as np
import torch

from orchestrator.data.pipeline import Split


def batch_tensors(split: Split, ids: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows `ids` of `split`; on a GPU through pinned host memory, so the copies are
    asynchronous and the host goes on queueing the step's kernels meanwhile."""
    return _to_device(split.inputs[ids], device), _to_device(split.targets[ids], device)


def _to_device(rows: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(rows)  # fancy indexing made a fresh array: no copy here
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)
