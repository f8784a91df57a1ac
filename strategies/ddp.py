"""Distributed data parallel: every worker holds the whole model, gradients are averaged.

Exercised by: pytest tests/test_strategy_parity.py -k ddp
"""
from __future__ import annotations

import contextlib
from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from strategies.base import Strategy
from strategies.mesh import ParallelDims
from strategies.registry import StrategyOptions, StrategySpec, register_strategy


class DDPOptions(StrategyOptions):
    """`strategy:` section for `name: ddp`."""
    name: Literal["ddp"] = "ddp"
    bucket_cap_mb: float = Field(25.0, gt=0, description="Gradient all-reduce bucket size in MiB.")


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


register_strategy(
    StrategySpec(
        name="ddp",
        options=DDPOptions,
        build=DDPStrategy,
        layout=lambda options, world_size: ParallelDims(world_size=world_size, dp=world_size),
        summary="data parallel: full replica per worker, gradients all-reduced",
    )
)
