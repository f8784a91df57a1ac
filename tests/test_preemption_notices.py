"""Cloud preemption notices turned into Ray drains (orchestrator/execution/preemption_notices.py),
against a metadata server that answers as EC2's and GCE's do.

Exercised by: pytest tests/test_preemption_notices.py   (the cluster drain: -m slow)
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from orchestrator.execution.preemption_notices import aws_notice, gcp_notice, wait_for_notice
from tests.servers import fake_metadata

ROOT = Path(__file__).resolve().parent.parent


def give_notice(path: Path, seconds: float) -> float:
    deadline = time.time() + seconds
    path.write_text(datetime.fromtimestamp(deadline, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    return deadline


def test_an_ec2_spot_notice_and_a_gce_preemption_are_read_with_their_deadlines(tmp_path):
    notice = tmp_path / "notice"
    with fake_metadata(str(notice)) as base:
        assert aws_notice(base) is None and gcp_notice(base) is None
        deadline = give_notice(notice, 120)
        assert aws_notice(base) == pytest.approx(deadline, abs=1.0)
        assert gcp_notice(base) == pytest.approx(time.time() + 30, abs=2.0)


def test_the_watch_asks_again_until_a_notice_comes(tmp_path):
    notice = tmp_path / "notice"
    looks = []

    def sleep(seconds):
        looks.append(seconds)
        if len(looks) == 3:
            give_notice(notice, 60)

    with fake_metadata(str(notice)) as base:
        assert wait_for_notice("aws", base, interval_s=0.5, sleep=sleep) > time.time() + 50
        assert looks == [0.5, 0.5, 0.5]
        # a metadata server that does not answer is asked again, not given up on
        unreachable = []

        def give_up_after_two(seconds):
            unreachable.append(seconds)
            if len(unreachable) == 2:
                raise Enough

        with pytest.raises(Enough):
            wait_for_notice("gcp", "http://127.0.0.1:9", interval_s=0.1, sleep=give_up_after_two)
        assert unreachable == [0.1, 0.1]


class Enough(Exception):
    pass


@pytest.mark.e2e
@pytest.mark.slow
def test_watch_preemption_drains_its_node_when_the_notice_comes(tmp_path):
    """`orchestrator watch-preemption` beside a node of a local cluster: no drain before
    the notice; on it, the node is draining with the notice's deadline."""
    from ray.cluster_utils import Cluster

    notice = tmp_path / "notice"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        node = cluster.add_node(num_cpus=1, resources={"trainer": 1})
        cluster.wait_for_nodes()
        holder = subprocess.Popen([sys.executable, "-c", HOLD_NODE % cluster.address], env=os.environ.copy(),
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline().strip() == "holding"  # an actor keeps the node busy
        with fake_metadata(str(notice)) as base:
            watch = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "watch-preemption", "--cloud", "aws",
                                      "--address", cluster.address, "--node-id", node.node_id, "--metadata", base,
                                      "--interval", "0.2"], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
            time.sleep(2)
            assert watch.poll() is None, watch.stdout.read()  # no notice yet: still watching
            deadline = give_notice(notice, 60)
            output, _ = watch.communicate(timeout=60)
            assert watch.returncode == 0, output
        drains = subprocess.run([sys.executable, "-c", DRAINING % cluster.address], capture_output=True,
                                text=True, timeout=120)
        found = {line.split()[1]: float(line.split()[2]) for line in drains.stdout.splitlines()
                 if line.startswith("draining ")}
        assert found.get(node.node_id) == pytest.approx(deadline, abs=2.0), drains.stdout + drains.stderr
        holder.kill()
    finally:
        cluster.shutdown()


HOLD_NODE = """
import ray, time
ray.init(address=%r, logging_level="ERROR", log_to_driver=False)
@ray.remote(num_cpus=0, resources={"trainer": 1})
class Hold:
    def ready(self):
        return True
hold = Hold.remote()
ray.get(hold.ready.remote())
print("holding", flush=True)
time.sleep(600)
"""

DRAINING = """
import ray
ray.init(address=%r, logging_level="ERROR", log_to_driver=False)
from orchestrator.compat.ray import draining_nodes
for node, deadline in draining_nodes().items():
    print("draining", node, deadline)
"""
