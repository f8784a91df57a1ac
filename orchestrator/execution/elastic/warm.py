"""The group's workers lent, before training, to short jobs of their own.

`launch` checks the job's layout against a sequential reference on the very workers
it then trains on: their processes, imports and data are warm by then, so the check
costs its few steps and not another start-up.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from orchestrator.config.spec import JobSpec
from orchestrator.errors import ResourceError, TrainingError
from orchestrator.execution.elastic.group import RayWorkerGroup
from orchestrator.execution.resources import CPUS_KEPT_FOR_DATA, WorkerResources

# The owner the lent attempts carry: they train in a directory of their own, where no
# driver writes directives, so it only labels them in the workers' logs.
LENT_OWNER = "launch-check"


class WarmWorkers:
    """Runs trimmed jobs on `group`'s ready workers, alone or together."""

    def __init__(self, group: RayWorkerGroup, want: int, best: Callable[[int], int | None],
                 startup_timeout_s: float, poll_interval_s: float = 0.25, spares: int = 0) -> None:
        self.group = group
        self.want = want  # the workers training starts with
        self.spares = spares  # started with them, not waited for
        self.best = best  # ready workers -> the world size training would start with
        self.startup_timeout_s = startup_timeout_s
        self.poll_interval_s = poll_interval_s

    def world_size(self) -> int:
        """Wait (up to the start-up timeout) for the workers training wants; the size
        training would start with on those that came.

        Raises:
            ResourceError: too few workers came for any size the job allows.
        """
        deadline = time.monotonic() + self.startup_timeout_s
        self.group.spawn_up_to(self.want + self.spares)
        # As the controller does: workers starting are waited for, capacity not there
        # yet (an autoscaler's nodes) only until the job's minimum is ready.
        while (self.group.refresh(wait_s=self.poll_interval_s) < self.want and time.monotonic() < deadline
               and (self.group.starting_count() or self.best(self.group.ready_count()) is None)):
            self.group.spawn_up_to(self.want + self.spares)
        size = self.best(self.group.ready_count())
        if size is None:
            raise ResourceError(f"only {self.group.ready_count()} workers could be started for the launch check")
        return size

    def memory_bytes(self) -> dict[str, int]:
        """Memory the first ready worker could give a job run on it alone: on its device
        and in host memory (TrainWorker.memory_bytes)."""
        import ray

        return ray.get(self.group.members[0].actor.memory_bytes.remote())

    def run_alone(self, spec: JobSpec, run_dir: Path, on_host: bool = False) -> None:
        """Train `spec` on the first ready worker, with no process group (in host memory
        rather than on its GPU, `on_host`)."""
        import ray

        worker = self.group.members[0].actor
        ray.get(worker.run_alone.remote(spec, str(run_dir), self.group.data_holder, on_host))

    def run_together(self, spec: JobSpec, run_dir: Path, world_size: int) -> None:
        """Train `spec` on `world_size` workers as one attempt; the workers are ready for
        the next job afterwards, whatever happened.

        Raises:
            TrainingError: the attempt failed (its diagnosis).
        """
        run_dir.mkdir(parents=True, exist_ok=True)
        self.group.start(world_size, attempt=1, failure=None, owner=LENT_OWNER, job=(spec, str(run_dir)))
        status = self.group.poll(self.poll_interval_s)
        while status.running:
            status = self.group.poll(self.poll_interval_s)
        if status.failure is not None:
            self.group.recover(drain_timeout_s=10.0)
            raise TrainingError(status.failure.text())
        self.group.futures = []


def lend_fresh_workers(spec: JobSpec, run_dir: Path, data_ref: Any, resources: WorkerResources,
                       use: Callable[[WarmWorkers], None], startup_timeout_s: float = 120.0) -> None:
    """For a backend that starts its own workers later (Ray Train): a group started
    for `use` alone, and shut down after it."""
    group = RayWorkerGroup(spec, str(run_dir), resources.ray_resources(),
                           resources.threads_per_worker, reserved_cpus=CPUS_KEPT_FOR_DATA)
    group.provide_data(data_ref)
    workers = resources.workers
    try:
        use(WarmWorkers(group, workers, lambda ready: workers if ready >= workers else None, startup_timeout_s))
    finally:
        group.shutdown()
