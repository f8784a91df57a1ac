"""The `strategy:` section of `name: zero`, its checks against the rest of the job and its
registry entry; the runtime (strategies/zero.py, with DeepSpeed) is imported when it is built.

Exercised by: pytest tests/test_strategy_parity.py -k zero tests/test_sharded_strategies.py
"""
from __future__ import annotations

import importlib.util
from typing import Any, Literal

from pydantic import Field

from strategies.registry import (
    Sharding, StrategyOptions, StrategySpec, all_data_parallel, register_strategy, runtime,
)

INSTALL_HINT = (
    "strategy.name: zero needs DeepSpeed, which is not installed; "
    "install it with `pip install -e .[zero]` (deepspeed==0.19.8)"
)


class ZeROOptions(StrategyOptions):
    """`strategy:` section for `name: zero`."""
    name: Literal["zero"] = "zero"
    stage: Literal[1, 2, 3] = Field(
        2,
        description="1 shards optimizer state across data-parallel ranks, 2 also gradients, "
        "3 also parameters.",
    )
    offload: Literal["none", "optimizer", "parameters"] = Field(
        "none",
        description="Keep optimizer state, its fp32 weights and gradients in host memory and "
        "step the optimizer there (`optimizer`, needs optimizer adam or adamw), or that and "
        "the parameter shards too (`parameters`, needs stage 3).",
    )
    bucket_mb: float = Field(
        25.0, gt=0, description="Gradient reduce and parameter all-gather bucket size in MiB."
    )
    param_persistence_threshold: int = Field(
        0,
        ge=0,
        description="Stage 3: parameters with fewer elements than this stay whole on every "
        "rank, trading their memory for fewer all-gathers (0: shard them all).",
    )


def check_zero(options: ZeROOptions, job: Any) -> list[str]:
    """Cross-section checks, run when job.yaml is loaded; each problem names its key."""
    problems = []
    if importlib.util.find_spec("deepspeed") is None:
        problems.append(INSTALL_HINT)
    if options.offload == "parameters" and options.stage != 3:
        problems.append(
            f"strategy.offload: 'parameters' needs strategy.stage: 3 (stages 1 and 2 keep whole "
            f"parameters on every rank; got stage {options.stage}); use offload: optimizer or stage: 3"
        )
    if options.offload != "none" and job.optimizer.name not in ("adam", "adamw"):
        problems.append(
            f"strategy.offload: {options.offload!r} steps the optimizer in host memory with "
            f"DeepSpeed's CPU Adam, which has no {job.optimizer.name!r}; set optimizer.name: "
            "adam or adamw, or strategy.offload: none"
        )
    if options.param_persistence_threshold and options.stage != 3:
        problems.append(
            f"strategy.param_persistence_threshold: applies to stage 3 only (got stage "
            f"{options.stage}); remove it or set strategy.stage: 3"
        )
    return problems


register_strategy(
    StrategySpec(
        name="zero",
        options=ZeROOptions,
        build=runtime("strategies.zero", "ZeROStrategy"),
        layout=all_data_parallel,
        summary="ZeRO through DeepSpeed: stage 1 shards optimizer state, 2 also gradients, "
        "3 also parameters; optional offload to host memory",
        sharding=lambda options: Sharding(
            params=options.stage == 3,
            grads=options.stage >= 2,
            optimizer=True,
            offloaded={
                "none": frozenset(),
                "optimizer": frozenset({"optimizer", "grads"}),
                "parameters": frozenset({"optimizer", "grads", "params"}),
            }[options.offload],
        ),
        check_job=check_zero,
        changes_math=lambda options: options.stage == 3,
    )
)
