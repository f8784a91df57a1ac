"""What one step's collectives moved and how much of their time the step waited for,
read from PyTorch's profiler.

Moved: every all-reduce, reduce-scatter, all-gather, broadcast, send and receive the
step issued (gloo and NCCL both record each call with its tensor's shape and dtype). The
time is the collectives' own, on the threads or streams that run them: it includes
waiting for the slowest rank, so bytes / time is a lower bound on the bandwidth achieved.

Waited for (exposed): the time a collective was running while the step computed nothing,
per phase of the step (orchestrator/training/phases.py marks where each ends). On a CPU,
"computing" is the training thread being inside an ATen operator, so the training thread
waiting on a collective (DDP's last buckets at the end of backward, FSDP's gathers) is
exposed, and an all-reduce running while backward goes on is hidden. On a GPU it is the
same between the NCCL kernels and the other kernels.
"""
from __future__ import annotations

from typing import Any, Iterable

from torch.autograd import DeviceType

from orchestrator.training.phases import MARK

BACKENDS = ("gloo:", "nccl:")
ELEMENT_BYTES = {"float": 4, "double": 8, "c10::Half": 2, "c10::BFloat16": 2, "long int": 8, "int": 4,
                 "unsigned char": 1, "signed char": 1, "bool": 1, "short int": 2}


def summarize_collectives(events) -> dict[str, Any]:
    """Calls, elements, bytes and seconds per collective, and their totals."""
    by_op: dict[str, dict[str, float]] = {}
    for event in events:
        if not event.name.startswith(BACKENDS):
            continue
        op = event.name.split(":", 1)[1]
        elements = sum(_numel(shape) for shape in event.input_shapes)
        size = ELEMENT_BYTES.get((event.input_dtypes or ["float"])[0], 4)
        entry = by_op.setdefault(op, {"calls": 0, "bytes": 0, "seconds": 0.0})
        entry["calls"] += 1
        entry["bytes"] += elements * size
        entry["seconds"] += event.cpu_time_total / 1e6
    return {"ops": by_op, "bytes": sum(e["bytes"] for e in by_op.values()),
            "seconds": round(sum(e["seconds"] for e in by_op.values()), 6)}


def _numel(shape) -> int:
    count = 1
    for size in shape:
        count *= size
    return count if shape else 0


def exposed_communication(events) -> dict[str, dict[str, float]]:
    """Per phase of the step (by its metrics name, e.g. `step_backward_s`): `exposed_s`,
    the seconds a collective ran while nothing was computed, and `phase_s`, how long the
    phase took in this (profiled, so slower) step. On a GPU the host runs ahead of the
    kernels, so the phases' ends say nothing about them: there is one phase, `step`, from
    the first kernel to the last."""
    kernels = [e for e in events if e.device_type == DeviceType.CUDA]
    if kernels:
        comm = _union(_span(e) for e in kernels if "nccl" in e.name.lower())
        busy = _union(_span(e) for e in kernels if "nccl" not in e.name.lower())
        whole = _union(_span(e) for e in kernels)
        return {"exposed_s": {"step": round(_length(_subtract(comm, busy)) / 1e6, 6)},
                "phase_s": {"step": round((whole[-1][1] - whole[0][0]) / 1e6, 6)}}
    marks = sorted((e for e in events if e.name.startswith(MARK)), key=lambda e: e.time_range.start)
    if len(marks) < 2:
        return {"exposed_s": {}, "phase_s": {}}
    thread = marks[0].thread
    comm = _union(_span(e) for e in events if e.name.startswith(BACKENDS))
    # Computing is being inside an operator: the ranges strategies wrap around their hooks
    # (FSDP's pre-forward, DDP's reducer) also hold their waits.
    busy = _union(_span(e) for e in events if e.thread == thread and e.name.startswith("aten::"))
    waited = _subtract(comm, busy)
    exposed: dict[str, float] = {}
    took: dict[str, float] = {}
    for begin, end in zip(marks, marks[1:]):
        phase = end.name[len(MARK):]
        window = [(begin.time_range.start, end.time_range.start)]
        exposed[phase] = exposed.get(phase, 0.0) + _length(_intersect(waited, window)) / 1e6
        took[phase] = took.get(phase, 0.0) + _length(window) / 1e6
    return {"exposed_s": {phase: round(seconds, 6) for phase, seconds in exposed.items()},
            "phase_s": {phase: round(seconds, 6) for phase, seconds in took.items()}}


# ---- intervals (microseconds): sorted, disjoint lists of (start, end) ----------------------
Intervals = list[tuple[float, float]]


def _span(event) -> tuple[float, float]:
    return event.time_range.start, event.time_range.end


def _union(spans: Iterable[tuple[float, float]]) -> Intervals:
    merged: Intervals = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        elif end > start:
            merged.append((start, end))
    return merged


def _intersect(a: Intervals, b: Intervals) -> Intervals:
    found, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start < end:
            found.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return found


def _subtract(a: Intervals, b: Intervals) -> Intervals:
    """The parts of `a` outside `b`."""
    found: Intervals = []
    for start, end in a:
        for cut_start, cut_end in b:
            if cut_end <= start or cut_start >= end:
                continue
            if cut_start > start:
                found.append((start, cut_start))
            start = max(start, cut_end)
        if start < end:
            found.append((start, end))
    return found


def _length(spans: Intervals) -> float:
    return sum(end - start for start, end in spans)
