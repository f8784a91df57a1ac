"""Fully sharded data parallel with PyTorch's `fully_shard` (FSDP2): ZeRO-3 in torch itself.

Every rank keeps 1/N of each parameter, gradient and optimizer state as DTensor
shards. A block's parameters are all-gathered just before it runs and freed after,
so only one block is ever whole. DTensor shards are what tensor and pipeline
parallelism build on too, which is why this and not DeepSpeed composes with them.

Exercised by: pytest tests/test_strategy_parity.py -k fsdp
"""
from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import fully_shard

from strategies.base import Strategy
from strategies.blocks import repeated_blocks
from strategies.mesh import ParallelDims
from strategies.fsdp_options import FSDPOptions  # noqa: F401  (the options this strategy takes)


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
