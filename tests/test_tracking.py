"""Experiment tracking through a real launch: TensorBoard's own event reader and MLflow's
own client read back every step's metrics as metrics.jsonl has them; a resumed run
goes on in the same MLflow run; a tracker that cannot be reached stops the launch at once.

Exercised by: pytest tests/test_tracking.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

from tests.servers import free_port  # noqa: E402

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples/quickstart.yaml"


def cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    # MLflow puts a run's artifacts under ./mlruns of the driver's working directory.
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_and_mlflow_read_back_every_step(tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_dir = tmp_path / "run"
    tracking = ["--set", "tracking.tensorboard=true", "--set", f"tracking.mlflow={uri}"]
    first = cli("launch", str(QUICKSTART), "--run-dir", str(run_dir), "--set", "train.steps=20", *tracking,
                cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    resumed = cli("resume", str(run_dir), "--set", "train.steps=30", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    records = {r["step"]: r for r in _metrics(run_dir)}  # the last record of each step
    assert sorted(records) == list(range(1, 31))

    board = EventAccumulator(str(run_dir / "tensorboard"))
    board.Reload()
    assert {"loss", "lr", "samples_per_s", "val_loss", "val_accuracy"} <= set(board.Tags()["scalars"])
    losses = {event.step: event.value for event in board.Scalars("loss")}
    assert sorted(losses) == list(range(1, 31))
    for step, value in losses.items():  # TensorBoard keeps float32
        assert value == pytest.approx(records[step]["loss"], rel=1e-6)

    client = MlflowClient(tracking_uri=uri)
    run_id = json.loads((run_dir / "tracking.json").read_text())["mlflow_run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["optimizer.lr"] == "0.003"
    assert run.data.params["strategy.name"] == "ddp"
    history = {m.step: m.value for m in client.get_metric_history(run_id, "loss")}
    assert history == {step: r["loss"] for step, r in records.items()}  # one run, both launches
    validation = {m.step: m.value for m in client.get_metric_history(run_id, "val_accuracy")}
    assert validation == {s: r["val_accuracy"] for s, r in records.items() if "val_accuracy" in r}
    summary = json.loads((run_dir / "summary.json").read_text())
    assert run.data.metrics["summary.final_loss"] == summary["final_loss"]
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"model.safetensors", "summary.json", "model.json"} <= artifacts
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert (tmp_path / "mlruns").is_dir()


def test_a_tracking_server_that_is_not_there_stops_the_launch_at_once(tmp_path):
    started = time.monotonic()
    result = cli("launch", str(QUICKSTART), "--run-dir", str(tmp_path / "run"),
                 "--set", f"tracking.mlflow=http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert result.returncode == 2 and "tracking.mlflow" in result.stderr and "no server" in result.stderr
    assert time.monotonic() - started < 60
    assert not (tmp_path / "run" / "job.yaml").exists()  # the same --run-dir works once the URI is right


def test_a_tracker_that_is_not_installed_is_named_when_the_job_loads(monkeypatch):
    import importlib.util

    from orchestrator.config.loading import load_spec
    from orchestrator.errors import JobSpecError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(JobSpecError, match=r"tracking.mlflow: needs the 'mlflow' package"):
        load_spec(QUICKSTART, ["tracking.mlflow=sqlite:///x.db"])
