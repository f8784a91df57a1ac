"""Failures through the CLI on an embedded Ray: a bug in the user's model is reported
after one retry, not retried until failure.max_failures runs out; a rank that never
reaches a collective is named within failure.collective_timeout_s; killed workers are
still retried, and every failure is listed.

Exercised by: pytest tests/test_failure_handling_e2e.py   (skip with -m "not e2e")
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.run.files import read_jsonl

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "tests/jobs/mlp_parity.yaml"
# 2 workers x 16 samples = the global batch of 32: one forward pass per optimizer step
COMMON = ["train.micro_batch_size=16", "checkpoint.every_steps=2", "failure.max_failures=3"]


def launch(run_dir: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run `orchestrator launch`; returns the finished process and its wall time."""
    args = [sys.executable, "-m", "orchestrator.cli", "launch", str(JOB), "--run-dir", str(run_dir)]
    for override in (*COMMON, *overrides):
        args += ["--set", override]
    started = time.monotonic()
    result = subprocess.run(args, capture_output=True, text=True, timeout=400, cwd=ROOT)
    wall = time.monotonic() - started
    print(f"launch took {wall:.1f} s")
    return result, wall


def events(run_dir: Path, name: str) -> list[dict]:
    return [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == name]


def test_an_error_in_the_model_at_the_same_step_twice_ends_the_run_with_the_users_frame(tmp_path):
    result, wall = launch(tmp_path, "model.name=tests.failing_models:raises_at_step", "model.options={step: 5}",
                          "train.steps=20", "scaling.spares=0")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert ("error: training failed: deterministic failure: the same error at step 5 in two attempts in a "
            "row; not a lost worker\n  ValueError: deliberate failure at step 5\n"
            "    at tests/failing_models.py:") in result.stderr
    assert "in forward\n" in result.stderr
    assert ("attempt 1 failed at step 5: ValueError: deliberate failure at step 5; restarting: failure 1 "
            "of max 3") in result.stdout  # shown as it happens

    assert len(events(tmp_path, "attempt")) == 2  # the retry that reproduced it, and no third
    failures = events(tmp_path, "failure")
    assert failures[-1]["time"] - failures[0]["time"] < 15  # once reproduced, no further waiting
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["restarts"] == 1 and summary["steps"] == 4
    assert [(f["attempt"], f["type"], f["step"]) for f in summary["failures"]] == [
        (1, "ValueError", 5), (2, "ValueError", 5)]
    assert summary["failures"][0]["frames"][0].startswith("tests/failing_models.py:")
    assert summary["failures"][0]["frames"][0].endswith(" in forward")
    assert "ValueError: deliberate failure at step 5\n  at tests/failing_models.py:" in summary["error"]


@pytest.mark.parametrize("once", [True, False], ids=["hangs-once-then-finishes", "hangs-again-and-the-run-ends"])
def test_a_rank_that_never_reaches_a_collective_is_named_within_the_timeout(tmp_path, once):
    run_dir = tmp_path / "run"
    options = f"{{step: 3, rank: 1, marker: {tmp_path / 'hung'}}}" if once else "{step: 3, rank: 1}"
    result, _ = launch(run_dir, "model.name=tests.failing_models:hangs_at_step", f"model.options={options}",
                       "train.steps=8", "failure.collective_timeout_s=5")
    assert "attempt 1 failed at step 3: collective hang at step 3: rank 1 never reached it" in result.stdout
    failure = events(run_dir, "failure")[0]
    assert failure["kind"] == "hang" and failure["stuck_ranks"] == [1] and failure["step"] == 3
    assert failure["message"].startswith("collective hang at step 3: rank 1 never reached it; rank 0 timed out")
    assert failure["frames"][0].startswith("tests/failing_models.py:")  # where rank 1 was stuck
    # rank 1 hangs as step 3 starts, just after the step 2 record and checkpoint
    step_2 = next(r for r in read_jsonl(run_dir / "metrics.jsonl") if r["step"] == 2)
    detection_s = failure["detected_at"] - step_2["time"]
    print(f"hang reported {detection_s:.1f} s after step 2 ended (collective_timeout_s 5)")
    assert 5 <= detection_s < 5 + 5
    assert "rank 1 did not unwind; killing its worker" in (run_dir / "controller.log").read_text()
    summary = json.loads((run_dir / "summary.json").read_text())
    if once:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert summary["status"] == "finished" and summary["steps"] == 8 and summary["restarts"] == 1
    else:
        assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        assert ("error: training failed: deterministic failure: the same hang of rank 1 at step 3 in two "
                "attempts in a row; not a lost worker") in result.stderr
        assert "    rank 1 stuck at tests/failing_models.py:" in result.stderr
        assert summary["status"] == "failed" and [f["attempt"] for f in summary["failures"]] == [1, 2]


def test_killed_workers_are_still_retried_and_every_failure_is_listed(tmp_path):
    result, _ = launch(tmp_path, "chaos.kill_worker_at_steps=[3, 6, 9]", "train.steps=12")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 12 and summary["restarts"] == 3
    assert [f["attempt"] for f in summary["failures"]] == [1, 2, 3]
    for failure in summary["failures"]:
        assert failure["kind"] == "died", failure
        assert failure["error"].startswith("worker process died (rank 1 on node "), failure
        assert failure["world_size_before"] == failure["world_size_after"] == 2
    status = json.loads(subprocess.run([sys.executable, "-m", "orchestrator.cli", "status", str(tmp_path), "--json"],
                                       capture_output=True, text=True, cwd=ROOT, timeout=60).stdout)
    assert status["restarts"] == status["failures"] == 3


@pytest.mark.slow  # a minute: four restarts of Ray Train's whole group; the default tier's
# test_killed_workers_are_still_retried_and_every_failure_is_listed covers it under elastic
def test_under_ray_train_every_failure_is_listed_too_and_a_failed_runs_status_shows_its_error(tmp_path):
    result, _ = launch(tmp_path, "scaling.backend=ray_train", "chaos.kill_worker_at_steps=[3, 6, 9, 11]",
                       "train.steps=12")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["restarts"] == 3
    assert [f["attempt"] for f in summary["failures"]] == [1, 2, 3, 4]
    assert summary["failures"][-1]["decision"].startswith("failure.max_failures reached")
    status = json.loads(subprocess.run([sys.executable, "-m", "orchestrator.cli", "status", str(tmp_path), "--json"],
                                       capture_output=True, text=True, cwd=ROOT, timeout=60).stdout)
    assert status["state"] == "failed" and status["restarts"] == 3 and status["failures"] == 4
    assert status["error"] and status["error"] == summary["error"].splitlines()[0]


@pytest.mark.slow  # half a minute: Ray Train's group; the elastic backend's report is in the default tier
def test_under_ray_train_the_error_reads_the_same_without_a_traceback(tmp_path):
    result, _ = launch(tmp_path, "scaling.backend=ray_train", "failure.max_failures=0", "train.steps=8",
                       "model.name=tests.failing_models:raises_at_step", "model.options={step: 5}")
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert ("error: training failed: ValueError: deliberate failure at step 5\n"
            "    at tests/failing_models.py:") in result.stderr
