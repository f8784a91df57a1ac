"""Driver side of a run: Ray up, data prepared, workers sized and started, results collected.

With no cluster address an embedded Ray is started, sized to this machine, and
shut down at the end; with `--address` (or RAY_ADDRESS) the run joins that cluster.

Exercised by: orchestrator launch examples/quickstart.yaml
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from orchestrator.errors import ResourceError, TrainingError
from orchestrator.metrics import EVENTS_FILE, METRICS_FILE, count_restarts, latest_per_step, read_jsonl
from orchestrator.progress import ProgressReporter
from orchestrator.spec import JobSpec, dump_spec

log = logging.getLogger(__name__)

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


def default_run_dir(spec: JobSpec) -> Path:
    return Path("runs") / f"{spec.name}-{datetime.now():%Y%m%d-%H%M%S}"


def size_workers(spec: JobSpec, cluster: dict[str, float]) -> WorkerResources:
    """Fit the workers into the cluster, keeping CPUs free for Ray Data.

    Raises:
        ResourceError: naming the scaling key to change.
    """
    scaling = spec.scaling
    spares = scaling.spares if scaling.backend == "elastic" else 0
    count = scaling.max_workers + spares
    cpus = cluster.get("CPU", 0.0)
    if scaling.use_gpu and cluster.get("GPU", 0.0) < scaling.min_workers:
        raise ResourceError(
            f"scaling.use_gpu: the job needs {scaling.min_workers} GPUs (one per worker) and the "
            f"cluster has {int(cluster.get('GPU', 0))}; lower scaling.workers or set use_gpu: false"
        )
    spare = cpus - CPUS_KEPT_FOR_DATA
    per_worker = scaling.cpus_per_worker or min(1.0, math.floor(spare / count * 100) / 100)
    if per_worker < MIN_CPUS_PER_WORKER or per_worker * (scaling.min_workers + spares) > spare:
        raise ResourceError(
            f"scaling: {scaling.min_workers} workers (+{spares} spares) x {per_worker:g} CPUs do not fit in the "
            f"cluster's {cpus:g} CPUs while keeping {CPUS_KEPT_FOR_DATA:g} for data loading; "
            "lower scaling.workers or scaling.cpus_per_worker, or add nodes"
        )
    physical = os.cpu_count() or 1
    workers = scaling.workers if isinstance(scaling.workers, int) else tuple(scaling.workers)
    return WorkerResources(
        workers=workers,
        cpus_per_worker=per_worker,
        threads_per_worker=max(1, physical // scaling.max_workers),
        use_gpu=scaling.use_gpu,
        extra=dict(scaling.worker_resources),
    )


class Launcher:
    """Runs one job to the end (or to a failure it cannot recover from)."""

    def __init__(self, spec: JobSpec, run_dir: Path, address: str | None = None) -> None:
        self.spec = spec
        self.run_dir = Path(run_dir).resolve()
        self.address = address or os.environ.get("RAY_ADDRESS")

    def run(self) -> dict:
        if self.address and self.address.startswith("ray://"):
            raise ResourceError(
                f"--address {self.address}: Ray Client addresses are not supported (Ray Data does "
                "not run over Ray Client); run the driver on a cluster node with --address HOST:6379 "
                "or --address auto"
            )
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "job.yaml").write_text(dump_spec(self.spec))
        (self.run_dir / "driver.pid").write_text(str(os.getpid()))
        (self.run_dir / "summary.json").unlink(missing_ok=True)  # a resumed run is running again
        started = time.time()
        _log_to_file(self.run_dir / "controller.log")
        _say(f"run directory: {self.run_dir}")
        embedded = self._start_ray()
        try:
            result_error = self._train()
        finally:
            if embedded:
                import ray

                ray.shutdown()
        summary = self._write_summary(time.time() - started, result_error)
        if result_error is not None:
            raise TrainingError(f"training failed: {result_error}") from result_error
        _say(f"{summary['status']}: {self.run_dir}")
        return summary

    # ---- steps ----------------------------------------------------------------------------
    def _start_ray(self) -> bool:
        import ray

        os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")
        # Progress comes from our own reporter; Ray's own INFO lines would drown it.
        for name in ("ray", "ray.data", "ray.train"):
            logging.getLogger(name).setLevel(logging.WARNING)
        if self.address:
            _say(f"joining Ray cluster at {self.address}")
            ray.init(address=self.address, log_to_driver=False, logging_level=logging.WARNING)
            return False
        # address="local": start a new Ray even when another one runs on this machine
        # (without it ray.init joins the newest local cluster it finds).
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        return True

    def _train(self) -> BaseException | None:
        import ray
        from ray.data import DataContext
        from orchestrator.data import prepare_data

        resources = size_workers(self.spec, ray.cluster_resources())
        context = DataContext.get_current()
        context.execution_options.preserve_order = True  # a reproducible row order
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        data = prepare_data(self.spec)
        _say(f"data: {data.describe()}")
        _say(
            f"workers: {resources.workers} x {resources.cpus_per_worker:g} CPU"
            + (" + 1 GPU" if resources.use_gpu else "")
            + f", strategy {self.spec.strategy.name}"
        )
        data_ref = ray.put(data)
        if self.spec.scaling.backend == "ray_train":
            run = lambda: self._fit_with_ray_train(data_ref, resources)  # noqa: E731
        else:
            run = lambda: self._run_elastic(data_ref, resources)  # noqa: E731
        outcome: dict = {"error": None, "state": "finished"}

        def target() -> None:
            try:
                outcome["state"] = run()
            except Exception as error:  # kept for the summary, raised by run()
                outcome["error"] = error

        thread = threading.Thread(target=target, name="training", daemon=True)
        thread.start()
        with ProgressReporter(self.run_dir, self.spec) as progress:
            while thread.is_alive():
                thread.join(timeout=0.5)
                progress.update()
            progress.update()
        self.final_state = outcome["state"]
        return outcome["error"]

    def _fit_with_ray_train(self, data_ref, resources: WorkerResources) -> str:
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        from orchestrator.train_loop import train_worker

        trainer = TorchTrainer(
            train_worker,
            train_loop_config={
                "spec": self.spec,
                "run_dir": str(self.run_dir),
                "data_ref": data_ref,
                "threads_per_worker": resources.threads_per_worker,
            },
            scaling_config=ScalingConfig(
                num_workers=resources.workers,
                use_gpu=resources.use_gpu,
                resources_per_worker=resources.ray_resources(),
            ),
            run_config=RunConfig(
                storage_path=str(self.run_dir / "ray"),
                name="train",
                failure_config=FailureConfig(max_failures=self.spec.failure.max_failures),
            ),
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        return "finished"

    def _run_elastic(self, data_ref, resources: WorkerResources) -> str:
        from orchestrator.elastic.controller import ElasticController, State
        from orchestrator.elastic.group import RayWorkerGroup
        from orchestrator.elastic.policies import FailurePolicy, ScalingPolicy
        from orchestrator.plan import batch_layout

        def batch_fits(workers: int) -> bool:
            try:
                batch_layout(self.spec, workers)
                return True
            except ValueError:
                return False

        scaling = self.spec.scaling
        group = RayWorkerGroup(
            self.spec, str(self.run_dir), data_ref, resources.ray_resources(),
            resources.threads_per_worker, reserved_cpus=CPUS_KEPT_FOR_DATA,
        )
        controller = ElasticController(
            group,
            self.run_dir,
            FailurePolicy(self.spec.failure.max_failures),
            ScalingPolicy(scaling.min_workers, scaling.max_workers, batch_fits),
            spares=scaling.spares,
            replace_timeout_s=self.spec.failure.replace_timeout_s,
        )
        state = controller.run()
        if state == State.ERRORED:
            raise TrainingError(controller.error or "the elastic controller gave up")
        return state.value

    def _write_summary(self, wall_time: float, error: BaseException | None) -> dict:
        summary = summarize(self.run_dir)
        status = "failed" if error else getattr(self, "final_state", "finished")
        summary.update({"wall_time_s": wall_time, "status": status, "time": time.time()})
        if error is not None:
            summary["error"] = str(error).splitlines()[0] if str(error) else type(error).__name__
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary


def summarize(run_dir: Path) -> dict:
    """Steps, final loss and validation metrics, restarts, from what the run wrote."""
    records = latest_per_step(list(read_jsonl(run_dir / METRICS_FILE)))
    events = list(read_jsonl(run_dir / EVENTS_FILE))
    failures = [dict(r["failure"], step=r["step"]) for r in records if "failure" in r]
    summary: dict = {
        "steps": records[-1]["step"] if records else 0,
        "final_loss": records[-1]["loss"] if records else None,
        "restarts": count_restarts(events),
        "failures": failures,
        "world_sizes": sorted({r["world_size"] for r in records}),
    }
    validation = [r for r in records if "val_loss" in r]
    if validation:
        summary["validation"] = {k: v for k, v in validation[-1].items() if k.startswith("val_")}
        summary["first_validation"] = {k: v for k, v in validation[0].items() if k.startswith("val_")}
    if (run_dir / "model.safetensors").is_file():
        summary["weights"] = "model.safetensors"
    return summary


def _log_to_file(path: Path) -> None:
    """The driver's own decisions (restarts, resizes) go to RUN_DIR/controller.log."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("orchestrator")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)


def _say(message: str) -> None:
    print(f"[orchestrator] {message}", flush=True)
