"""The `strategy:` section of `name: ddp` and its registry entry; the runtime
(strategies/ddp.py, with torch's DistributedDataParallel) is imported when it is built.

Exercised by: pytest tests/test_strategy_parity.py -k ddp
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from strategies.registry import StrategyOptions, StrategySpec, all_data_parallel, register_strategy, runtime


class DDPOptions(StrategyOptions):
    """`strategy:` section for `name: ddp`."""
    name: Literal["ddp"] = "ddp"
    bucket_cap_mb: float = Field(25.0, gt=0, description="Gradient all-reduce bucket size in MiB.")


register_strategy(
    StrategySpec(
        name="ddp",
        options=DDPOptions,
        build=runtime("strategies.ddp", "DDPStrategy"),
        layout=all_data_parallel,
        summary="data parallel: full replica per worker, gradients all-reduced",
    )
)
