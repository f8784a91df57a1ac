"""`orchestrator plan`: the layout, batch arithmetic and memory of a job, as text."""
from __future__ import annotations

import dataclasses

import torch

import strategies
from orchestrator.config.spec import JobSpec
from orchestrator.data.estimate import estimate_data
from orchestrator.data.order import streams_per_rank
from orchestrator.data.model_arguments import example_input, model_arguments
from orchestrator.planning.layout import batch_layout
from orchestrator.planning.memory import MemoryEstimate, estimate_memory, human_bytes
from orchestrator.training.model import build_job_model


def render_plan(spec: JobSpec, workers: int) -> str:
    """Raises ValueError (naming the key) when the job cannot run at `workers`."""
    layout = batch_layout(spec, workers)
    dims = layout.dims
    arguments = model_arguments(spec)
    with torch.device("meta"):  # shapes only: plan never allocates the model
        model = build_job_model(spec, arguments)
    memory = estimate_memory(
        model, spec, example_input(spec, arguments, layout.micro_batch), dp=dims.dp
    )
    n_params = sum(p.numel() for p in model.parameters())
    # The blocks a pipeline would cut: the model's own list of them, else its layers.
    n_blocks = len(getattr(model, "pipeline_blocks", None) or getattr(model, "layers", []))
    lines = [
        f"job {spec.name}: model {spec.model.name} ({n_params:,} parameters, {n_blocks} blocks), "
        f"data {spec.data.source}, strategy {spec.strategy.name}",
        f"mesh: {workers} workers = data {dims.dp} x tensor {dims.tp} x pipeline {dims.pp}",
        f"batch: global {layout.global_batch} = data-parallel ranks {dims.dp} x micro-batch "
        f"{layout.micro_batch} x accumulation {layout.accumulation}",
    ]
    describe = strategies.get_strategy(spec.strategy.name).describe
    if describe is None:
        lines += [
            "memory per worker (estimate):",
            f"  parameters   {human_bytes(memory.params)}{_where(memory, 'params', dims.dp)}",
            f"  gradients    {human_bytes(memory.grads)}{_where(memory, 'grads', dims.dp)}",
            f"  optimizer    {human_bytes(memory.optimizer)}  ({spec.optimizer.name})"
            f"{_where(memory, 'optimizer', dims.dp)}",
            f"  activations  {human_bytes(memory.activations)}  (one micro-batch of {layout.micro_batch})",
            f"  total        {human_bytes(memory.total)}"
            + ("  (on the device; offloaded parts excluded)" if memory.offloaded else ""),
        ]
    else:
        view = describe(spec.strategy, model, dims)
        lines += view.lines
        lines.append(
            f"memory per worker (estimate; {spec.optimizer.name}; activations of the whole model for "
            f"one micro-batch of {layout.micro_batch}: {human_bytes(memory.activations)}, kept for backward):"
        )
        for worker, held in view.worker_params.items():
            share = _share(memory, held, n_params)
            lines.append(
                f"  {worker:<16} {held:>12,} parameters: params {human_bytes(share.params)}, grads "
                f"{human_bytes(share.grads)}, optimizer {human_bytes(share.optimizer)}, "
                f"total {human_bytes(share.params + share.grads + share.optimizer)}"
            )
    if dims.tp > 1 or dims.pp > 1:
        lines.append(_placement_line(spec, dims))
    lines += _data_lines(spec, arguments, dims.dp)
    if spec.scaling.min_workers != spec.scaling.max_workers:
        accum = {
            n: batch_layout(spec, n).accumulation
            for n in range(spec.scaling.min_workers, spec.scaling.max_workers + 1)
        }
        lines.append("elastic range: " + ", ".join(f"{n} workers -> accumulation {a}" for n, a in accum.items()))
    return "\n".join(lines)


def _placement_line(spec: JobSpec, dims) -> str:
    group = dims.tp * dims.pp
    return (f"placement: {spec.scaling.placement}; ranks on one node are adjacent, so a node with {dims.tp} "
            f"worker slots keeps a tensor group's collectives inside it ({group} slots: a whole pipeline of "
            f"{dims.pp} stage(s) x tensor {dims.tp})")


def _data_lines(spec: JobSpec, arguments: dict, dp_size: int) -> list[str]:
    data = estimate_data(spec, arguments)
    rows = "rows unknown until read" if data.rows is None else f"{data.rows:,} rows"
    prepared = "" if data.prepared_bytes is None else f", prepared {human_bytes(data.prepared_bytes)}"
    files = "" if data.source_bytes is None else f" from {human_bytes(data.source_bytes)} of files"
    line = f"data: {rows}{files}{prepared} ({human_bytes(data.row_bytes)} a row)"
    if not data.streamed:
        return [line, f"  held in memory: the prepared splits, once per node ({human_bytes(data.per_worker_bytes(dp_size) or 0)})"]
    streams, shards = streams_per_rank(data.streams, dp_size), data.held_shards(dp_size)
    windows = shards * data.shard_bytes
    held = (f"{human_bytes(windows)} ({shards} shards: two windows of data.shuffle_window {data.window} "
            f"from each of its {streams} of data.streams {data.streams}, and one being read)")
    if data.prepared_bytes is not None and data.prepared_bytes <= windows:
        held = f"all of it, {human_bytes(data.prepared_bytes)}"
    elif data.prepared_bytes is None and data.source_bytes is not None and data.source_bytes < windows:
        held = f"all of it, its files being {human_bytes(data.source_bytes)}"
    lines = [line, f"  streamed from shards of {human_bytes(data.shard_bytes)}: each worker holds at most {held}"]
    if data.streams % dp_size:
        suggest = -(-data.streams // dp_size) * dp_size
        lines.append(f"  note: data.streams {data.streams} is not a multiple of the {dp_size} data-parallel ranks, so "
                     f"ranks share streams: a rank reads {streams} streams' shards for {data.streams / dp_size:.3g} "
                     f"streams' rows (data.streams: {suggest} reads each shard once an epoch)")
    return lines


def _share(memory: MemoryEstimate, held: int, n_params: int) -> MemoryEstimate:
    """The estimate for a worker holding `held` of the model's `n_params` parameters
    (parameter, gradient and optimizer bytes scale with the parameters held)."""
    return dataclasses.replace(
        memory,
        params=memory.params * held // n_params,
        grads=memory.grads * held // n_params,
        optimizer=memory.optimizer * held // n_params,
    )


def _where(memory, part: str, dp: int) -> str:
    notes = []
    if part in memory.sharded:
        notes.append(f"1/{dp}, sharded over {dp} data-parallel ranks")
    if part in memory.offloaded:
        notes.append("in host memory")
    return f"  ({'; '.join(notes)})" if notes else ""
