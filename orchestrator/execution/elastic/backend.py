"""The `elastic` backend: our controller over worker actors we hold ourselves."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from orchestrator.config.spec import JobSpec
from orchestrator.errors import TrainingError
from orchestrator.execution.resources import CPUS_KEPT_FOR_DATA, WorkerResources


class ElasticBackend:
    controllable = True

    def spares(self, spec: JobSpec) -> int:
        return spec.scaling.spares

    def start_workers(self, spec: JobSpec, run_dir: Path, resources: WorkerResources):
        """Start the worker actors, spares included, before the data is prepared: their
        start (a process, Ray, torch) overlaps the preparation, and the spares are warm
        when the first attempt starts. Returns the group."""
        from orchestrator.execution.elastic.group import RayWorkerGroup

        group = RayWorkerGroup(spec, str(run_dir), resources.ray_resources(),
                               resources.threads_per_worker, reserved_cpus=CPUS_KEPT_FOR_DATA)
        group.spawn_up_to(spec.scaling.max_workers + _early_spares(spec, resources))
        return group

    def run(self, spec: JobSpec, run_dir: Path, data_ref: Any, resources: WorkerResources,
            before_training: Callable[[Any], None] | None = None, workers=None) -> str:
        from orchestrator.execution.elastic.controller import ElasticController, State, Timings
        from orchestrator.execution.elastic.policies import FailurePolicy, ScalingPolicy
        from orchestrator.execution.elastic.warm import WarmWorkers
        from orchestrator.planning.layout import batch_fits

        scaling = spec.scaling
        group = workers if workers is not None else self.start_workers(spec, run_dir, resources)
        group.provide_data(data_ref)
        controller = ElasticController(
            group,
            run_dir,
            FailurePolicy(spec.failure.max_failures),
            ScalingPolicy(scaling.min_workers, scaling.max_workers, lambda n: batch_fits(spec, n)),
            spares=scaling.spares,
            timings=Timings(replace_timeout_s=spec.failure.replace_timeout_s),
            early_spares=_early_spares(spec, resources),
        )
        if before_training is not None:
            warm = WarmWorkers(group, scaling.max_workers, lambda ready: controller.scaling.best(ready, None),
                               controller.timings.startup_timeout_s, spares=controller.early_spares)
            try:
                before_training(warm)
            except BaseException:
                group.shutdown()
                raise
        state = controller.run()
        if state == State.ERRORED:
            raise TrainingError(controller.error or "the elastic controller gave up")
        return state.value


def _early_spares(spec: JobSpec, resources: WorkerResources) -> int:
    """The spares started with the workers. Workers that share cores (a fraction of a CPU
    each: a small machine) start their spares once the first attempt runs instead: a
    spare importing torch beside them slowed the start of the workers the attempt waits
    for (benchmarks/results/startup.md)."""
    return spec.scaling.spares if resources.cpus_per_worker >= 1 else 0
