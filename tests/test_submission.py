"""Runs submitted through Ray's Jobs API to a token-authenticated two-node cluster
(`ray start` processes on 127.0.0.1), with their storage on S3 (moto's server): the
run outlives the submitting process, and status, logs, list, stop and resume reach it
from other directories and from the cluster's second node.

Exercised by: pytest tests/test_submission.py
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.run.files import RunFiles, read_jsonl
from orchestrator.run.records import latest_per_step
from orchestrator.run.storage import ObjectPath
from tests.servers import moto_s3, ray_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.cluster]
ROOT = Path(__file__).resolve().parent.parent
BUCKET = "submitted-runs"
STEPS = 100_000  # far more than the test waits for: it stops the run, then resumes it to a nearer end

# The user's own model module, beside the job file: it travels in the job's working directory.
USER_MODEL = '''
from torch import nn


def build(input_dim: int, output_dim: int, width: int = 24) -> nn.Module:
    return nn.Sequential(nn.Linear(input_dim, width), nn.Tanh(), nn.Linear(width, output_dim))
'''
JOB = f'''
name: submitted
model: {{name: "laptop_model:build"}}
data:
  source: synthetic
  options: {{samples: 1024, features: 12, classes: 4, noise: 3.0}}
optimizer: {{name: sgd, lr: 0.05, momentum: 0.9}}
train: {{steps: {STEPS}, seed: 3, global_batch_size: 32, micro_batch_size: 8, log_every: 50}}
strategy: {{name: ddp}}
scaling: {{workers: 2, spares: 0, env: {{SUBMITTED_MARKER: "carried"}}}}
checkpoint: {{every_steps: 500}}
'''


def cli(*args: str, cwd: Path, env: dict, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                            cwd=cwd, env={**os.environ, **env, "PYTHONPATH": str(ROOT)}, timeout=timeout)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def status(run: str, cwd: Path, env: dict) -> dict:
    return json.loads(cli("status", run, "--json", cwd=cwd, env=env).stdout)


def wait_until(condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


SECOND_NODE_JOB = """
import json, sys, time
from ray.job_submission import JobSubmissionClient

client = JobSubmissionClient(sys.argv[1])
job = client.submit_job(entrypoint=sys.argv[2], entrypoint_resources={"second_node": 1})
deadline = time.monotonic() + 120
while not client.get_job_status(job).is_terminal() and time.monotonic() < deadline:
    time.sleep(1)
