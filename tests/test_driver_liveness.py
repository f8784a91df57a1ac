"""Whether a run's driver is alive comes from its heartbeat (host, pid, time), so a run
looks the same from any host: running while the heartbeat is fresh, interrupted once it
is stale; a second driver is refused while the first is alive, unless it forces.

Heartbeats of another host are written here as that host's driver would write them.

Exercised by: pytest tests/test_driver_liveness.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli.commands import app
from orchestrator.errors import RunDirError
from orchestrator.run.control import HEARTBEAT_STALE_S, DriverLock, live_driver, write_heartbeat
from orchestrator.run.status import read_status

ROOT = Path(__file__).resolve().parent.parent


def _run_dir(tmp_path: Path, host: str, age_s: float, pid: int = 4242) -> Path:
    (tmp_path / "job.yaml").write_text((ROOT / "examples" / "quickstart.yaml").read_text())
    (tmp_path / "controller.json").write_text(json.dumps({"state": "running", "time": time.time() - age_s}))
    beat = {"host": host, "pid": pid, "started": time.time() - 600, "time": time.time() - age_s}
    (tmp_path / "driver.json").write_text(json.dumps(beat))
    return tmp_path


def test_a_fresh_heartbeat_from_another_host_reads_as_running(tmp_path):
    run_dir = _run_dir(tmp_path, "other-node", age_s=2)
    status = read_status(run_dir)
    assert status["state"] == "running" and status["driver"] == "host other-node, pid 4242"


def test_a_stale_heartbeat_reads_as_interrupted(tmp_path):
    run_dir = _run_dir(tmp_path, "other-node", age_s=HEARTBEAT_STALE_S + 5)
    assert live_driver(run_dir) is None
    assert read_status(run_dir)["state"] == "interrupted (resume it)"


def test_on_the_drivers_own_host_its_pid_decides(tmp_path):
    import socket

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert live_driver(_run_dir(tmp_path, socket.gethostname(), age_s=1, pid=gone.pid)) is None
    assert live_driver(_run_dir(tmp_path, socket.gethostname(), age_s=1, pid=os.getpid())) is not None


def test_a_second_driver_is_refused_while_the_first_is_alive_unless_it_forces(tmp_path):
    run_dir = _run_dir(tmp_path, "other-node", age_s=2)
    with pytest.raises(RunDirError, match="host other-node, pid 4242"):
        DriverLock(run_dir).acquire()
    forced = DriverLock(run_dir, force=True)
    forced.acquire()
    try:
        assert live_driver(run_dir)["pid"] == os.getpid()  # this driver's heartbeat now
    finally:
        forced.release()


def test_resume_of_a_run_with_a_live_driver_is_exit_2_naming_it(tmp_path):
    run_dir = _run_dir(tmp_path, "other-node", age_s=1)
    result = CliRunner().invoke(app, ["resume", str(run_dir)])
    assert result.exit_code == 2, result.output
    assert "host other-node, pid 4242" in result.output and "--force" in result.output


def test_the_heartbeat_names_this_driver(tmp_path):
    write_heartbeat(tmp_path, started=123.0)
    beat = json.loads((tmp_path / "driver.json").read_text())
    assert beat["pid"] == os.getpid() and beat["started"] == 123.0 and time.time() - beat["time"] < 5
