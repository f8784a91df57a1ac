"""Runs submitted to a cluster through Ray's Jobs API: the driver lives on the cluster.

`orchestrator launch job.yaml --address http://HEAD:8265` does not train here: it
submits `orchestrator launch` itself as a Ray job, whose driver runs on the head node
and outlives the laptop. What the driver needs travels in the job's runtime
environment: the working directory (the job file, the local files it names, the
user's model module; Ray uploads it, minus EXCLUDES and what .gitignore names),
`py_modules` for a model module imported from elsewhere, `scaling.env`, and for a run on
the host malloc's one arena (training/allocator.py).

A submitted run writes to `--run-dir`, which must outlive the job too: a URI
(s3://, gs://, abfs://) or an absolute path on storage every node mounts. `status`,
`logs`, `stop`, `scale` and `resume` then reach the run through that storage, from
any machine; `list --address` lists the cluster's runs from the Jobs API.

Exercised by: pytest tests/test_submission.py
"""
from __future__ import annotations

import asyncio
import importlib.util
import shlex
import sys
import sysconfig
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from orchestrator.config.spec import JobSpec
from orchestrator.errors import ResourceError, RunDirError
from orchestrator.run.storage import is_uri
from orchestrator.training.allocator import process_start_environment

# Never uploaded with the working directory.
EXCLUDES = [".git", ".venv", "venv", "runs", "__pycache__", "*.pyc", ".pytest_cache", "node_modules"]
# Job metadata that marks a Ray job as an orchestrator run, and names its storage.
RUN_KEY = "orchestrator_run"
NAME_KEY = "orchestrator_job"
# How long Ray's job supervisor waits after SIGTERM before SIGKILL when a job is stopped
# (Ray's default is 3 s): time for the driver to checkpoint and stop (launcher.py).
STOP_GRACE_S = 300
# Variables that say where object storage is without being secrets; credentials
# belong to the cluster's nodes (an instance role, a mounted secret), not a job's env.
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


def is_jobs_address(address: str | None) -> bool:
    """An address of Ray's Jobs API (the dashboard's HTTP port), not of the GCS."""
    return bool(address) and address.startswith(("http://", "https://"))


@dataclass
class Submission:
    job_id: str
    run_dir: str
    address: str

    def describe(self) -> list[str]:
        return [
            f"submitted job {self.job_id} to {self.address}",
            f"run storage: {self.run_dir}",
            f"follow it:   orchestrator logs {self.run_dir} --follow",
            f"its driver:  orchestrator logs {self.job_id} --address {self.address} --follow",
            f"stop it:     orchestrator stop {self.run_dir}",
        ]


def submit(address: str, command: list[str], spec: JobSpec, run_dir: str, working_dir: Path) -> Submission:
    """Submit `orchestrator <command>` as a Ray job that runs in `working_dir`.

    Raises:
        RunDirError: the run directory would not outlive the job.
        ResourceError: a file the job needs is outside the working directory, or the
            cluster cannot be reached.
    """
    if not (is_uri(run_dir) or Path(run_dir).is_absolute()):
        raise RunDirError(
            f"--run-dir {run_dir}: a submitted run needs storage that outlives its job: "
            "give a URI (s3://bucket/runs/NAME, gs://..., abfs://...) or an absolute path every node mounts"
        )
    working_dir = working_dir.resolve()
    _check_inside(spec, working_dir)
    runtime_env: dict[str, Any] = {"working_dir": str(working_dir), "excludes": EXCLUDES}
    modules = _modules_from_elsewhere(spec, working_dir)
    if modules:
        runtime_env["py_modules"] = modules
    runtime_env["env_vars"] = {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S), **_endpoint_env(run_dir),
                               **process_start_environment(spec.scaling), **spec.scaling.env}
    job_id = f"orchestrator-{_slug(spec.name)}-{datetime.now():%Y%m%d-%H%M%S}-{time.time_ns() % 1000:03d}"
    client = _client(address)
    client.submit_job(
        entrypoint=shlex.join(["python", "-m", "orchestrator.cli", *command]),
        submission_id=job_id,
        runtime_env=runtime_env,
        metadata={RUN_KEY: run_dir, NAME_KEY: spec.name},
    )
    return Submission(job_id, run_dir, address)


