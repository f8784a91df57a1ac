"""The `strategy:` section of `name: sequential` and its registry entry; the runtime
(strategies/sequential.py) is imported when it is built.

Exercised by: orchestrator verify examples/quickstart.yaml
"""
from __future__ import annotations

from typing import Literal

from strategies.mesh import LayoutError, ParallelDims
from strategies.registry import StrategyOptions, StrategySpec, register_strategy, runtime


class SequentialOptions(StrategyOptions):
    """`strategy:` section for `name: sequential`."""
    name: Literal["sequential"] = "sequential"


def _one_worker(options: SequentialOptions, world_size: int) -> ParallelDims:
    if world_size != 1:
        raise LayoutError(f"sequential runs on one worker, not {world_size}")
    return ParallelDims(world_size=1, dp=1)


register_strategy(
    StrategySpec(
        name="sequential",
        options=SequentialOptions,
        build=runtime("strategies.sequential", "SequentialStrategy"),
        layout=_one_worker,
        summary="the model as it is, on one worker: the reference every strategy is checked against",
    )
)
