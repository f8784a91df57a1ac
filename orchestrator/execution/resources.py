"""Sizing the workers to the cluster, keeping CPUs free for Ray Data."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from orchestrator.config.spec import JobSpec
from orchestrator.errors import ResourceError

# Ray Data's read and transform tasks need CPUs of their own while workers hold
# theirs: with every CPU reserved by workers they wait forever, silently.
CPUS_KEPT_FOR_DATA = 1.0
MIN_CPUS_PER_WORKER = 0.05


@dataclass(frozen=True)
class WorkerResources:
    workers: int | tuple[int, int]
    cpus_per_worker: float
    threads_per_worker: int
    use_gpu: bool

    extra: dict[str, float] = field(default_factory=dict)

    def ray_resources(self) -> dict[str, float]:
        resources = {"CPU": self.cpus_per_worker, **self.extra}
        if self.use_gpu:
            resources["GPU"] = 1.0
        return resources


def size_workers(spec: JobSpec, cluster: dict[str, float], spares: int, can_grow: bool = False) -> WorkerResources:
    """Fit the workers (and `spares` standby workers) into the cluster. A cluster that
    `can_grow` (it has an autoscaler) is asked for them instead (elastic/demand.py):
    each worker gets `scaling.cpus_per_worker`, one CPU when unset.

    Raises:
        ResourceError: naming the scaling key to change.
    """
    scaling = spec.scaling
    count = scaling.max_workers + spares
    cpus = cluster.get("CPU", 0.0)
    if can_grow:
        per_worker = scaling.cpus_per_worker or 1.0
    else:
        if scaling.use_gpu and cluster.get("GPU", 0.0) < scaling.min_workers:
            raise ResourceError(
                f"scaling.use_gpu: the job needs {scaling.min_workers} GPUs (one per worker) and the "
                f"cluster has {int(cluster.get('GPU', 0))}; lower scaling.workers or set use_gpu: false"
            )
        spare = cpus - CPUS_KEPT_FOR_DATA
        per_worker = scaling.cpus_per_worker or min(1.0, math.floor(spare / count * 100) / 100)
        if per_worker < MIN_CPUS_PER_WORKER or per_worker * (scaling.min_workers + spares) > spare:
            raise ResourceError(
                f"scaling: {scaling.min_workers} workers (+{spares} spares) x {per_worker:g} CPUs do not fit in "
                f"the cluster's {cpus:g} CPUs while keeping {CPUS_KEPT_FOR_DATA:g} for data loading; "
                "lower scaling.workers or scaling.cpus_per_worker, or add nodes"
            )
    workers = scaling.workers if isinstance(scaling.workers, int) else tuple(scaling.workers)
    return WorkerResources(
        workers=workers,
        cpus_per_worker=per_worker,
        threads_per_worker=worker_threads(spec, scaling.max_workers),
        use_gpu=scaling.use_gpu,
        extra=dict(scaling.worker_resources),
    )


def worker_threads(spec: JobSpec, workers: int) -> int:
    """Torch threads of each of `workers` workers: `scaling.threads_per_worker`, or this
    node's cores shared among them."""
    return spec.scaling.threads_per_worker or max(1, (os.cpu_count() or 1) // workers)
