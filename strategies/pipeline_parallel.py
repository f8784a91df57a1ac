"""Pipeline (inter-layer) parallelism on torch.distributed.pipelining.

The model's block sequence (`model.layers`, or the paths `model.pipeline_blocks` lists:
strategies/blocks.py) is cut into contiguous stages, balanced by parameter count unless
the job names the split points. Each pipeline rank builds a `PipelineStage` from its
blocks; a schedule (GPipe, 1F1B, interleaved 1F1B) runs the micro-batches through them.
The stage module keeps the blocks at their paths in the whole model
(`layers.3.attn.q_proj.weight`, `model.layers.1.mlp.up_proj.weight` whatever the stage),
so checkpoints written by one layout load under another, a whole-model tensor plan names
a stage's modules, and the exported weights load into the model's own class.

Like torchtitan's `pipeline_llm`, `pipeline_parallelize` takes the other strategies'
`parallelize` function and applies it to each stage.

Exercised by: pytest tests/test_strategy_parity.py -k pipeline; python benchmarks/pipeline_bubble.py
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from strategies.blocks import named_blocks, shared_modules
from strategies.model_parallel_options import SCHEDULES  # noqa: F401  (what the schedules are called)


# ---- where to cut -------------------------------------------------------------------------
def balanced_split_points(sizes: Sequence[int], stages: int) -> list[int]:
    """Start index of stages 1..stages-1 of a contiguous partition that minimises the
    largest stage's total size and, among those, spreads the rest most evenly (least
    sum of squared stage sizes). Two dynamic programmes over the prefix sums.

    Raises:
        ValueError: when there are fewer blocks than stages.
    """
    n = len(sizes)
    if stages > n:
        raise ValueError(f"{stages} stages need at least {stages} blocks, the model has {n}")
    prefix = [0]
    for size in sizes:
        prefix.append(prefix[-1] + size)
    largest = _partition(prefix, stages, lambda worst, size: max(worst, size))[0]
    _, points = _partition(
        prefix, stages, lambda total, size: total + size * size if size <= largest else float("inf")
    )
    return points


def _partition(prefix: list[int], stages: int, combine) -> tuple[float, list[int]]:
    """Best cost of cutting the blocks into `stages` contiguous stages, folding each stage's
    size into the cost with `combine`, and the cut points; ties go to the earlier cut."""
    n = len(prefix) - 1
    inf = float("inf")
    # best[k][j]: best cost of the first j blocks as k stages; cut[k][j]: where stage k starts.
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    best[0][0] = 0
    for k in range(1, stages + 1):
        for j in range(k, n + 1):
            for i in range(k - 1, j):
                cost = combine(best[k - 1][i], prefix[j] - prefix[i])
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    points, j = [], n
    for k in range(stages, 1, -1):
        j = cut[k][j]
        points.append(j)
    return best[stages][n], sorted(points)


def stage_bounds(n_blocks: int, points: Sequence[int]) -> list[tuple[int, int]]:
    """[start, stop) block ranges of each stage from its split points."""
    edges = [0, *points, n_blocks]
    return list(zip(edges, edges[1:]))


def split_problems(points: Sequence[int], stages: int, n_blocks: int) -> list[str]:
    """Why named split points cannot cut `n_blocks` blocks into `stages` stages."""
    if len(points) != stages - 1:
        return [
            f"strategy.split_points: {list(points)} names {len(points)} cut(s); {stages} stages need "
            f"{stages - 1}, each the index of the block a stage starts at"
        ]
    if list(points) != sorted(set(points)) or (points and not 0 < points[0] <= points[-1] < n_blocks):
        return [
            f"strategy.split_points: {list(points)} must increase strictly and lie between 1 and "
            f"{n_blocks - 1} (the model has {n_blocks} blocks)"
        ]
    return []


# ---- what a rank holds --------------------------------------------------------------------
class StageModule(nn.Module):
    """Some blocks of a model, applied in order, each at its path in the whole model.

    The stage is the model's module tree cut down to these blocks (and the modules every
    stage shares): `layers.3` sits in an nn.ModuleDict `layers` under key "3",
    `model.layers.0` in `model` -> `layers` -> "0". Its state dict therefore says
    `layers.3.fc.weight` or `model.layers.0.mlp.up_proj.weight` on every layout.

    Args:
        blocks: (path, block) pairs in the order they run; each block maps one tensor to one.
        shared: (path, module) pairs held but not run (what the blocks call).
        no_split: the model's `_no_split_modules`, so FSDP shards a stage in the same units
            as the whole model.
    """

    def __init__(
        self,
        blocks: Sequence[tuple[str, nn.Module]],
        shared: Sequence[tuple[str, nn.Module]] = (),
        no_split: Sequence[str] | None = None,
    ):
        super().__init__()
        self.block_paths = tuple(path for path, _ in blocks)
        for path, module in [*blocks, *shared]:
            place_module(self, path, module)
        if no_split:
            self._no_split_modules = list(no_split)
        self.autocast_dtype: torch.dtype | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.autocast_dtype is None:
            return self._run(x)
        with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
            return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        for path in self.block_paths:
            x = self.get_submodule(path)(x)
        return x


class LocalStages(nn.Module):
    """Every block a rank holds (several stages under interleaving), at the same paths, for
    the optimizer and the checkpoint; the stages themselves run through `stages`."""

    def __init__(self, stages: list[nn.Module]):
        super().__init__()
        for stage in stages:
            for path in stage.block_paths:
                place_module(self, path, stage.get_submodule(path))


def place_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Register `module` at dotted `path` under `root`, making the missing containers on the
    way as nn.ModuleDicts (`layers` of `layers.3`, as the whole model's names need)."""
    *parents, leaf = path.split(".")
    node = root
    for name in parents:
        if name not in node._modules:
            node.add_module(name, nn.ModuleDict())
        node = node._modules[name]
    node.add_module(leaf, module)


