"""The elastic controller on a real Ray: killed workers, a killed driver, a node that
leaves and comes back. Each run ends where an uninterrupted run ends.

Exercised by: pytest tests/test_elastic_e2e.py   (skip with -m "not e2e")
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

from orchestrator.data.sampler import GlobalBatchSampler
from orchestrator.run.files import read_jsonl
from orchestrator.run.records import latest_per_step
from orchestrator.training.checkpoint import CheckpointManager
from tests.distributed import (assert_bitwise_equal, assert_each_sample_once, final_weights, make_spec,
                               train_in_processes)

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "tests/jobs/mlp_parity.yaml"
COMMON = ["train.steps=40", "checkpoint.every_steps=10"]


def orchestrator(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args],
                            capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def launch(run_dir: Path, *overrides: str, address: str | None = None) -> subprocess.CompletedProcess:
    args = ["launch", str(JOB), "--run-dir", str(run_dir)]
    for override in (*COMMON, *overrides):
        args += ["--set", override]
    if address:
        args += ["--address", address]
    return orchestrator(*args)


def last_step(run_dir: Path) -> int:
    return max((r["step"] for r in read_jsonl(run_dir / "metrics.jsonl")), default=0)


def wait_for_step(run_dir: Path, step: int, process=None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while last_step(run_dir) < step:
        assert process is None or process.poll() is None, "the run ended early"
        assert time.monotonic() < deadline, f"step {step} not reached"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    launch(run_dir)
    return run_dir


def test_a_killed_worker_is_replaced_and_the_result_is_bitwise_identical(uninterrupted, tmp_path):
    launch(tmp_path, "chaos.kill_worker_at_steps=[15]")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["restarts"] == 1
    [failure] = summary["failures"]
    assert failure["world_size_before"] == failure["world_size_after"] == 2
    # Redone: the steps since the checkpoint it resumed from. That is step 10's, unless
    # its background write was not yet published when the worker died five steps later.
    resumed = [e["step"] for e in read_jsonl(tmp_path / "events.jsonl") if e["event"] == "resumed"]
    assert resumed in ([10], [])
    assert failure["steps_redone"] == 15 - (resumed or [0])[0] and failure["recovery_s"] < 60
    assert_bitwise_equal(final_weights(tmp_path), final_weights(uninterrupted))
    assert "1 failure, 0 resizes" in orchestrator("report", str(tmp_path)).stdout


LONG_RUN = ("train.steps=300",)


@pytest.fixture(scope="module")
def long_uninterrupted(tmp_path_factory) -> Path:
    """300 steps straight through: long enough to act on a run while it trains."""
    run_dir = tmp_path_factory.mktemp("long-uninterrupted")
    launch(run_dir, *LONG_RUN)
    return run_dir


def start_launch(run_dir: Path, *overrides: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    args = [sys.executable, "-m", "orchestrator.cli", "launch", str(JOB), "--run-dir", str(run_dir)]
    for override in (*COMMON, *LONG_RUN, *overrides):
        args += ["--set", override]
    return subprocess.Popen(args, cwd=ROOT, stdout=stdout, stderr=subprocess.STDOUT, text=True)


def test_a_killed_driver_resumes_to_the_same_weights(long_uninterrupted, tmp_path):
    reference = long_uninterrupted
    run_dir = tmp_path / "killed"
    driver = start_launch(run_dir)
    wait_for_step(run_dir, 50, driver)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(2)  # the embedded Ray shares the driver's fate; let it go
    status = orchestrator("status", str(run_dir), "--json")
    assert json.loads(status.stdout)["state"].startswith("interrupted")
    assert not (run_dir / "model.safetensors").exists()

    newest = CheckpointManager.list_checkpoints(run_dir)[-1].name

    orchestrator("resume", str(run_dir))
    events = [e for e in read_jsonl(run_dir / "events.jsonl") if e["event"] == "resumed"]
    # The newest checkpoint published before the kill: step 50's, or an earlier one whose
    # background write had not finished (step 50's metrics are logged before its save
    # begins, so step 40's may still be in flight then, and step 30's at the latest is in).
    assert events and events[-1]["checkpoint"] == newest and 30 <= events[-1]["step"] < 300
    assert_bitwise_equal(final_weights(run_dir), final_weights(reference))


def test_sigterm_checkpoints_and_stops_and_resume_continues_bitwise(long_uninterrupted, tmp_path):
    driver = start_launch(tmp_path, stdout=subprocess.PIPE)
    wait_for_step(tmp_path, 30, driver)
    driver.send_signal(signal.SIGTERM)  # SLURM's notice before the time limit, a pod deletion
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 128 + signal.SIGTERM, output[-3000:]
    assert "SIGTERM: checkpointing and stopping" in output and "Traceback" not in output
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "stopped" and 30 <= summary["steps"] < 300
    assert CheckpointManager.list_checkpoints(tmp_path)[-1].name == f"step_{summary['steps']:08d}"

    orchestrator("resume", str(tmp_path))
    assert_bitwise_equal(final_weights(tmp_path), final_weights(long_uninterrupted))


MALFORMED_REQUESTS = [
    b"not json at all", b"\xff\xfe\xfd", b"[1, 2, 3]", b'"a string"', b"{}", b'{"workers": "two"}',
    b'{"workers": -3}', b'{"workers": 10000000000}', b'{"stop": false}', b'{"stop": true, "workers": 2}',
    b'{"shutdown": "now"}', b'{"workers": 2.5}',
]


def test_malformed_requests_are_set_aside_and_the_run_finishes_bitwise(long_uninterrupted, tmp_path):
    driver = start_launch(tmp_path, stdout=subprocess.PIPE)
    wait_for_step(tmp_path, 20, driver)
    with open(tmp_path / "requests.jsonl", "ab") as handle:
        for line in MALFORMED_REQUESTS:
            handle.write(line + b"\n")
    output, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, output[-3000:]
    rejected = [e for e in read_jsonl(tmp_path / "events.jsonl") if e["event"] == "request_rejected"]
    assert len(rejected) == len(MALFORMED_REQUESTS), rejected
    assert output.count("is not a request") == len(MALFORMED_REQUESTS)
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 300
    assert_bitwise_equal(final_weights(tmp_path), final_weights(long_uninterrupted))


def launch_one_worker_per_node(cluster, run_dir: Path, steps: int, checkpoint_every: int) -> subprocess.Popen:
    """`launch` on `cluster`, 1 to 2 workers of one `trainer` slot each, no spare,
    every sample's use recorded; plain SGD keeps the fp32 rounding differences of
    another accumulation split from compounding over hundreds of steps."""
    overrides = [f"train.steps={steps}", "optimizer.momentum=0", "optimizer.lr=0.02",
                 f"checkpoint.every_steps={checkpoint_every}", "scaling.workers=[1,2]",
                 "scaling.spares=0", "scaling.cpus_per_worker=1", "scaling.worker_resources={trainer: 1}",
                 "train.audit_samples=true"]
    args = [sys.executable, "-m", "orchestrator.cli", "launch", str(JOB), "--run-dir", str(run_dir),
            "--address", cluster.address]
    for override in overrides:
        args += ["--set", override]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_node_leaves_and_returns_and_every_sample_is_used_once(prepared, tmp_path):
    from ray.cluster_utils import Cluster

    steps = 1200
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        nodes = [cluster.add_node(num_cpus=1, resources={"trainer": 1}) for _ in range(2)]
        cluster.wait_for_nodes()
        # Long enough at one worker for a new node's worker to start on a busy machine
        # (it grows back at the first checkpoint boundary after that).
        driver = launch_one_worker_per_node(cluster, tmp_path, steps, checkpoint_every=5)
        wait_for_step(tmp_path, 12, driver)
        cluster.remove_node(nodes[1])
        removed_at = time.time()
        wait_for_step(tmp_path, 20, driver)
        cluster.add_node(num_cpus=1, resources={"trainer": 1})
        output, _ = driver.communicate(timeout=300)
        assert driver.returncode == 0, output[-3000:]
    finally:
        cluster.shutdown()

    records = latest_per_step(list(read_jsonl(tmp_path / "metrics.jsonl")))
    sizes = [r["world_size"] for r in records]
    assert sizes[0] == 2 and 1 in sizes and sizes[-1] == 2, "expected 2 -> 1 -> 2 workers"
    failure = next(r["failure"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "failure" in r)
    assert failure["world_size_before"] == 2 and failure["world_size_after"] == 1
    assert failure["detected_at"] - removed_at < 15

    # the same losses as the uninterrupted 2-worker run: same global batch, same order
    spec = make_spec(json_job(), train__steps=steps, optimizer__momentum=0, optimizer__lr=0.02)
    reference = train_in_processes(spec, prepared(spec), 2, tmp_path / "reference")
    for got, want in zip(records, reference, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4), f"step {got['step']}"

    # every sample of each complete epoch used exactly once, counted from what ranks trained on
    assert_each_sample_once(tmp_path, records, GlobalBatchSampler(prepared(spec).train.order, 32, seed=3), steps)


def json_job() -> dict:
    import yaml

    return yaml.safe_load(JOB.read_text())


def test_scale_then_stop_then_resume_a_running_job(tmp_path):
    args = [sys.executable, "-m", "orchestrator.cli", "launch", str(JOB), "--run-dir", str(tmp_path)]
    for override in ("train.steps=3000", "checkpoint.every_steps=10", "scaling.workers=[1,2]"):
        args += ["--set", override]
    driver = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_step(tmp_path, 5, driver)
        refused = subprocess.run([sys.executable, "-m", "orchestrator.cli", "scale", str(tmp_path), "--workers", "3"],
                                 capture_output=True, text=True, cwd=ROOT)
        assert refused.returncode == 2 and "scaling.workers" in refused.stderr
        orchestrator("scale", str(tmp_path), "--workers", "1")
        deadline = time.monotonic() + 120
        while not any(r["world_size"] == 1 for r in read_jsonl(tmp_path / "metrics.jsonl")):
            assert time.monotonic() < deadline and driver.poll() is None
            time.sleep(0.05)
        orchestrator("stop", str(tmp_path))
        assert driver.wait(timeout=120) == 0
    finally:
        if driver.poll() is None:
            driver.kill()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["steps"] < 3000
    stopped_at = summary["steps"]
    assert json.loads(orchestrator("status", str(tmp_path), "--json").stdout)["last_checkpoint"] == f"step_{stopped_at:08d}"

    orchestrator("resume", str(tmp_path), "--set", f"train.steps={stopped_at + 20}")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == stopped_at + 20

    # The run's plots mark the resize where it happened (2 -> 1 worker).
    drawn = orchestrator("report", str(tmp_path)).stdout
    assert "world sizes [1, 2]" in drawn and "0 failures, 1 resize," in drawn
    assert (tmp_path / "plots" / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_a_preemption_notice_checkpoints_and_moves_off_before_the_deadline(prepared, tmp_path):
    """`ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION` with a 20 s deadline on a
    node that holds a rank: the run checkpoints at once, goes on without the node before
    the deadline with no step to redo, and grows back when a node is added."""
    from ray.cluster_utils import Cluster

    steps = 4000  # long enough at one worker for a new node's worker to start
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        nodes = [cluster.add_node(num_cpus=1, resources={"trainer": 1}) for _ in range(2)]
        cluster.wait_for_nodes()
        driver = launch_one_worker_per_node(cluster, tmp_path, steps, checkpoint_every=100)
        wait_for_step(tmp_path, 12, driver)
        drained_at = time.time()
        drain = subprocess.run([str(Path(sys.executable).parent / "ray"), "drain-node", "--address", cluster.address,
                                "--node-id", nodes[1].node_id, "--reason", "DRAIN_NODE_REASON_PREEMPTION",
                                "--reason-message", "spot instance reclaimed", "--deadline-remaining-seconds", "20"],
                               capture_output=True, text=True, timeout=60)
        assert drain.returncode == 0, drain.stdout + drain.stderr
        wait_for_world_size(tmp_path, 1, driver)
        assert time.time() - drained_at < 20, "the run was still on the node at its deadline"
        cluster.add_node(num_cpus=1, resources={"trainer": 1})
        output, _ = driver.communicate(timeout=400)
        assert driver.returncode == 0, output[-3000:]
    finally:
        cluster.shutdown()

    events = list(read_jsonl(tmp_path / "events.jsonl"))
    assert [e["nodes"] for e in events if e["event"] == "preemption_notice"] == [[nodes[1].node_id]]
    evacuated = next(e for e in events if e["event"] == "moved_off_nodes")
    assert evacuated["before_deadline_s"] > 0
    assert not any(e["event"] == "failure" for e in events)  # no worker was lost
    records = latest_per_step(list(read_jsonl(tmp_path / "metrics.jsonl")))
    sizes = [r["world_size"] for r in records]
    assert sizes[0] == 2 and 1 in sizes and sizes[-1] == 2, "expected 2 -> 1 -> 2 workers"
    failure = next(r["failure"] for r in read_jsonl(tmp_path / "metrics.jsonl") if "failure" in r)
    assert failure["preempted"] and failure["steps_redone"] == 0
    assert failure["world_size_before"] == 2 and failure["world_size_after"] == 1
    resumed = next(e for e in events if e["event"] == "resumed")
    assert resumed["step"] == failure["last_step"] == evacuated_step(events)  # the notice's own checkpoint

    spec = make_spec(json_job(), train__steps=steps, optimizer__momentum=0, optimizer__lr=0.02)
    reference = train_in_processes(spec, prepared(spec), 2, tmp_path / "reference")
    # The same losses through the move (fp32 sums in another order at one worker drift
    # apart over thousands of steps, so the first 1200 are compared, as for a lost node).
    assert len(records) == len(reference) == steps
    for got, want in zip(records[:1200], reference[:1200], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4), f"step {got['step']}"
    assert_each_sample_once(tmp_path, records, GlobalBatchSampler(prepared(spec).train.order, 32, seed=3), steps)


def evacuated_step(events: list[dict]) -> int:
    return next(e["step"] for e in events if e["event"] == "evacuated")


def wait_for_world_size(run_dir: Path, size: int, process, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(r["world_size"] == size for r in read_jsonl(run_dir / "metrics.jsonl")):
        assert process.poll() is None, "the run ended early"
        assert time.monotonic() < deadline, f"no step at world size {size}"
        time.sleep(0.05)
