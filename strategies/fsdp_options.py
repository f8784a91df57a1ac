"""The `strategy:` section of `name: fsdp` and its registry entry; the runtime
(strategies/fsdp.py, with torch's FSDP and DTensor) is imported when it is built.

Exercised by: pytest tests/test_strategy_parity.py -k fsdp
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from strategies.registry import (
    Sharding, StrategyOptions, StrategySpec, all_data_parallel, register_strategy, runtime,
)


class FSDPOptions(StrategyOptions):
    """`strategy:` section for `name: fsdp`."""
    name: Literal["fsdp"] = "fsdp"
    reshard_after_forward: bool = Field(
        True,
        description="Free each block's gathered parameters after its forward pass and gather "
        "them again for backward (ZeRO-3). false keeps them until backward is done: one "
        "all-gather fewer per block, at the memory of whole parameters during the step.",
    )


register_strategy(
    StrategySpec(
        name="fsdp",
        options=FSDPOptions,
        build=runtime("strategies.fsdp", "FSDPStrategy"),
        layout=all_data_parallel,
        summary="fully sharded data parallel (PyTorch FSDP2): parameters, gradients and "
        "optimizer state sharded across workers",
        sharding=lambda options: Sharding(params=True, grads=True, optimizer=True),
        changes_math=lambda options: True,
    )
)
