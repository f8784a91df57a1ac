"""Rows of a prepared split as tensors on the worker's device."""
from __future__ import annotations

import numpy as np
import torch

from orchestrator.data.pipeline import Split


def batch_tensors(split: Split, ids: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.from_numpy(split.inputs[ids]).to(device, non_blocking=True)
    targets = torch.from_numpy(split.targets[ids]).to(device, non_blocking=True)
    return inputs, targets
