"""Parallelism strategies, registered by name. Importing this package registers them all
from their options modules, which need neither torch nor the strategy's runtime: a job
is read and checked without them, and a strategy's runtime is imported when it is built.
`Strategy`, `StepShape` and `BlockCompute` (torch) are imported on first use."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from strategies import ddp_options  # noqa: F401  (registers "ddp")
from strategies import fsdp_options  # noqa: F401  (registers "fsdp")
from strategies import model_parallel_options  # noqa: F401  (registers "tensor", "pipeline", "hybrid")
from strategies import sequential_options  # noqa: F401  (registers "sequential")
from strategies import zero_options  # noqa: F401  (registers "zero")
from strategies.mesh import LayoutError, ParallelDims
from strategies.registry import STRATEGY_REGISTRY, Sharding, StrategySpec, get_strategy, register_strategy

if TYPE_CHECKING:
    from strategies.base import StepShape, Strategy
    from strategies.block_compute import BlockCompute

# The runtime's names: the module each is imported from when first asked for.
_RUNTIME = {"Strategy": "strategies.base", "StepShape": "strategies.base", "BlockCompute": "strategies.block_compute"}


def __getattr__(name: str) -> Any:
    if name in _RUNTIME:
        return getattr(importlib.import_module(_RUNTIME[name]), name)
    raise AttributeError(f"module 'strategies' has no attribute {name!r}")


__all__ = [
    "STRATEGY_REGISTRY",
    "BlockCompute",
    "LayoutError",
    "ParallelDims",
    "Sharding",
    "StepShape",
    "Strategy",
    "StrategySpec",
    "get_strategy",
    "register_strategy",
]
