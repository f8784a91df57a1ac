"""The sequential reference: the model as it is, in one process, no torch.distributed.

Every other strategy proves itself against this one: the same model, data, seed,
optimizer and global batch, stepped with the same micro-batches and accumulation,
with nothing split, wrapped or communicated.

Exercised by: orchestrator verify examples/quickstart.yaml
"""
from __future__ import annotations

import torch
from torch import nn

from strategies.base import Strategy
from strategies.mesh import ParallelDims
from strategies.sequential_options import SequentialOptions


class SequentialStrategy(Strategy):
    def __init__(self, options: SequentialOptions, dims: ParallelDims) -> None:
        super().__init__(dims)

    def parallelize(self, model: nn.Module, device: torch.device) -> nn.Module:
        return model.to(device)
