"""End to end through the `orchestrator` command on an embedded Ray, as a user runs it.

Exercised by: pytest tests/test_launch_e2e.py   (skip with -m "not e2e")
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from orchestrator.run.files import read_jsonl
from orchestrator.config.loading import load_spec

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
REQUIRED_METRICS = {"step", "loss", "lr", "world_size", "samples_per_s", "step_time_s"}


def launch(job: Path, run_dir: Path, *overrides: str, timeout: int = 400) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "orchestrator.cli", "launch", str(job), "--run-dir", str(run_dir)]
    for override in overrides:
        args += ["--set", override]
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_quickstart_trains_digits_to_95_percent(tmp_path):
    run_dir = tmp_path / "quickstart"
    result = launch(ROOT / "examples/quickstart.yaml", run_dir)
    assert str(run_dir) in result.stdout and "step 300/300" in result.stdout

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 300 and summary["restarts"] == 0
    assert summary["validation"]["val_accuracy"] >= 0.95

    records = list(read_jsonl(run_dir / "metrics.jsonl"))
    assert [r["step"] for r in records] == list(range(1, 301))
    assert all(REQUIRED_METRICS <= r.keys() for r in records)
    assert {r["world_size"] for r in records} == {2}

    # the resolved job, checkpoints kept as configured, and weights a user can load
    resolved = load_spec(run_dir / "job.yaml")
    assert resolved.train.steps == 300 and resolved.failure.max_failures == 3
    assert [p.name for p in sorted((run_dir / "checkpoints").glob("step_*"))] == ["step_00000200", "step_00000300"]
    import models

    torch.manual_seed(0)
    model = models.build_model("mlp", {"hidden": [128, 64]}, input_dim=64, output_dim=10)
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))


def test_language_model_validation_loss_falls(tmp_path):
    run_dir = tmp_path / "lm"
    launch(ROOT / "examples/gpt_chars.yaml", run_dir, "train.steps=100", "train.validate_every=10")
    validations = [r["val_loss"] for r in read_jsonl(run_dir / "metrics.jsonl") if "val_loss" in r]
    assert len(validations) == 10
    assert validations[-1] < validations[0] - 0.5
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["validation"]["val_perplexity"] < summary["first_validation"]["val_perplexity"]


def test_one_and_two_workers_give_the_same_losses(tmp_path):
    """Through the real launcher: DDP at 2 workers equals the 1-worker run step for step.
    The 1-worker run is hosted by Ray Train's TorchTrainer, the 2-worker run by the
    elastic controller's actors, so both ways of hosting workers are checked. The one
    worker computes with the one thread `scaling.threads_per_worker` gives it, not with
    every core."""
    job = ROOT / "tests/jobs/mlp_parity.yaml"
    runs = {}
    for workers, backend in ((1, "ray_train"), (2, "elastic")):
        run_dir = tmp_path / f"w{workers}"
        launch(job, run_dir, f"scaling.workers={workers}", f"scaling.backend={backend}",
               *(["scaling.threads_per_worker=1"] if workers == 1 else []))
        runs[workers] = [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl")]
    started = [e for e in read_jsonl(tmp_path / "w1" / "events.jsonl") if e["event"] == "started"]
    assert [e["threads"] for e in started] == [1]
    assert len(runs[1]) == len(runs[2]) == 30
    assert runs[2] == pytest.approx(runs[1], rel=1e-5)


def _refused_launch(run_dir: Path, ray_tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    """A launch with Ray's files under `ray_tmp` (short: Ray's sockets live there)."""
    args = [sys.executable, "-m", "orchestrator.cli", "launch", str(ROOT / "examples/quickstart.yaml"),
            "--run-dir", str(run_dir)]
    for override in overrides:
        args += ["--set", override]
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()
    return result


def _processes_under(folder: Path) -> list[str]:
    """Command lines of this machine's processes that name `folder` (Ray's name its session)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # ended meanwhile
            continue
        if str(folder) in line:
            found.append(line)
    return found


def test_impossible_job_is_refused_before_ray_starts(tmp_path):
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    try:
        result = _refused_launch(tmp_path / "never", ray_tmp, "scaling.workers=3")
        assert "train.global_batch_size" in result.stderr
        assert list(ray_tmp.iterdir()) == []  # no Ray session was started
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_model_refused_while_ray_starts_leaves_no_ray_behind(tmp_path):
    """The checks that import the model's code run while Ray starts; a model they refuse
    is reported, and the Ray started meanwhile is shut down whole before the exit."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    try:
        result = _refused_launch(tmp_path / "never", ray_tmp, "model.options.widht=3")
        assert "model.options.widht: model 'mlp' has no option 'widht'" in result.stderr
        assert list(ray_tmp.iterdir()), "the launch did not start Ray while it checked the model"
        assert _processes_under(ray_tmp) == []  # shut down before the exit, not left to notice
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
