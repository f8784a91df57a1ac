"""The one model shape every strategy relies on: a flat list of single-tensor layers.

Pipeline parallelism cuts ``layers`` into stages and a tensor plan names layers by index
(``layers.3.attn.q_proj``), so a model must be nothing more than its layers applied in
order, each taking the previous layer's output as its only input.

Exercised by ``python -m pytest tests/test_models.py -q``.
"""

from typing import Iterable

import torch
from torch import nn


class SequentialModel(nn.Module):
    """Applies ``layers`` in order.

    Args:
        layers: modules that each map one tensor to one tensor.
    """

    def __init__(self, layers: Iterable[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @property
    def blocks(self) -> nn.ModuleList:
        """The sequence of blocks that pipeline stages are cut from."""
        return self.layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x