def follow(address: str, job_id: str, say) -> str:
    """Print the job's driver output until it ends; returns its final status. Ctrl-C
    stops following and leaves the job running."""
    client = _client(address)

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        say(f"detached; job {job_id} goes on (`orchestrator logs {job_id} --address {address} --follow`)")
        return "DETACHED"
    return str(client.get_job_status(job_id).value)


def stop_run(address: str, target: str) -> str:
    """Stop a submitted run through the Jobs API: its driver gets SIGTERM, checkpoints and
    stops (STOP_GRACE_S before Ray kills it). `target` is a job id or a run's storage.
    Returns the job id.

    Raises:
        ControlError: no running job is that job or drives that run.
    """
    from orchestrator.errors import ControlError

    running = [job for job in list_runs(address) if job["job_status"] in ("PENDING", "RUNNING")
               and target in (job["job_id"], job["run_dir"])]
    if not running:
        raise ControlError(f"no running job at {address} is {target} or drives it; "
                           f"`orchestrator list --address {address}` lists them")
    job_id = running[-1]["job_id"]
    _client(address).stop_job(job_id)
    return job_id


def driver_logs(address: str, job_id: str) -> str:
    return _client(address).get_job_logs(job_id)


def list_runs(address: str) -> list[dict[str, Any]]:
    """The orchestrator runs submitted to the cluster, oldest first."""
    runs = []
    for job in _client(address).list_jobs():
        metadata = job.metadata or {}
        if RUN_KEY in metadata:
            runs.append({"job_id": job.submission_id, "job_status": str(job.status.value),
                         "run_dir": metadata[RUN_KEY], "name": metadata.get(NAME_KEY),
                         "started": (job.start_time or 0) / 1000})
    return sorted(runs, key=lambda r: r["started"])


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError) as error:
        raise ResourceError(f"--address {address}: no Ray Jobs API there ({error}); it is the dashboard's "
                            "address, http://HEAD:8265 (through `ray dashboard` or a port-forward)") from None


def _check_inside(spec: JobSpec, working_dir: Path) -> None:
    """Every local file the job names must travel with the working directory."""
    named = []
    if spec.data.is_file and not is_uri(spec.data.source):
        named.append(("data.source", spec.data_path))
    if spec.model.pretrained is not None:
        named.append(("model.pretrained", spec.pretrained_path))
    for key, path in named:
        if not path.resolve().is_relative_to(working_dir):
            raise ResourceError(
                f"{key}: {path} is outside the working directory {working_dir}, which is what travels "
                "to the cluster; move it under it, give --working-dir a folder that holds both, "
                "or put the data on object storage"
            )


def _modules_from_elsewhere(spec: JobSpec, working_dir: Path) -> list[str]:
    """The user's model module, when it is imported from neither the working directory
    nor an installed package (a PYTHONPATH entry): sent as a py_module."""
    if ":" not in spec.model.name:
        return []
    top = spec.model.name.partition(":")[0].split(".")[0]
    found = importlib.util.find_spec(top)
    if found is None or found.origin in (None, "built-in", "frozen"):
        return []
    origin = Path(found.origin).resolve()
    source = origin.parent if origin.name == "__init__.py" else origin
    installed = [Path(p).resolve() for p in {sysconfig.get_path("purelib"), sysconfig.get_path("platlib"),
                                              sysconfig.get_path("stdlib")}]
    if source.is_relative_to(working_dir) or any(source.is_relative_to(p) for p in installed):
        return []
    return [str(source)]


def _endpoint_env(run_dir: str) -> dict[str, str]:
    import os

    if not is_uri(run_dir):
        return {}
    return {k: os.environ[k] for k in ENDPOINT_VARIABLES if k in os.environ}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)[:40] or "job"
