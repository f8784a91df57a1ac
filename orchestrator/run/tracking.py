"""Experiment tracking (`tracking:` in job.yaml): TensorBoard event files and an MLflow
run, written by the driver from what the run writes, so workers need neither library.

While a run trains, `Tracking.update` forwards each new per-step record (every number
in it, at its step); at the end `finish` logs the summary, the exported weights and
the outcome. A resumed run goes on logging into the same MLflow run: its id is kept in
RUN_DIR/tracking.json. Both libraries are imported only when a job asks for them.
"""
from __future__ import annotations

import json
import time
from typing import Any

from orchestrator.config.spec import JobSpec
from orchestrator.errors import TrackingError
from orchestrator.run.files import JsonlFollower, RunFiles, atomic_write_text, read_json
from orchestrator.run.storage import ObjectPath, RunPath

MLFLOW_STATUS = {"finished": "FINISHED", "failed": "FAILED", "stopped": "KILLED", "interrupted": "KILLED"}


class Tracking:
    """The job's trackers for one launch of a run (none configured: does nothing)."""

    def __init__(self, spec: JobSpec, run_dir: RunPath, resume: bool = False) -> None:
        """Opens each tracker now, before anything is started. Raises TrackingError."""
        self.spec = spec
        self.files = RunFiles(run_dir)
        self.enabled = spec.tracking.tensorboard or spec.tracking.mlflow is not None
        self.follower = JsonlFollower(self.files.metrics, from_end=resume) if self.enabled else None
        self.board = _board(self.files.root) if spec.tracking.tensorboard else None
        try:
            self.mlflow = _MlflowRun(spec, self.files) if spec.tracking.mlflow is not None else None
        except Exception as error:  # a server not there, a store not writable: MLflow's own errors
            raise TrackingError(f"tracking.mlflow: cannot log to {spec.tracking.mlflow!r}: "
                                f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}; "
                                "check the URI, or remove tracking.mlflow") from None

    def update(self, final: bool = False) -> None:
        """Forward the step records written since the last call."""
        if not self.enabled:
            return
        records = self.follower.poll(force=final)
        if not records:
            return
        if self.board is not None:
            for record in records:
                for key, value in scalars(record).items():
                    self.board.add_scalar(key, value, record["step"], walltime=record.get("time"))
            self.board.flush()
        if self.mlflow is not None:
            self.mlflow.log_steps(records)

    def finish(self, summary: dict[str, Any]) -> None:
        """The run ended: its summary, weights and status go to the trackers."""
        if not self.enabled:
            return
        self.update(final=True)
        if self.board is not None:
            self.board.close()
        if self.mlflow is not None:
            self.mlflow.finish(summary)


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A step record's numbers, by name (not the step and time that place them)."""
    return {key: float(value) for key, value in record.items()
            if key not in ("step", "time") and isinstance(value, (int, float)) and not isinstance(value, bool)}


def _board(root: RunPath):
    if isinstance(root, ObjectPath):  # TensorBoard's writer needs a local folder
        raise TrackingError("tracking.tensorboard needs a local run directory; on object storage, "
                            "use tracking.mlflow or a local --run-dir")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(root / "tensorboard"))


class _MlflowRun:
    """The run's MLflow run, through MLflow's client (no process-wide active run)."""

    def __init__(self, spec: JobSpec, files: RunFiles) -> None:
        from mlflow.tracking import MlflowClient

        self.files = files
        self.client = MlflowClient(tracking_uri=spec.tracking.mlflow)
        known = read_json(files.tracking) or {}
        if known.get("mlflow_run_id") and known.get("mlflow_uri") == spec.tracking.mlflow:
            self.run_id = known["mlflow_run_id"]  # a resumed run: the same MLflow run
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = spec.tracking.experiment or spec.name
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)
        run = self.client.create_run(experiment_id, run_name=files.root.name,
                                     tags={"orchestrator.run_dir": str(files.root)})
        self.run_id = run.info.run_id
        atomic_write_text(files.tracking, json.dumps({"mlflow_uri": spec.tracking.mlflow, "mlflow_run_id": self.run_id}))
        self._log_params(spec)

    def _log_params(self, spec: JobSpec) -> None:
        from mlflow.entities import Param

        params = [Param(key, str(value)[:6000]) for key, value in flatten(spec.model_dump(mode="json")).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def log_steps(self, records: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(key, value, int(record.get("time", time.time()) * 1000), record["step"])
                   for record in records for key, value in scalars(record).items()]
        for start in range(0, len(metrics), 1000):  # MLflow takes at most 1000 metrics a call
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def finish(self, summary: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        final = {f"summary.{k}": v for k, v in flatten(summary).items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), stamp, summary.get("steps", 0))
                                                    for k, v in final.items()])
        for path in (self.files.summary, self.files.weights, self.files.root / "model.json"):
            if path.is_file() and not isinstance(path, ObjectPath):
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status=MLFLOW_STATUS.get(summary.get("status"), "FAILED"))


def check_reachable(spec: JobSpec, timeout_s: float = 5.0) -> None:
    """A tracking server's port answers: checked before the run directory is touched, since
    MLflow's client would retry a wrong address for minutes before it gave up.

    Raises:
        TrackingError: naming the key and the address that did not answer.
    """
    import socket
    from urllib.parse import urlparse

    uri = spec.tracking.mlflow
    parts = urlparse(uri or "")
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
    except OSError as error:
        raise TrackingError(f"tracking.mlflow: cannot log to {uri!r}: no server at {parts.hostname}:{port} "
                            f"({error.strerror or error}); check the URI, or remove tracking.mlflow") from None


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
