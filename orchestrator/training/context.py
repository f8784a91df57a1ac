"""What one worker knows about its attempt, and the process settings it trains under."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orchestrator.config.spec import JobSpec
from orchestrator.data.pipeline import PreparedData
from orchestrator.training.allocator import keep_freed_memory


@dataclass
class WorkerContext:
    spec: JobSpec
    run_dir: Path
    data: PreparedData
    rank: int
    world_size: int
    device: torch.device
    attempt: int = 0
    # The failure this attempt recovers from, as the controller saw it; attached to
    # the first step record so metrics.jsonl shows detection, recovery and redone steps.
    failure: dict[str, Any] | None = None
    owner: str | None = None  # the driver this attempt belongs to (elastic backend)
    driver: tuple[str, int] | None = None  # (node id, pid) of that driver
    # The step this rank is on (the one in progress), kept by the loop; a failure is
    # reported with it, and the same error at the same step twice is not retried.
    step: int = 0


def configure_runtime(spec: JobSpec, threads: int) -> None:
    """Thread count, subnormal floats, malloc and determinism for this worker process; once
    per process."""
    torch.set_num_threads(max(1, threads))
    torch.set_flush_denormal(spec.train.flush_denormal)
    if not spec.scaling.use_gpu:  # where the step's tensors live in host memory
        keep_freed_memory()
    if spec.train.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
