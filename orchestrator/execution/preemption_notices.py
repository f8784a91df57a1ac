"""Cloud preemption notices turned into Ray drains, on each node of a cluster.

A spot instance on AWS gets two minutes' notice (instance metadata:
`spot/instance-action`), a preemptible or spot VM on GCP about 30 seconds
(`instance/preempted`). Ray reads neither: a node that vanishes without being drained
is a lost node, and the job redoes the steps since its last checkpoint. `orchestrator
watch-preemption`, started beside `ray start` on every worker node (cluster/aws.yaml,
gcp.yaml), polls the metadata and, on a notice, drains its own node with `ray drain-node
--reason DRAIN_NODE_REASON_PREEMPTION` and the time left as the deadline. The controller
then checkpoints and moves the job off the node (execution/elastic/steering.py).

Exercised by: pytest tests/test_preemption_notices.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from typing import Callable

from orchestrator.errors import ResourceError

METADATA = {"aws": "http://169.254.169.254", "gcp": "http://metadata.google.internal"}
GCP_NOTICE_S = 30.0  # GCP says a preempted VM is stopped about 30 s after the notice
TIMEOUT_S = 2.0


def aws_notice(base: str) -> float | None:
    """The time (Unix seconds) EC2 will interrupt this spot instance, or None (IMDSv2)."""
    token_request = urllib.request.Request(f"{base}/latest/api/token", method="PUT",
                                           headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
    with urllib.request.urlopen(token_request, timeout=TIMEOUT_S) as answer:
        token = answer.read().decode()
    request = urllib.request.Request(f"{base}/latest/meta-data/spot/instance-action",
                                     headers={"X-aws-ec2-metadata-token": token})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
            action = json.loads(answer.read())
    except urllib.error.HTTPError as error:
        if error.code == 404:  # no interruption scheduled
            return None
        raise
    return datetime.fromisoformat(action["time"].replace("Z", "+00:00")).timestamp()


def gcp_notice(base: str) -> float | None:
    """When GCP will stop this preempted VM (about 30 s from now), or None."""
    request = urllib.request.Request(f"{base}/computeMetadata/v1/instance/preempted",
                                     headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
        preempted = answer.read().decode().strip().upper() == "TRUE"
    return time.time() + GCP_NOTICE_S if preempted else None


NOTICES: dict[str, Callable[[str], float | None]] = {"aws": aws_notice, "gcp": gcp_notice}


def wait_for_notice(cloud: str, metadata: str | None = None, interval_s: float = 5.0,
                    clock: Callable[[], float] = time.time, sleep: Callable[[float], None] = time.sleep) -> float:
    """Poll the metadata until a notice comes; returns its deadline. A metadata server
    that does not answer is asked again: a notice is what must not be missed."""
    ask, base = NOTICES[cloud], metadata or METADATA[cloud]
    while True:
        try:
            deadline = ask(base)
        except (OSError, ValueError, KeyError) as error:
            print(f"preemption watch: {base} did not answer ({error}); asking again", file=sys.stderr, flush=True)
            deadline = None
        if deadline is not None:
            return deadline
        sleep(interval_s)


def drain_this_node(address: str, node_id: str | None, deadline: float, cloud: str) -> None:
    """Drain `node_id` (default: the node this process runs on) for preemption, with
    the seconds left until `deadline`.

    Raises:
        ResourceError: Ray did not accept the drain.
    """
    node_id = node_id or _local_node_id(address)
    left = max(0, int(deadline - time.time()))
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    done = subprocess.run([ray, "drain-node", "--address", address, "--node-id", node_id,
                           "--reason", "DRAIN_NODE_REASON_PREEMPTION",
                           "--reason-message", f"{cloud} preemption notice",
                           "--deadline-remaining-seconds", str(left)], capture_output=True, text=True)
    if done.returncode != 0:
        raise ResourceError(f"ray drain-node refused node {node_id}: {(done.stderr or done.stdout).strip()[-500:]}")
    print(f"preemption watch: drained node {node_id}, {left} s before the {cloud} deadline", flush=True)


def _local_node_id(address: str) -> str:
    import ray

    ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    try:
        return ray.get_runtime_context().get_node_id()
    finally:
        ray.shutdown()
