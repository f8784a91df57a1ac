"""What one step's collectives moved: every all-reduce, reduce-scatter, all-gather,
broadcast, send and receive the step issued, read from PyTorch's profiler (gloo and
NCCL both record each call with its tensor's shape and dtype).

`train.profile_step: N` profiles step N on every rank; each rank's totals go into its
usage.jsonl record (`comm`). The time is the collectives' own, on the threads that run
them: it includes waiting for the slowest rank, so bytes / time is a lower bound on the
bandwidth achieved.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

BACKENDS = ("gloo:", "nccl:")
ELEMENT_BYTES = {"float": 4, "double": 8, "c10::Half": 2, "c10::BFloat16": 2, "long int": 8, "int": 4,
                 "unsigned char": 1, "signed char": 1, "bool": 1, "short int": 2}


class CommProfile:
    """Profiles the steps run inside `step()` while `active`; `summary` says what moved."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.summary: dict[str, Any] | None = None

    @contextlib.contextmanager
    def step(self, active: bool) -> Iterator[None]:
        if not active:
            yield
            return
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        with profile(activities=activities, record_shapes=True) as profiler:
            yield
        self.summary = summarize_collectives(profiler.events())


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
