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
