"""A prepared split held in memory, and what every split offers the training loop.

The loop asks a split for its length, its epoch order (order.py) and the rows of a
step (`take`), and tells it what the coming steps will read (`prefetch_for`). A split
in memory (here) and one streamed from shards (shards.py) answer the same calls, so
the loop never asks which one it has.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from orchestrator.data.order import ShardOrder

if TYPE_CHECKING:
    from orchestrator.data.sampler import GlobalBatchSampler


@dataclass
class Split:
    inputs: np.ndarray  # float32 (N, features) or int64 (N, context) token ids
    targets: np.ndarray  # int64 (N,) class ids, float32 (N,) values, or int64 (N, context)

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def order(self) -> ShardOrder:
        return ShardOrder.whole(len(self))

    def take(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows `ids`, as fresh arrays (inputs, targets)."""
        return self.inputs[ids], self.targets[ids]

    def reads(self) -> dict[str, int]:
        """What this process read from storage: nothing, the rows came with the split."""
        return {}

    def prefetch_for(self, sampler: "GlobalBatchSampler", step: int, dp_rank: int, dp_size: int,
                     steps: int | None = None) -> None:
        """Nothing to read ahead: every row is here."""
