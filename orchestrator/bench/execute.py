"""Running one configuration as the user would: `orchestrator launch` (or, for the
reference, `python -m orchestrator.bench.sequential`) in a process of its own, its
output kept in a log file. A run's times are taken from outside it."""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.bench.plan import SEQUENTIAL, Configuration
from orchestrator.config.loading import dump_spec


@dataclass(frozen=True)
class Executed:
    configuration: Configuration
    repeat: int
    run_dir: Path
    log: Path
    started: float  # when the process was started (time.time())
    ended: float
    error: str | None  # what failed, from the run's last error line

    @property
    def wall_s(self) -> float:
        return self.ended - self.started


def execute(configuration: Configuration, repeat: int, out: Path, address: str | None) -> Executed:
    """Run `configuration` into OUT/runs/NAME-rREPEAT; a failed run is returned with its error."""
    name = f"{configuration.name}-r{repeat}"
    job = out / "jobs" / f"{configuration.name}.yaml"
    job.parent.mkdir(parents=True, exist_ok=True)
    job.write_text(dump_spec(configuration.spec))
    run_dir, log = out / "runs" / name, out / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    if configuration.strategy == SEQUENTIAL:
        command = [sys.executable, "-m", "orchestrator.bench.sequential", str(job), str(run_dir)]
    else:
        command = [sys.executable, "-m", "orchestrator.cli", "launch", str(job), "--run-dir", str(run_dir)]
        if address:
            command += ["--address", address]
    started = time.time()
    with open(log, "wb") as output:
        code = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT).returncode
    ended = time.time()
    error = None if code == 0 else _last_error(log) or f"exit code {code}"
    return Executed(configuration, repeat, run_dir, log, started, ended, error)


def _last_error(log: Path) -> str | None:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line.split(":")[0]]
    return (errors or lines[-1:] or [None])[-1]
