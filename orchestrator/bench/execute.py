"""Running one configuration as the user would: `orchestrator launch` (or, for the
reference, `python -m orchestrator.bench.sequential`) in a process of its own, its
output kept in a log file. A run's times are taken from outside it."""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from orchestrator.bench.plan import PEER_SCRIPTS, SEQUENTIAL, Configuration
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
    started = time.time()
    with open(log, "wb") as output:
        code = subprocess.run(_command(configuration, job, run_dir, address), stdout=output,
                              stderr=subprocess.STDOUT).returncode
    ended = time.time()
    error = None if code == 0 else _last_error(log) or f"exit code {code}"
    return Executed(configuration, repeat, run_dir, log, started, ended, error)


def _command(configuration: Configuration, job: Path, run_dir: Path, address: str | None) -> list[str]:
    workers = str(configuration.workers)
    if configuration.strategy == SEQUENTIAL:
        return [sys.executable, "-m", "orchestrator.bench.sequential", str(job), str(run_dir)]
    if configuration.strategy == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", workers,
                str(PEER_SCRIPTS / "torchrun_job.py"), str(job), str(run_dir)]
    if configuration.strategy == "ray-train":
        return [sys.executable, str(PEER_SCRIPTS / "ray_train_job.py"), str(job), str(run_dir), "--workers", workers]
    command = [sys.executable, "-m", "orchestrator.cli", "launch", str(job), "--run-dir", str(run_dir)]
    return command + ["--address", address] if address else command


def _last_error(log: Path) -> str | None:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error" in line.split(":")[0]]
    return (errors or lines[-1:] or [None])[-1]
