"""The sequential reference: the job's first steps as one plain process.

It is the training loop itself under the `sequential` strategy: the same sampler,
micro-batches, accumulation and optimizer, on the whole model, with no process
group. It writes `metrics.jsonl` and `model.safetensors` like any run.
"""
from __future__ import annotations

from pathlib import Path

import torch

from orchestrator.config.spec import JobSpec
from orchestrator.data.pipeline import PreparedData
from orchestrator.training.context import WorkerContext, configure_runtime
from orchestrator.training.loop import train


def run_reference(spec: JobSpec, data: PreparedData, run_dir: Path, threads: int = 1) -> None:
    """Train `spec` (a `sequential` spec, see layouts.reference_spec) into `run_dir`."""
    run_dir.mkdir(parents=True, exist_ok=True)
    configure_runtime(spec, threads)
    worker = WorkerContext(spec=spec, run_dir=run_dir, data=data, rank=0, world_size=1, device=torch.device("cpu"))
    train(worker)
