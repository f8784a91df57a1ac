"""The sequential reference: the job's first steps as one plain process.

It is the training loop itself under the `sequential` strategy: the same sampler,
micro-batches, accumulation and optimizer, on the whole model, with no process
group. It writes `metrics.jsonl` and `model.safetensors` like any run.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from orchestrator.config.spec import JobSpec
from orchestrator.data.pipeline import PreparedData
from orchestrator.training.context import WorkerContext, configure_runtime
from orchestrator.training.loop import train


def run_reference(spec: JobSpec, data: PreparedData, run_dir: Path, threads: int | None = None,
                  device: torch.device = torch.device("cpu")) -> None:
    """Train `spec` (a `sequential` spec, see layouts.reference_spec) into `run_dir`;
    `threads` sets up this process for it (a worker process is set up already)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if threads is not None:
        configure_runtime(spec, threads)
    worker = WorkerContext(spec=spec, run_dir=run_dir, data=data, rank=0, world_size=1, device=device)
    with warnings.catch_warnings():
        # The final checkpoint is saved by one process on purpose; DCP warns that it is.
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        train(worker)
