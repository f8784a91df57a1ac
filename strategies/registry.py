"""The strategy registry: one dict from the name written in job.yaml to its spec.

A strategy is registered with the pydantic model of its `strategy:` section in
job.yaml and a builder that turns those options plus the process layout into a
runtime `Strategy`. Presets are data: register another name with other defaults.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict, Field

from strategies.mesh import ParallelDims

if TYPE_CHECKING:
    from torch import nn

    from strategies.base import Strategy


class StrategyOptions(BaseModel):
    """Keys every `strategy:` section takes, whatever the strategy.

    The check itself belongs to the orchestrator (`orchestrator verify`); a strategy
    only says whether it changes the model's math (`StrategySpec.changes_math`)."""

    model_config = ConfigDict(extra="forbid")
    verify: bool | None = Field(
        None,
        description="Check the layout against a sequential run on the job's own model before "
        "training: true always, false never; unset: when the model is not a built-in and the "
        "strategy changes its math (fsdp, zero stage 3, tensor, pipeline, hybrid).",
    )
    verify_options: dict[str, Any] = Field(
        default_factory=dict,
        description="model.options to override for that check, for a smaller instance of the same "
        "model (fewer layers, a narrower width) when the whole one does not fit one process.",
    )


@dataclass(frozen=True)
class ModelLayout:
    """How one model lands on the workers of a layout, for `orchestrator plan`.

    Attributes:
        lines: the mesh, which blocks each pipeline stage holds, the tensor plan.
        worker_params: worker description -> parameters one such worker holds.
    """

    lines: list[str]
    worker_params: dict[str, int]


@dataclass(frozen=True)
class Sharding:
    """Which per-worker training state a strategy divides across data-parallel ranks,
    and which it keeps in host memory instead of on the accelerator.

    `orchestrator plan` divides the sharded parts of its memory estimate by the
    data-parallel degree; the metrics' `mem_*_bytes` measure what really happens.
    """

    params: bool = False
    grads: bool = False
    optimizer: bool = False
    offloaded: frozenset[str] = frozenset()  # subset of {"params", "grads", "optimizer"}


@dataclass(frozen=True)
class StrategySpec:
    """What the registry knows about one strategy.

    Attributes:
        name: the value of `strategy.name` in job.yaml.
        options: pydantic model validating the whole `strategy:` section.
        build: `build(options, dims) -> Strategy`, called on every worker.
        layout: `layout(options, world_size) -> ParallelDims`, pure; used by
            validate and plan before any process starts.
        summary: one line for `orchestrator plan` and the README.
        sharding: `sharding(options) -> Sharding`, pure; None for strategies that
            keep a whole replica of the training state on every data-parallel rank.
        check: optional `check(options, model, dims, micro_batch_size) -> problems`,
            the layout checks that need the model (a tensor degree that does not
            divide the attention heads, more stages than blocks); each problem
            starts with the key path to change. `model` may live on the meta device.
        describe: optional `describe(options, model, dims) -> ModelLayout` for plan.
        check_job: `check_job(options, job) -> problems`, checks against the rest of the job
            spec (optimizer, precision, ...) run once when job.yaml is loaded; each
            problem names its key. None when the options model checks everything.
        changes_math: `changes_math(options) -> bool`: whether the layout computes the
            model differently from one process (split or sharded weights, a split
            forward), so that a model it was never tried on should be checked first.
    """

    name: str
    options: type[BaseModel]
    build: Callable[[BaseModel, "ParallelDims"], "Strategy"]
    layout: Callable[[BaseModel, int], "ParallelDims"]
    summary: str
    sharding: Callable[[BaseModel], Sharding] | None = None
    check: Callable[[BaseModel, "nn.Module", "ParallelDims", int], list[str]] | None = None
    describe: Callable[[BaseModel, "nn.Module", "ParallelDims"], ModelLayout] | None = None
    check_job: Callable[[BaseModel, Any], list[str]] | None = None
    changes_math: Callable[[BaseModel], bool] = lambda options: False


def runtime(module: str, name: str) -> Callable[..., Any]:
    """`module.name` (a class or function of a strategy's runtime), imported on the first
    call: the registry, and the checks when a job is loaded, need only the options, not
    torch's parallel machinery (FSDP, DTensor, pipelining and dynamo: about a second)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__qualname__ = call.__name__ = f"{module}.{name}"
    return call


def all_data_parallel(options: BaseModel, world_size: int) -> ParallelDims:
    """The layout of a strategy whose every worker is a data-parallel rank (ddp, zero, fsdp)."""
    return ParallelDims(world_size=world_size, dp=world_size)


STRATEGY_REGISTRY: dict[str, StrategySpec] = {}


def register_strategy(spec: StrategySpec) -> StrategySpec:
    if spec.name in STRATEGY_REGISTRY:
        raise ValueError(f"strategy {spec.name!r} is already registered")
    STRATEGY_REGISTRY[spec.name] = spec
    return spec


def get_strategy(name: str) -> StrategySpec:
    try:
        return STRATEGY_REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(STRATEGY_REGISTRY))
        raise KeyError(f"unknown strategy {name!r}; registered strategies: {valid}") from None
