"""Distributed data parallel: every worker holds the whole model, gradients are averaged.

Exercised by: pytest tests/test_strategy_parity.py -k ddp
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from strategies.base import Strategy
from strategies.ddp_options import DDPOptions
from strategies.mesh import ParallelDims


class DDPStrategy(Strategy):
    state_replicated = True

    def __init__(self, options: DDPOptions, dims: ParallelDims) -> None:
        super().__init__(dims)
        self.options = options

    def parallelize(self, model: nn.Module, device: torch.device) -> nn.Module:
        # On its device first: DDP broadcasts rank 0's weights from where the module is.
        model = model.to(device)
        device_ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, bucket_cap_mb=self.options.bucket_cap_mb)

    def accumulate(self, is_last_micro_batch: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if is_last_micro_batch else self.model.no_sync()
