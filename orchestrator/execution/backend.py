"""The one interface both ways of running workers implement, and the one place that picks.

    elastic    our controller holds the worker actors: fast recovery, resizes, scale/stop
    ray_train  Ray Train's TorchTrainer: it restarts the whole group on a failure

Nothing outside `backend_for` branches on `scaling.backend`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

from orchestrator.config.spec import JobSpec
from orchestrator.execution.resources import WorkerResources


class Backend(Protocol):
    #: whether a running job takes `orchestrator scale` and `stop`
    controllable: bool

    def spares(self, spec: JobSpec) -> int:
        """Standby workers this backend keeps beside the job's own."""
        ...

    def start_workers(self, spec: JobSpec, run_dir: Path, resources: WorkerResources) -> Any:
        """Start what can start before the data is prepared; the handle goes to `run`
        (None: nothing to start early). Shut down with `.shutdown()`."""
        ...

    def run(self, spec: JobSpec, run_dir: Path, data_ref: Any, resources: WorkerResources,
            before_training: Callable[[Any], None] | None = None, workers: Any = None) -> str:
        """Train to the end; return the final state ("finished" or "stopped").
        `before_training(workers)` is given the started workers (an
        `elastic.warm.WarmWorkers`) first: the launch check runs there. `workers`: what
        `start_workers` started.

        Raises:
            TrainingError: when training failed and could not be recovered.
        """
        ...


def backend_for(name: str) -> Backend:
    from orchestrator.execution.elastic.backend import ElasticBackend
    from orchestrator.execution.ray_train import RayTrainBackend

    backends: dict[str, Backend] = {"elastic": ElasticBackend(), "ray_train": RayTrainBackend()}
    return backends[name]
