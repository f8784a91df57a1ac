"""Real servers for tests, on loopback only, started by the test and stopped by process id."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"the server exited with {process.returncode}"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, f"nothing listens on 127.0.0.1:{port}"
        time.sleep(0.2)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def moto_s3(*buckets: str) -> Iterator[dict[str, str]]:
    """An S3 endpoint (moto's server) on 127.0.0.1 with `buckets` created. Yields the
    AWS_* variables that reach it; the caller puts them into os.environ or a child's."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}
    try:
        wait_for_port(port, process)
        import boto3

        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        for bucket in buckets:
            client.create_bucket(Bucket=bucket)
        yield env
    finally:
        stop(process)


def stop_group(process: subprocess.Popen, grace_s: float = 15) -> None:
    """Stop a process started with start_new_session=True and every process it started
    (`ray start --block` and its GCS, raylet, dashboard, workers): its process group."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


@contextlib.contextmanager
def ray_cluster(env: dict[str, str], head_cpus: int = 2, node_cpus: int = 1,
                node_resources: str = '{"second_node": 1}') -> Iterator[dict[str, str]]:
    """A token-authenticated two-node Ray cluster started with `ray start` on 127.0.0.1:
    a head with the dashboard (the Jobs API) and a second node with `node_resources`.
    Yields {"gcs": HOST:PORT, "dashboard": http://HOST:PORT, "token": ...} and the
    RAY_AUTH_* variables every client needs, merged into `env`."""
    import secrets

    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    gcs_port, dashboard_port = free_port(), free_port()
    token = secrets.token_hex(32)
    env = {**os.environ, **env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    common = ["--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    head = subprocess.Popen(
        [ray, "start", "--head", f"--port={gcs_port}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard_port}", "--include-dashboard=true", f"--num-cpus={head_cpus}",
         f"--dashboard-agent-listen-port={free_port()}", *common],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    node = None
    try:
        wait_for_port(dashboard_port, head, timeout=120)
        node = subprocess.Popen(
            [ray, "start", f"--address=127.0.0.1:{gcs_port}", f"--num-cpus={node_cpus}",
             f"--resources={node_resources}",
             # Both nodes share this host: the second node's agent (which runs the jobs
             # placed there) needs a port of its own.
             f"--dashboard-agent-listen-port={free_port()}", *common],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        yield {"gcs": f"127.0.0.1:{gcs_port}", "dashboard": f"http://127.0.0.1:{dashboard_port}",
               "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    finally:
        if node is not None:
            stop_group(node)
        stop_group(head)


@contextlib.contextmanager
def autoscaling_cluster(worker_resources: dict[str, float], max_nodes: int,
                        head_resources: dict[str, float] | None = None) -> Iterator[dict[str, str]]:
    """A Ray head on 127.0.0.1 with Ray's autoscaler over its fake multi-node provider:
    a head with `head_resources` (default one CPU) and a worker node type with
    `worker_resources` from 0 to `max_nodes` nodes, started as
    local processes when the autoscaler asks for them and removed when idle (after 6 s).
    Yields {"gcs": HOST:PORT} and the RAY_AUTH_* variables every client needs.

    `ray.cluster_utils.AutoscalingCluster` cannot serve: Ray's wheel lacks the example
    config it reads, and it runs `ray stop --force`, which ends every Ray on the machine.
    The fake provider starts nodes outside the head's process group, so everything is
    found by a marker in its environment and stopped by process id."""
    import json
    import secrets
    import tempfile

    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    port, marker, token = free_port(), secrets.token_hex(8), secrets.token_hex(32)
    head_resources = dict(head_resources or {"CPU": 1})
    head_cpus = int(head_resources.pop("CPU", 1))
    config = {
        "cluster_name": f"fake-{marker}", "max_workers": max_nodes,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus, **head_resources}, "node_config": {},
                                 "max_workers": 0},
            "worker": {"resources": dict(worker_resources), "node_config": {}, "min_workers": 0,
                       "max_workers": max_nodes},
        },
        "head_node_type": "ray.head.default", "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1,
        "docker": {}, "auth": {"ssh_user": "ubuntu"}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config, handle)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env = {**os.environ, **auth, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "ORCHESTRATOR_TEST_CLUSTER": marker,
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")}
    head = subprocess.Popen(
        [ray, "start", "--head", "--block", f"--port={port}", f"--num-cpus={head_cpus}",
         f"--resources={json.dumps(head_resources)}",
         "--node-ip-address=127.0.0.1", "--disable-usage-stats", f"--autoscaling-config={handle.name}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, head, timeout=120)
        yield {"gcs": f"127.0.0.1:{port}", **auth}
    finally:
        _kill_marked("ORCHESTRATOR_TEST_CLUSTER", marker)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=10)
        os.unlink(handle.name)
        _forget_cluster(port)


def _kill_marked(variable: str, value: str) -> None:
    """SIGKILL every process whose environment has `variable=value` (children inherit it)."""
    needle = f"{variable}={value}".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if needle in environ.read().split(b"\0"):
                    os.kill(int(pid), signal.SIGKILL)


def _forget_cluster(port: int) -> None:
    """`ray start --head` leaves /tmp/ray/ray_current_cluster behind when killed, and a
    later plain `ray.init()` would try to join it: removed when it names this cluster."""
    path = "/tmp/ray/ray_current_cluster"
    with contextlib.suppress(OSError):
        with open(path) as current:
            named = current.read()
        if f":{port}" in named:
            os.unlink(path)


@contextlib.contextmanager
def fake_metadata(notice_file: str) -> Iterator[str]:
    """A cloud metadata server (tests/fake_metadata.py) on 127.0.0.1 that gives a
    preemption notice once `notice_file` exists. Yields its base URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.fake_metadata", "--port", str(port),
                                "--notice", notice_file], cwd=os.path.dirname(os.path.dirname(__file__)),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)
