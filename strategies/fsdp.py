"""Fully sharded data parallel with PyTorch's `fully_shard` (FSDP2): ZeRO-3 in torch itself.

Every rank keeps 1/N of each parameter, gradient and optimizer state as DTensor
shards. A block's parameters are all-gathered just before it runs and freed after,
so only one block is ever whole. DTensor shards are what tensor and pipeline
parallelism build on too, which is why this and not DeepSpeed composes with them.

Exercised by: pytest tests/test_strategy_parity.py -k fsdp
"""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard

from strategies.base import Strategy
from strategies.blocks import repeated_blocks
from strategies.mesh import ParallelDims
from strategies.registry import StrategyOptions, Sharding, StrategySpec, register_strategy


class FSDPOptions(StrategyOptions):
    """`strategy:` section for `name: fsdp`."""
    name: Literal["fsdp"] = "fsdp"
    reshard_after_forward: bool = Field(
        True,
        description="Free each block's gathered parameters after its forward pass and gather "
        "them again for backward (ZeRO-3). false keeps them until backward is done: one "
        "all-gather fewer per block, at the memory of whole parameters during the step.",
    )


def apply_fsdp(model: nn.Module, dp_mesh: DeviceMesh, reshard_after_forward: bool | None = None) -> nn.Module:
    """Shard `model` over `dp_mesh`, block by block, then the root.

    Blocks go first so each becomes its own gather-and-free unit; the root then takes
    whatever parameters no block owns. A model without blocks (see strategies/blocks.py)
    is one unit: still sharded at rest, gathered whole to run.

    Args:
        reshard_after_forward: free each unit's gathered parameters after its forward
            (True) or keep them for backward (False); None is torch's choice: True for
            the blocks, False for the root, whose backward comes first.
    """
    for block in repeated_blocks(model):
        fully_shard(block, mesh=dp_mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=dp_mesh, reshard_after_forward=reshard_after_forward)
    return model


class FSDPStrategy(Strategy):
    def __init__(self, options: FSDPOptions, dims: ParallelDims) -> None:
        super().__init__(dims)
        self.options = options

    def parallelize(self, model: nn.Module, device: torch.device) -> nn.Module:
        dp_mesh = init_device_mesh(device.type, (self.dims.dp,), mesh_dim_names=("dp",))
        return apply_fsdp(model.to(device), dp_mesh, self.options.reshard_after_forward)

    # No `accumulate` override: gradients are reduce-scattered after every micro-batch
    # and summed into the shards, so whole gradients never outlive one backward pass.


register_strategy(
    StrategySpec(
        name="fsdp",
        options=FSDPOptions,
        build=FSDPStrategy,
        layout=lambda options, world_size: ParallelDims(world_size=world_size, dp=world_size),
        summary="fully sharded data parallel (PyTorch FSDP2): parameters, gradients and "
        "optimizer state sharded across workers",
        sharding=lambda options: Sharding(params=True, grads=True, optimizer=True),
        changes_math=lambda options: True,
    )
)