class TimedStage(PipelineStage):
    """A PipelineStage that adds up the time it spends computing.

    Waiting for a neighbour's activations or gradients happens outside these calls, in the
    schedule, so 1 - busy / step time is the stage's idle share: its bubble.
    """

    busy_s: float = 0.0

    def forward_one_chunk(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return super().forward_one_chunk(*args, **kwargs)
        finally:
            self.busy_s += time.perf_counter() - started

    def backward_one_chunk(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return super().backward_one_chunk(*args, **kwargs)
        finally:
            self.busy_s += time.perf_counter() - started


@dataclass
class Pipeline:
    """One rank's part of the pipeline."""

    stage_ids: list[int]  # global stage indices this rank holds, ascending
    modules: list[nn.Module]  # the (possibly wrapped) stage modules, same order
    stages: list[TimedStage]
    bounds: list[tuple[int, int]]  # block range of every stage, all ranks'
    group: dist.ProcessGroup
    pp_rank: int
    pp: int

    @property
    def n_stages(self) -> int:
        return len(self.bounds)

    @property
    def is_first(self) -> bool:
        return 0 in self.stage_ids

    @property
    def is_last(self) -> bool:
        return self.n_stages - 1 in self.stage_ids

    def owner(self, stage: int) -> int:
        # Loop placement, as interleaved schedules expect: stage s runs on pipeline rank s % pp.
        return stage % self.pp

    def busy_s(self) -> float:
        return sum(stage.busy_s for stage in self.stages)


def pipeline_parallelize(
    model: nn.Module,
    pp_mesh: DeviceMesh,
    bounds: list[tuple[int, int]],
    device: torch.device,
    parallelize_stage: Callable[[nn.Module], nn.Module],
) -> Pipeline:
    """Keep this rank's stages of `model`, transform each with `parallelize_stage`, wrap
    each in a PipelineStage.

    Args:
        model: a model made of blocks (strategies/blocks.py), whole, with its initial weights.
        pp_mesh: the 1-D "pp" mesh this rank's pipeline runs over.
        bounds: [start, stop) blocks of every stage; len(bounds) is a multiple of pp_mesh.size().
        device: where the stages run.
        parallelize_stage: the other strategies' transform (tensor, then data parallel).
    """
    blocks, shared = named_blocks(model), shared_modules(model)
    no_split = getattr(model, "_no_split_modules", None)
    pp, pp_rank = pp_mesh.size(), pp_mesh.get_local_rank()
    group = pp_mesh.get_group()
    stage_ids = [s for s in range(len(bounds)) if s % pp == pp_rank]
    modules, stages = [], []
    for stage_id in stage_ids:
        start, stop = bounds[stage_id]
        module = StageModule(blocks[start:stop], shared, no_split).to(device)
        module = parallelize_stage(module)
        modules.append(module)
        stages.append(TimedStage(module, stage_id, len(bounds), device, group=group))
    return Pipeline(stage_ids, modules, stages, list(bounds), group, pp_rank, pp)


def build_schedule(name: str, pipeline: Pipeline, microbatches: int, loss_fn: Callable):
    """The schedule object for this rank's stages.

    Gradients are not rescaled by the schedule (scale_grads=False): `loss_fn` already divides
    each micro-batch's mean loss by the number of micro-batches, so the gradients add up to
    those of the whole batch's mean, as in the sequential run, also across the training
    loop's own gradient accumulation (which a rescale after every step would shrink again).
    """
    if name == "interleaved_1f1b":
        return ScheduleInterleaved1F1B(pipeline.stages, microbatches, loss_fn=loss_fn, scale_grads=False)
    (stage,) = pipeline.stages
    schedule = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[name]
    return schedule(stage, microbatches, loss_fn=loss_fn, scale_grads=False)


@torch.no_grad()
def pipeline_forward(pipeline: Pipeline, inputs: torch.Tensor) -> torch.Tensor | None:
    """Forward one batch through all stages without a schedule (for evaluation, whose
    batches may be any size). Returns the output on the rank holding the last stage."""
    x = inputs
    for stage_id, module in zip(pipeline.stage_ids, pipeline.modules):
        if stage_id > 0 and pipeline.owner(stage_id - 1) != pipeline.pp_rank:
            x = _receive(pipeline, pipeline.owner(stage_id - 1), inputs.device)
        x = module(x)
        if stage_id < pipeline.n_stages - 1 and pipeline.owner(stage_id + 1) != pipeline.pp_rank:
            _send(pipeline, x, pipeline.owner(stage_id + 1))
    return x if pipeline.is_last else None


def _send(pipeline: Pipeline, tensor: torch.Tensor, peer: int) -> None:
    header = [(tuple(tensor.shape), tensor.dtype)]
    dist.send_object_list(header, group=pipeline.group, group_dst=peer, device=tensor.device)
    dist.send(tensor.contiguous(), group=pipeline.group, group_dst=peer)


def _receive(pipeline: Pipeline, peer: int, device: torch.device) -> torch.Tensor:
    header: list = [None]
    dist.recv_object_list(header, group=pipeline.group, group_src=peer, device=device)
    shape, dtype = header[0]
    tensor = torch.empty(shape, dtype=dtype, device=device)
    dist.recv(tensor, group=pipeline.group, group_src=peer)
    return tensor


def theoretical_bubble(pp: int, microbatches: int, stages_per_worker: int = 1) -> float:
    """Idle share of each stage with equal stage times: (p-1)/(m+p-1) for GPipe and 1F1B,
    (p-1)/(v*m+p-1) with v stages per worker interleaved."""
    return (pp - 1) / (stages_per_worker * microbatches + pp - 1)
