"""Batch arithmetic and process layout, computed without Ray.

global batch = data-parallel ranks x micro-batch x accumulation steps. The global
batch is fixed by the job; on a resize only the accumulation steps change.

Exercised by: orchestrator plan examples/quickstart.yaml --workers 4
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import strategies
from strategies.mesh import ParallelDims

if TYPE_CHECKING:
    from orchestrator.config.spec import JobSpec


@dataclass(frozen=True)
class BatchLayout:
    dims: ParallelDims
    global_batch: int
    micro_batch: int
    accumulation: int

    @property
    def per_rank_batch(self) -> int:
        return self.micro_batch * self.accumulation


def layout_for(spec: "JobSpec", workers: int) -> ParallelDims:
    return strategies.get_strategy(spec.strategy.name).layout(spec.strategy, workers)


def batch_layout(spec: "JobSpec", workers: int) -> BatchLayout:
    """Raises ValueError naming the keys to change when the batch does not divide."""
    try:
        dims = layout_for(spec, workers)
    except strategies.LayoutError as error:
        raise ValueError(f"scaling.workers: {workers} workers: {error}") from None
    train = spec.train
    per_step = dims.dp * train.micro_batch_size
    if train.global_batch_size % per_step:
        raise ValueError(
            f"train.global_batch_size: {train.global_batch_size} is not divisible by "
            f"{dims.dp} data-parallel ranks x train.micro_batch_size {train.micro_batch_size} "
            f"= {per_step} at {workers} workers; change either so the product divides it"
        )
    return BatchLayout(
        dims=dims,
        global_batch=train.global_batch_size,
        micro_batch=train.micro_batch_size,
        accumulation=train.global_batch_size // per_step,
    )


def batch_fits(spec: "JobSpec", workers: int) -> bool:
    """Whether the job's layout and global batch can be split over `workers`."""
    try:
        batch_layout(spec, workers)
        return True
    except ValueError:
        return False
