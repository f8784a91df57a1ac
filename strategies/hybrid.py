"""Model parallelism on one DeviceMesh: data x pipeline x tensor.

Three names share this strategy; `tensor` and `pipeline` are presets of `hybrid`:

    strategy: {name: tensor, tp: 2, plan: model|auto}
    strategy: {name: pipeline, pp: 2, schedule: gpipe|1f1b|interleaved_1f1b, microbatches: 4}
    strategy: {name: hybrid, tp: 2, pp: 2, data_parallel: ddp|fsdp, ...}

The job fixes the tensor and pipeline degrees; data parallelism takes the workers left over
(`ParallelDims.fill_data_parallel`), so an elastic resize changes the data degree alone. The
mesh is ("dp", "pp", "tp") with tp varying fastest, as `ParallelDims.coordinates` numbers ranks.

Exercised by: pytest tests/test_strategy_parity.py tests/test_model_parallel.py
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, fields
from functools import partial
from typing import Iterable, Literal

import torch
import torch.distributed as dist
from pydantic import BaseModel
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor

from strategies.base import LossFn, Strategy
from strategies.blocks import blocks_of, named_blocks
from strategies.compat import torch as compat_torch
from strategies.fsdp import apply_fsdp
from strategies.mesh import ParallelDims
from strategies.pipeline_parallel import (
    LocalStages,
    Pipeline,
    StageModule,
    balanced_split_points,
    build_schedule,
    pipeline_forward,
    pipeline_parallelize,
    split_problems,
    stage_bounds,
    theoretical_bubble,
)
from strategies.model_parallel_options import HybridOptions, PipelineOptions, TensorOptions  # noqa: F401
from strategies.registry import ModelLayout
from strategies.tensor_parallel import (
    PlanError,
    apply_tensor_parallel,
    fitting_degrees,
    plan_problems,
    resolve_plan,
    sharded_parameters,
    unsplit_layers,
)


@dataclass(frozen=True)
class ModelParallelConfig:
    """The options of any of the three names, with every default filled in."""

    tp: int = 1
    pp: int = 1
    plan: str = "model"
    schedule: str = "1f1b"
    microbatches: int = 1
    stages_per_worker: int = 1
    split_points: tuple[int, ...] | None = None
    data_parallel: str = "ddp"

    @classmethod
    def of(cls, options: BaseModel) -> "ModelParallelConfig":
        given = {f.name: getattr(options, f.name) for f in fields(cls) if hasattr(options, f.name)}
        if given.get("split_points") is not None:
            given["split_points"] = tuple(given["split_points"])
        if given.get("stages_per_worker") is None:
            given["stages_per_worker"] = 2 if given.get("schedule") == "interleaved_1f1b" else 1
        return cls(**given)

    @property
    def n_stages(self) -> int:
        return self.pp * self.stages_per_worker


# ---- the transform --------------------------------------------------------------------------
def parallelize(model: nn.Module, mesh: DeviceMesh, plan: dict[str, str], data_parallel: str) -> nn.Module:
    """Tensor parallel, then data parallel, in place; pipeline stages get this per stage.

    The order is torchtitan's: parallelize_module turns the planned weights into DTensors on
    "tp", then FSDP2 / replicate() add the "dp" dimension to those DTensors and make DTensors
    on "dp" of the rest. The other order would hand parallelize_module weights that are
    already sharded over data-parallel ranks, which its column/row styles do not expect.
    """
    if mesh["tp"].size() > 1:
        apply_tensor_parallel(model, mesh["tp"], plan)
    if mesh["dp"].size() > 1:
        apply_data_parallel(model, mesh["dp"], data_parallel)
    return model


def apply_data_parallel(model: nn.Module, dp_mesh: DeviceMesh, kind: str) -> nn.Module:
    """`ddp`: full replicas, gradients averaged; `fsdp`: FSDP2, block by block then the root.

    DDP is replicate() (see strategies/compat/torch.py), not torch's DistributedDataParallel,
    which refuses the DTensor parameters tensor parallelism makes.
    """
    if kind == "fsdp":
        # torch's default resharding: the root keeps its parameters gathered for backward.
        return apply_fsdp(model, dp_mesh, reshard_after_forward=None)
    return compat_torch.replicate(model, mesh=dp_mesh)


def clip_grad_norm_(
    parameters: Iterable[nn.Parameter], max_norm: float, pp_group: dist.ProcessGroup | None
) -> float:
    """Clip by the norm of all gradients of the whole model; return that norm.

    Each DTensor gradient's norm is reduced over its own mesh (shards of one weight live on
    "tp" and "dp" ranks), then squared norms are summed over pipeline stages, which hold
    disjoint parameters.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.zeros((), dtype=torch.float64)
    for grad in grads:
        norm = torch.linalg.vector_norm(grad, dtype=torch.float32)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        total += norm.double().cpu() ** 2
    if pp_group is not None:
        backend_device = "cuda" if dist.get_backend(pp_group) == "nccl" else "cpu"
        moved = total.to(backend_device)
        dist.all_reduce(moved, group=pp_group)
        total = moved.cpu()
    norm = float(total.sqrt())
    coefficient = min(1.0, max_norm / (norm + 1e-6))
    if coefficient < 1.0:
        for grad in grads:
            grad.mul_(coefficient)
    return norm