print(json.dumps([str(client.get_job_status(job).value), client.get_job_logs(job)]))
"""


def on_second_node(cluster: dict, env: dict, *args: str) -> tuple[str, str]:
    """Run `orchestrator ARGS` as a Ray job placed on the cluster's second node (the only
    one with its resource); returns (job status, its output)."""
    entrypoint = " ".join(["python", "-m", "orchestrator.cli", *args])
    result = subprocess.run([sys.executable, "-c", SECOND_NODE_JOB, cluster["dashboard"], entrypoint],
                            capture_output=True, text=True, env={**os.environ, **env}, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    status, logs = json.loads(result.stdout.strip().splitlines()[-1])
    return status, logs


def test_a_submitted_run_outlives_its_submitter_and_is_steered_from_anywhere(tmp_path, monkeypatch):
    with moto_s3(BUCKET) as s3, ray_cluster(s3) as cluster:
        for key, value in s3.items():  # this process reads the run's records from S3 too
            monkeypatch.setenv(key, value)
        env = {**s3, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": cluster["RAY_AUTH_TOKEN"]}
        laptop, elsewhere = tmp_path / "laptop", tmp_path / "elsewhere"
        laptop.mkdir()
        elsewhere.mkdir()
        (laptop / "job.yaml").write_text(JOB)
        (laptop / "laptop_model.py").write_text(USER_MODEL)
        run = f"s3://{BUCKET}/runs/submitted"

        # Without the cluster's token the Jobs API refuses.
        refused = cli("list", "--address", cluster["dashboard"], cwd=elsewhere,
                      env={**s3, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}, check=False)
        assert refused.returncode != 0

        # Submit and follow; Ctrl-C while following detaches and leaves the job running.
        follower = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "launch", "job.yaml", "--address", cluster["dashboard"],
             "--run-dir", run, "--follow"], cwd=laptop, env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in follower.stdout:
            lines.append(line)
            if line.startswith("step "):  # the driver's progress, streamed from the cluster
                break
        follower.send_signal(signal.SIGINT)
        rest, _ = follower.communicate(timeout=60)
        output = "".join(lines) + rest
        assert f"run storage: {run}" in output and "detached" in output, output[-3000:]
        job_id = next(line.split()[3] for line in output.splitlines() if "submitted job" in line)

        wait_until(lambda: status(run, elsewhere, env)["state"] == "running"
                   and status(run, elsewhere, env)["step"] >= 40, "the run to train on after the detach")
        # From the cluster's second node: running, and a resume there is refused.
        job_status, output = on_second_node(cluster, env, "status", run, "--json")
        assert job_status == "SUCCEEDED" and '"state": "running"' in output, output[-2000:]
        job_status, output = on_second_node(cluster, env, "resume", run)
        assert job_status == "FAILED" and "is driven already" in output, output[-2000:]

        listed = cli("list", "--address", cluster["dashboard"], "--json", cwd=elsewhere, env=env)
        [entry] = json.loads(listed.stdout)
        assert entry["run_dir"] == run and entry["job_id"] == job_id and entry["state"] == "running"
        assert run in cli("list", f"s3://{BUCKET}/runs", cwd=elsewhere, env=env).stdout
        metrics = [json.loads(line) for line in cli("logs", run, cwd=elsewhere, env=env).stdout.splitlines()]
        assert metrics and metrics[-1]["step"] >= 40
        driver_output = cli("logs", job_id, "--address", cluster["dashboard"], cwd=elsewhere, env=env).stdout
        assert f"run directory: {run}" in driver_output

        cli("stop", run, cwd=elsewhere, env=env)
        wait_until(lambda: status(run, elsewhere, env)["state"] == "stopped", "the stop")
        stopped_at = status(run, elsewhere, env)["step"]
        assert stopped_at < STEPS

        # Resumed, then stopped through the Jobs API (its driver gets SIGTERM and checkpoints).
        cli("resume", run, "--address", cluster["dashboard"], cwd=laptop, env=env)
        wait_until(lambda: status(run, elsewhere, env)["step"] >= stopped_at + 50, "the resumed run to train")
        asked = cli("stop", run, "--address", cluster["dashboard"], cwd=elsewhere, env=env)
        assert "checkpoint and stop" in asked.stdout
        wait_until(lambda: status(run, elsewhere, env)["state"] == "stopped", "the stop through the Jobs API")
        stopped_at = status(run, elsewhere, env)["step"]
        checkpoints = [p.name for p in RunFiles(ObjectPath(run)).checkpoints.iterdir()]
        assert f"step_{stopped_at:08d}" in checkpoints  # checkpointed on the signal, not killed
        wait_until(lambda: json.loads(cli("list", "--address", cluster["dashboard"], "--json", cwd=elsewhere,
                                          env=env).stdout)[0]["job_status"] == "STOPPED", "the job to end")

        end = stopped_at + 200
        resumed = cli("resume", run, "--address", cluster["dashboard"], "--follow", "--set", f"train.steps={end}",
                      cwd=laptop, env=env)
        assert "SUCCEEDED" in resumed.stdout, resumed.stdout[-3000:]
        final = status(run, elsewhere, env)
        assert final["state"] == "finished" and final["step"] == end
        steps = latest_per_step(list(read_jsonl(RunFiles(ObjectPath(run)).metrics)))
        assert [r["step"] for r in steps] == list(range(1, end + 1))
        events = [e["event"] for e in read_jsonl(RunFiles(ObjectPath(run)).events)]
        assert events.count("resumed") == 2 and events.index("stopped") < events.index("resumed")

