"""A job on a cluster whose workers the autoscaler brings: Ray's autoscaler over its fake
multi-node provider (real autoscaler, nodes started as local processes), with a worker
node type that starts at 0 nodes.

Exercised by: pytest tests/test_autoscaling_e2e.py -m slow
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.run.files import read_jsonl
from orchestrator.run.records import latest_per_step
from tests.distributed import make_spec, train_in_processes
from tests.servers import autoscaling_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "tests/jobs/mlp_parity.yaml"


def test_a_job_asks_the_autoscaler_for_its_workers_grows_to_them_and_gives_them_back(prepared, tmp_path):
    """`scaling.workers: [1, 3]` with room for one worker on the head: the autoscaler
    brings the nodes the job asked for, the job trains on 3 workers, ends with the losses
    of an uninterrupted 3-worker run, and the nodes go once it has ended."""
    import yaml

    steps = 1500
    overrides = {"train.steps": steps, "train.global_batch_size": 48, "optimizer.momentum": 0,
                 "optimizer.lr": 0.02, "checkpoint.every_steps": 5, "scaling.workers": [1, 3],
                 "scaling.spares": 0, "scaling.cpus_per_worker": 1, "scaling.worker_resources": {"trainer": 1}}
    # The head has room for one worker (and the driver); the worker nodes start at 0.
    with autoscaling_cluster({"CPU": 1, "trainer": 1}, max_nodes=2, head_resources={"CPU": 2, "trainer": 1}) \
            as cluster:
        env = {**os.environ, **{k: v for k, v in cluster.items() if k.startswith("RAY_")}}
        assert alive_nodes(cluster, env) == 1  # the head alone: no worker node yet
        args = [sys.executable, "-m", "orchestrator.cli", "launch", str(JOB), "--run-dir", str(tmp_path),
                "--address", cluster["gcs"]]
        for key, value in overrides.items():
            args += ["--set", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"]
        driver = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        try:
            output, _ = driver.communicate(timeout=600)
        finally:
            if driver.poll() is None:
                driver.kill()
        assert driver.returncode == 0, output[-3000:]
        # The job's request is emptied when it ends: its idle nodes go.
        deadline = time.monotonic() + 90
        while alive_nodes(cluster, env) > 1:
            assert time.monotonic() < deadline, "the worker nodes stayed after the job ended"
            time.sleep(2)

    records = latest_per_step(list(read_jsonl(tmp_path / "metrics.jsonl")))
    sizes = [r["world_size"] for r in records]
    # The nodes come within seconds, while the data is prepared and the layout checked:
    # the first attempt usually has all 3 (starting with fewer and growing is
    # tests/test_elastic_controller.py's).
    assert sizes[0] >= 1 and sizes[-1] == 3 and len(records) == steps, sorted(set(sizes))
    spec = make_spec(yaml.safe_load(JOB.read_text()), train__steps=steps, train__global_batch_size=48,
                     optimizer__momentum=0, optimizer__lr=0.02)
    reference = train_in_processes(spec, prepared(spec), 3, tmp_path / "reference")
    for got, want in zip(records, reference, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4), f"step {got['step']}"


def alive_nodes(cluster: dict, env: dict) -> int:
    """The cluster's live nodes, asked from a process of its own (this one may hold
    another Ray)."""
    script = ("import ray; ray.init(address=%r, logging_level='ERROR', log_to_driver=False); "
              "print('alive nodes:', sum(n['Alive'] for n in ray.nodes()))" % cluster["gcs"])
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("alive nodes:"))
    return int(line.split(":")[1])
