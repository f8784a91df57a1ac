"""The sequential reference: the model as it is, in one process, no torch.distributed.

Every other strategy proves itself against this one: the same model, data, seed,
optimizer and global batch, stepped with the same micro-batches and accumulation,
with nothing split, wrapped or communicated.

Exercised by: orchestrator verify examples/quickstart.yaml
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from strategies.base import Strategy
from strategies.mesh import LayoutError, ParallelDims
from strategies.registry import StrategyOptions, StrategySpec, register_strategy


class SequentialOptions(StrategyOptions):
    """`strategy:` section for `name: sequential`."""
    name: Literal["sequential"] = "sequential"


class SequentialStrategy(Strategy):
    def __init__(self, options: SequentialOptions, dims: ParallelDims) -> None:
        super().__init__(dims)

    def parallelize(self, model: nn.Module, device: torch.device) -> nn.Module:
        return model.to(device)


def _one_worker(options: SequentialOptions, world_size: int) -> ParallelDims:
    if world_size != 1:
        raise LayoutError(f"sequential runs on one worker, not {world_size}")
    return ParallelDims(world_size=1, dp=1)


register_strategy(
    StrategySpec(
        name="sequential",
        options=SequentialOptions,
        build=SequentialStrategy,
        layout=_one_worker,
        summary="the model as it is, on one worker: the reference every strategy is checked against",
    )
)