# ---- the runtime strategy -------------------------------------------------------------------
class ModelParallelStrategy(Strategy):
    def __init__(self, options: BaseModel, dims: ParallelDims) -> None:
        super().__init__(dims)
        self.config = ModelParallelConfig.of(options)
        self.pipeline: Pipeline | None = None
        self._loss_fn: LossFn | None = None
        self._loss_scale = 1.0
        self._schedule_s = 0.0

    @property
    def computes_loss(self) -> bool:
        return self.pipeline is None or self.pipeline.is_last

    @property
    def forward_precedes_backward(self) -> bool:
        return self.pipeline is None

    def parallelize(self, model: nn.Module, device: torch.device) -> nn.Module:
        dims, config = self.dims, self.config
        self.mesh = init_device_mesh(device.type, (dims.dp, dims.pp, dims.tp), mesh_dim_names=("dp", "pp", "tp"))
        # The plan is made on the whole model (the automatic one follows its forward pass);
        # a stage applies the entries naming modules it holds.
        plan = resolve_plan(model, config.plan, dims.tp) if dims.tp > 1 else {}
        # The module's `parallelize` (tensor, then data parallel), for the whole model or,
        # pipelined, for each stage.
        transform = partial(parallelize, mesh=self.mesh, plan=plan, data_parallel=config.data_parallel)
        if dims.pp == 1:
            return transform(model.to(device))
        bounds = stage_bounds_for(model, config)
        self.pipeline = pipeline_parallelize(model, self.mesh["pp"], bounds, device, transform)
        for module in self.pipeline.modules:
            module.autocast_dtype = self.autocast_dtype
        modules = self.pipeline.modules
        local = modules[0] if len(modules) == 1 else LocalStages(modules)
        self.schedule = build_schedule(config.schedule, self.pipeline, config.microbatches, self._chunk_loss)
        return local

    # ---- one optimizer step --------------------------------------------------------------
    def accumulate(self, is_last_micro_batch: bool) -> contextlib.AbstractContextManager:
        # Pipeline stages sync their data-parallel gradients once per schedule step themselves.
        if self.pipeline is None and self.dims.dp > 1:
            self.model.set_requires_gradient_sync(is_last_micro_batch)
        return contextlib.nullcontext()

    def forward_backward(
        self, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn, loss_scale: float
    ) -> torch.Tensor:
        if self.pipeline is None:
            return super().forward_backward(inputs, targets, loss_fn, loss_scale)
        self._loss_fn, self._loss_scale = loss_fn, loss_scale
        args = (inputs,) if self.pipeline.is_first else ()
        target = targets if self.pipeline.is_last else None
        losses: list[torch.Tensor] = []
        started = time.perf_counter()
        self.schedule.step(*args, target=target, losses=losses, return_outputs=False)
        self._schedule_s += time.perf_counter() - started
        if not self.pipeline.is_last:
            return torch.zeros(())  # not counted: computes_loss is False here
        # Each chunk's loss came back scaled by loss_scale / microbatches: their sum over
        # the chunks, unscaled, is the mean over the loop's micro-batch.
        return torch.stack([loss.detach().float() for loss in losses]).sum() / loss_scale

    def _chunk_loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The schedule's loss for one pipeline micro-batch: its mean loss, divided by the
        number of micro-batches and scaled for the loop's accumulation, so that gradients
        add up to those of the mean over the loop's micro-batch."""
        with self._autocast():
            loss = self._loss_fn(output, target)
        return loss * (self._loss_scale / self.config.microbatches)

    def step(self, max_grad_norm: float | None) -> float | None:
        grad_norm = None
        if max_grad_norm:
            group = self.pipeline.group if self.pipeline is not None else None
            grad_norm = clip_grad_norm_(self.model.parameters(), max_grad_norm, group)
        with self.handover.first_writes():
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return grad_norm

    def predict(self, inputs: torch.Tensor) -> torch.Tensor | None:
        if self.pipeline is None:
            return super().predict(inputs)
        self.model.eval()
        try:
            output = pipeline_forward(self.pipeline, inputs)
        finally:
            self.model.train()
        return None if output is None else output.float()

    # ---- state ---------------------------------------------------------------------------
    def full_model_state(self) -> dict[str, torch.Tensor]:
        options = StateDictOptions(full_state_dict=True)
        state = {k: v.detach().cpu() for k, v in get_model_state_dict(self.model, options=options).items()}
        if self.pipeline is None:
            return state
        parts: list = [None] * self.pipeline.pp
        dist.all_gather_object(parts, state, group=self.pipeline.group)
        return {k: v for part in parts for k, v in part.items()}

    # ---- accounting ----------------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """The pipeline bubble of the last step: each pipeline rank's idle share of the step,
        1 - computing / wall, where wall is the longest time any rank of the pipeline spent
        in the schedule (the first rank starts at once and waits for the last backward; the
        last rank waits for the first forward and is done before the backward drains)."""
        if self.pipeline is None:
            return {}
        local = torch.tensor([self.pipeline.busy_s(), self._schedule_s], dtype=torch.float64)
        for stage in self.pipeline.stages:
            stage.busy_s = 0.0
        self._schedule_s = 0.0
        gathered = [torch.zeros_like(local) for _ in range(self.pipeline.pp)]
        dist.all_gather(gathered, local, group=self.pipeline.group)
        wall = max(float(w) for _, w in gathered)
        bubbles = [max(0.0, 1.0 - float(busy) / wall) if wall > 0 else 0.0 for busy, _ in gathered]
        record = {f"pipeline_bubble_rank{r}": b for r, b in enumerate(bubbles)}
        record["pipeline_bubble"] = sum(bubbles) / len(bubbles)
        record["pipeline_bubble_theory"] = theoretical_bubble(
            self.pipeline.pp, self.config.microbatches, self.config.stages_per_worker
        )
        return record


def stage_bounds_for(model: nn.Module, config: ModelParallelConfig) -> list[tuple[int, int]]:
    """Block ranges of the stages: the job's split points, or balanced by parameter count."""
    blocks = blocks_of(model)
    points = config.split_points
    if points is None:
        sizes = [sum(p.numel() for p in block.parameters()) for block in blocks]
        points = balanced_split_points(sizes, config.n_stages)
    return stage_bounds(len(blocks), points)


