"""Parallelism strategies, registered by name. Importing this package registers them all;
the heavier ones register their options only and import their runtime when built."""
from strategies import ddp  # noqa: F401  (registers "ddp")
from strategies import fsdp_options  # noqa: F401  (registers "fsdp")
from strategies import model_parallel_options  # noqa: F401  (registers "tensor", "pipeline", "hybrid")
from strategies import sequential  # noqa: F401  (registers "sequential")
from strategies import zero  # noqa: F401  (registers "zero")
from strategies.base import StepShape, Strategy
from strategies.block_compute import BlockCompute
from strategies.mesh import LayoutError, ParallelDims
from strategies.registry import STRATEGY_REGISTRY, StrategySpec, get_strategy, register_strategy
from strategies.registry import Sharding

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
