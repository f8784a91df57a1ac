"""One global, seeded sample order per epoch, and each rank's rows of every step.

The sample ids of optimizer step `s` depend only on the seed, the split's shards
(order.py), the global batch and `s`: never on the world size. So the cursor to
save is the step itself, and after a restart or a resize every sample of an epoch
is used exactly once. Each epoch's trailing samples that do not fill a global batch
(of a split read as several streams: each stream's) are left out of that epoch, and
used in others, as the order changes per epoch.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from orchestrator.data.order import ShardOrder


@dataclass(frozen=True)
class GlobalBatchSampler:
    order: ShardOrder
    global_batch: int
    seed: int

    def __post_init__(self) -> None:
        if self.order.num_samples < self.global_batch:
            raise ValueError(
                f"train.global_batch_size: {self.global_batch} is larger than the "
                f"{self.order.num_samples} training samples; lower it or add data"
            )
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"train.global_batch_size: {self.global_batch} is larger than {self.order.stream_count} "
                f"streams of the training split can fill (each gives {self.global_batch} / "
                f"{self.order.stream_count} samples a step); lower it or data.streams"
            )

    @property
    def steps_per_epoch(self) -> int:
        return self.order.steps_per_epoch(self.global_batch)

    def epoch_of(self, step: int) -> int:
        return step // self.steps_per_epoch

    def global_batch_ids(self, step: int) -> np.ndarray:
        """Sample ids of the whole global batch of `step` (0-based)."""
        return self._ids(step, 0, self.global_batch)

    def rank_batch_ids(self, step: int, dp_rank: int, dp_size: int) -> np.ndarray:
        """This data-parallel rank's contiguous share of the global batch of `step`."""
        share = self.global_batch // dp_size
        return self._ids(step, dp_rank * share, (dp_rank + 1) * share)

    def rank_streams(self, dp_rank: int, dp_size: int) -> range:
        """The streams (order.py) whose samples a rank trains on."""
        share = self.global_batch // dp_size
        return self.order.streams_between(self.global_batch, dp_rank * share, (dp_rank + 1) * share)

    def _ids(self, step: int, lo: int, hi: int) -> np.ndarray:
        return self.order.batch_ids(self.seed, self.epoch_of(step), step % self.steps_per_epoch,
                                    self.global_batch, lo, hi)