# ---- before launch: checks and the plan's view --------------------------------------------
def check(options: BaseModel, model: nn.Module, dims: ParallelDims, micro_batch_size: int) -> list[str]:
    """Layout problems that need the model: see StrategySpec.check."""
    config = ModelParallelConfig.of(options)
    problems: list[str] = []
    if dims.tp > 1:
        problems += _tensor_problems(model, config.plan, dims.tp)
    if dims.pp > 1:
        problems += _pipeline_problems(model, config, dims.pp, micro_batch_size)
    return problems


def _tensor_problems(model: nn.Module, kind: str, tp: int) -> list[str]:
    try:
        plan = resolve_plan(model, kind, tp)
    except PlanError as error:
        return [str(error)]
    problems = plan_problems(model, plan, tp)
    if not plan:
        whole = unsplit_layers(model)
        if whole:
            problems.append(
                f"strategy.plan: {kind} finds nothing tensor parallelism can split in {type(model).__name__} "
                f"(left whole: {'; '.join(whole)}); train it with strategy.name ddp, zero or fsdp"
            )
        else:
            problems.append(f"strategy.tp: {tp} divides the width of no nn.Linear the model calls")
    if problems:
        limit = max((m.out_features for m in model.modules() if isinstance(m, nn.Linear)), default=1)
        fits = fitting_degrees(model, kind, limit=min(limit, 64))
        problems.append(
            f"strategy.tp: tensor degrees that fit this model with plan {kind!r}: {', '.join(map(str, fits))}"
        )
    return problems


