"""The `ray_train` backend: Ray Train's TorchTrainer runs the loop on its worker group.

Ray Train sets up torch.distributed and restarts the whole group after a failure,
up to `failure.max_failures`; each restart resumes from the newest valid checkpoint.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from orchestrator.config.spec import JobSpec
from orchestrator.errors import TrainingError
from orchestrator.execution.failures import AttemptFailed, diagnose, report_exception
from orchestrator.execution.resources import WorkerResources
from orchestrator.run.files import RunFiles
from orchestrator.run.storage import run_path


class RayTrainBackend:
    controllable = False

    def spares(self, spec: JobSpec) -> int:
        return 0  # Ray Train starts a whole new group; standby workers have no use

    def start_workers(self, spec: JobSpec, run_dir: Path, resources: WorkerResources) -> None:
        return None  # TorchTrainer starts its own worker group inside `run`

    def run(self, spec: JobSpec, run_dir: Path, data_ref: Any, resources: WorkerResources,
            before_training: Callable[[Any], None] | None = None, workers=None) -> str:
        from ray.train import FailureConfig, RunConfig, ScalingConfig, WorkerGroupError
        from ray.train.torch import TorchConfig, TorchTrainer

        from orchestrator.execution.elastic.warm import lend_fresh_workers

        if before_training is not None:  # Ray Train's own workers do not exist yet
            lend_fresh_workers(spec, run_dir, data_ref, resources, before_training)

        trainer = TorchTrainer(
            train_worker,
            torch_config=TorchConfig(timeout_s=math.ceil(spec.failure.collective_timeout_s)),
            train_loop_config={
                "spec": spec,
                "run_dir": str(run_dir),
                "data_ref": data_ref,
                "threads_per_worker": resources.threads_per_worker,
            },
            scaling_config=ScalingConfig(
                num_workers=resources.workers,
                use_gpu=resources.use_gpu,
                resources_per_worker=resources.ray_resources(),
            ),
            run_config=RunConfig(
                storage_path=str(RunFiles(run_dir).ray_storage),
                name="train",
                failure_config=FailureConfig(max_failures=spec.failure.max_failures),
            ),
        )
        try:
            result = trainer.fit()
        except WorkerGroupError as error:  # once failure.max_failures restarts are spent
            failed = [e for _, e in sorted(error.worker_failures.items()) if isinstance(e, AttemptFailed)]
            if not failed:
                raise
            raise TrainingError(diagnose([e.report for e in failed], stuck={}).text()) from error
        if result.error is not None:
            raise result.error
        return "finished"


def train_worker(config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`: Ray has set up torch.distributed already."""
    import ray
    import ray.train
    import torch

    from orchestrator.training.context import WorkerContext, configure_runtime
    from orchestrator.training.loop import train

    ctx = ray.train.get_context()
    spec: JobSpec = config["spec"]
    device = ray.train.torch.get_device() if spec.scaling.use_gpu else torch.device("cpu")
    worker = WorkerContext(
        spec=spec,
        run_dir=run_path(config["run_dir"]),
        data=ray.get(config["data_ref"]),
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        device=device,
    )
    configure_runtime(spec, config.get("threads_per_worker", 1))
    try:
        train(worker)
    except Exception as error:
        report = report_exception(error, worker.rank, worker.step)
        _record_failure(worker, report, spec.failure.max_failures)
        raise AttemptFailed(report) from error


def _record_failure(worker, report, max_failures: int) -> None:
    """Ray Train restarts the group on its own; what failed goes to events.jsonl from the
    ranks that saw it (the summary keeps one per attempt), as the elastic controller's
    failure events do. A rank killed outright writes nothing; its peers report it."""
    from orchestrator.run.records import EventLog, RunRecords

    attempt = max(1, sum(e["event"] == "started" for e in RunRecords(worker.run_dir).events()))
    decision = ("failure.max_failures reached: the run fails" if attempt > max_failures
                else "Ray Train restarts the worker group from the newest checkpoint")
    EventLog(worker.run_dir).write("failure", attempt=attempt, decision=decision, error=report.text(),
                                   **report.to_dict())