def _pipeline_problems(model: nn.Module, config: ModelParallelConfig, pp: int, micro_batch_size: int) -> list[str]:
    problems = []
    try:
        n_blocks = len(blocks_of(model))
    except ValueError as error:
        return [str(error)]
    per_worker = config.stages_per_worker
    if pp * per_worker > n_blocks:
        fits = [p for p in range(1, n_blocks // per_worker + 1)]
        problems.append(
            f"strategy.pp: {pp} pipeline workers x {per_worker} stage(s) each = {pp * per_worker} "
            f"stages, more than the model's {n_blocks} blocks; pipeline degrees that fit: "
            f"{', '.join(map(str, fits))}"
        )
    elif config.split_points is not None and split_problems(config.split_points, pp * per_worker, n_blocks):
        problems += split_problems(config.split_points, pp * per_worker, n_blocks)
    else:
        # A stage without parameters has nothing to train (and no optimizer to build).
        blocks = blocks_of(model)
        for stage, (start, stop) in enumerate(stage_bounds_for(model, config)):
            if not any(True for i in range(start, stop) for _ in blocks[i].parameters()):
                names = ", ".join(type(blocks[i]).__name__ for i in range(start, stop))
                problems.append(
                    f"strategy.pp: stage {stage} would hold only blocks without parameters ({names}); "
                    "use fewer stages or name strategy.split_points"
                )
    m = config.microbatches
    if micro_batch_size % m:
        divisors = [d for d in range(1, micro_batch_size + 1) if micro_batch_size % d == 0]
        problems.append(
            f"strategy.microbatches: {m} does not divide train.micro_batch_size {micro_batch_size}; "
            f"choose one of {divisors} or change the micro-batch size"
        )
    if config.schedule == "1f1b" and m < pp:
        problems.append(f"strategy.microbatches: 1f1b needs at least one micro-batch per stage ({pp}), got {m}")
    if config.schedule == "interleaved_1f1b" and m % max(1, m // pp):
        problems.append(
            f"strategy.microbatches: interleaved_1f1b needs a multiple of {max(1, m // pp)} "
            f"(rounds of {pp}), got {m}"
        )
    return problems


def describe(options: BaseModel, model: nn.Module, dims: ParallelDims) -> ModelLayout:
    """The mesh, the stages and the tensor plan, with the parameters each worker holds."""
    config = ModelParallelConfig.of(options)
    lines = [f"device mesh (dp, pp, tp) = ({dims.dp}, {dims.pp}, {dims.tp}); tp varies fastest over ranks"]
    plan = resolve_plan(model, config.plan, dims.tp) if dims.tp > 1 else {}
    if plan:
        lines.append(f"tensor plan ({config.plan}), {dims.tp} ways:")
        lines += [f"  {name:<32} {style}" for name, style in plan.items()]
    shards = {"every worker": model}
    if dims.pp > 1:
        lines += _stage_lines(model, config, dims.pp)
        blocks, bounds = named_blocks(model), stage_bounds_for(model, config)
        held: dict[int, list[tuple[str, nn.Module]]] = {r: [] for r in range(dims.pp)}
        for stage, (start, stop) in enumerate(bounds):
            held[stage % dims.pp] += blocks[start:stop]
        # Blocks at their whole-model paths, so the whole-model plan names them.
        shards = {f"pipeline rank {r}": StageModule(b) for r, b in held.items()}
    if dims.dp > 1:
        how = "parameters, gradients, optimizer state sharded" if config.data_parallel == "fsdp" else "full replicas"
        lines.append(f"data parallel: {dims.dp} ways ({config.data_parallel}: {how}); the degree elastic resizes change")
    worker_params = {}
    for label, shard in shards.items():
        n = sharded_parameters(shard, plan, dims.tp) if plan else sum(p.numel() for p in shard.parameters())
        if config.data_parallel == "fsdp" and dims.dp > 1:
            n = math.ceil(n / dims.dp)
        worker_params[label] = n
    return ModelLayout(lines=lines, worker_params=worker_params)


def _stage_lines(model: nn.Module, config: ModelParallelConfig, pp: int) -> list[str]:
    """The pipeline: its schedule and bubble, then each stage's blocks by kind and by path."""
    blocks, bounds = named_blocks(model), stage_bounds_for(model, config)
    theory = theoretical_bubble(pp, config.microbatches, config.stages_per_worker)
    lines = [
        f"pipeline: {len(bounds)} stages on {pp} workers, schedule {config.schedule}, "
        f"{config.microbatches} micro-batches; bubble (p-1)/(v*m+p-1) = {theory:.1%}"
    ]
    for stage, (start, stop) in enumerate(bounds):
        held = blocks[start:stop]
        kinds = ", ".join(type(block).__name__ for _, block in held)
        n = sum(p.numel() for _, block in held for p in block.parameters())
        span = f"block {start}" if stop - start == 1 else f"blocks {start}-{stop - 1}"
        lines.append(f"  stage {stage} on pipeline rank {stage % pp}: {span} ({kinds}), {n:,} parameters")
        lines.append(f"    holds {_paths_in_short([path for path, _ in held])}")
    return lines


def _paths_in_short(paths: list[str]) -> str:
    """`model.layers.0, model.layers.1, model.layers.2` as `model.layers.0-2`."""
    runs: list[list] = []  # [prefix, first, last], or [path, None, None] for an unnumbered one
    for path in paths:
        prefix, _, index = path.rpartition(".")
        if runs and index.isdigit() and runs[-1][0] == prefix and runs[-1][2] == int(index) - 1:
            runs[-1][2] = int(index)
        else:
            runs.append([prefix, int(index), int(index)] if index.isdigit() else [path, None, None])
    return ", ".join(p if a is None else f"{p}.{a}" + (f"-{b}" if b > a else "") for p, a, b in runs)
