"""The `orchestrator` command. Commands parse arguments and delegate; no logic lives here.

Exit status: 0 success, 1 training failed, 2 bad input (job.yaml, flags, resources);
launch/resume stopped by SIGTERM or SIGINT (after a checkpoint): 128 + the signal, 143 or 130.
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from orchestrator.errors import (
    ControlError,
    DataError,
    JobSpecError,
    OrchestratorError,
    ResourceError,
    RunDirError,
    TrackingError,
    VerificationError,
)

app = typer.Typer(
    help="Elastic distributed training on Ray: write one job.yaml, launch it anywhere.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"orchestrator {version('orchestrator')}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit."),
) -> None:
    """Elastic distributed training on Ray: write one job.yaml, launch it anywhere."""

SetOption = typer.Option(None, "--set", help="Override a job.yaml key: --set train.steps=200 (repeatable).")
FollowOption = typer.Option(
    False, "--follow", help="With --address http://...: stream the driver's output (Ctrl-C detaches; the job goes on)."
)
WorkingDirOption = typer.Option(
    None, "--working-dir", help="With --address http://...: the folder sent to the cluster with the job "
    "(default: the current one); the job file, its local data and your model module live in it."
)
RunDirArgument = typer.Argument(
    ..., help="A run directory written by `orchestrator launch`: a folder, or a URI such as s3://bucket/runs/x."
)


def _fail(message: str, code: int) -> "typer.Exit":
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _load(job: Path, overrides: Optional[List[str]], build: bool = True, recorded: bool = False):
    from orchestrator.config.loading import load_spec

    with _refused(job):
        return load_spec(job, overrides, build=build, recorded=recorded)


def _read(job: Path, overrides: Optional[List[str]], recorded: bool = False):
    """The job checked for all but its model's code, without torch (`_check_model` follows)."""
    from orchestrator.config.loading import read_spec

    with _refused(job):
        return read_spec(job, overrides, recorded=recorded)


def _check_model(job: Path, spec, build: bool = True) -> None:
    from orchestrator.config.loading import check_model

    with _refused(job):
        check_model(spec, build=build)


@contextlib.contextmanager
def _refused(job: Path):
    try:
        yield
    except JobSpecError as error:
        raise _fail(f"{job} is not a valid job:\n  " + "\n  ".join(error.problems), 2) from None


@app.command()
def launch(
    job: Path = typer.Argument(..., help="Path to job.yaml."),
    set_: Optional[List[str]] = SetOption,
    run_dir: Optional[str] = typer.Option(
        None, "--run-dir", help="Where outputs go: a folder, or s3://, gs://, abfs:// (default runs/NAME-TIME)."
    ),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster to join (HOST:6379, default RAY_ADDRESS, else an embedded "
        "local Ray), or a cluster's Jobs API (http://HEAD:8265) to submit the run to."
    ),
    follow: bool = FollowOption,
    working_dir: Optional[Path] = WorkingDirOption,
) -> None:
    """Train a job: embedded local Ray, an existing cluster, or submitted to one (--address http://...)."""
    from orchestrator.execution.launcher import Launcher, default_run_dir
    from orchestrator.execution.submission import is_jobs_address

    spec = _read(job, set_)
    if is_jobs_address(address):
        _check_model(job, spec)
        if run_dir is None:
            raise _fail("a submitted run needs --run-dir: a URI (s3://bucket/runs/NAME) or an absolute "
                        "path every node mounts", 2)
        command = ["launch", str(_relative_job(job, working_dir)), "--run-dir", run_dir]
        _submit(address, command + _set_args(set_), spec, run_dir, working_dir, follow)
        return
    _run_checked(job, spec, Launcher(spec, _run_path(run_dir) if run_dir else default_run_dir(spec), address))


def _set_args(overrides: Optional[List[str]]) -> list[str]:
    return [arg for override in overrides or [] for arg in ("--set", override)]


def _relative_job(job: Path, working_dir: Optional[Path]) -> Path:
    """The job file as the submitted driver finds it: inside the working directory."""
    root = (working_dir or Path.cwd()).resolve()
    if not job.resolve().is_relative_to(root):
        raise _fail(f"{job} is outside the working directory {root}, which is what travels to the "
                    "cluster; run from a folder that holds it, or give --working-dir", 2)
    return job.resolve().relative_to(root)


def _submit(address: str, command: list[str], spec, run_dir: str, working_dir: Optional[Path],
            follow: bool) -> None:
    from orchestrator.execution.submission import follow as follow_job
    from orchestrator.execution.submission import submit

    try:
        submission = submit(address, command, spec, run_dir, working_dir or Path.cwd())
    except (ResourceError, RunDirError) as error:
        raise _fail(str(error), 2) from None
    for line in submission.describe():
        _say(line)
    if follow:
        status = follow_job(address, submission.job_id, _say)
        _say(f"job {submission.job_id}: {status}")
        if status == "FAILED":
            raise typer.Exit(1)


@app.command()
def resume(
    run_dir: str = RunDirArgument,
    set_: Optional[List[str]] = SetOption,
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster to join, or its Jobs API (http://HEAD:8265) to submit to."
    ),
    force: bool = typer.Option(
        False, "--force", help="Take the run over from a driver that still looks alive; its workers "
        "stop writing to the run at their next step."
    ),
    follow: bool = FollowOption,
    working_dir: Optional[Path] = WorkingDirOption,
) -> None:
    """Continue a run from its newest valid checkpoint (after a crash, a stop, or to train longer)."""
    from orchestrator.execution.launcher import Launcher
    from orchestrator.execution.submission import is_jobs_address

    from orchestrator.run.control import DriverLock

    path = _run_path(run_dir)
    job = _job_of(path)
    try:  # before the job is loaded: that builds the model, which may not import here
        DriverLock(path, force=force).refuse_if_driven()
    except RunDirError as error:
        raise _fail(str(error), 2) from None
    # Submitted, the resume runs (and is checked) on the cluster, with the model's module.
    if is_jobs_address(address):
        spec = _load(job, set_, recorded=True)
        command = ["resume", run_dir, *_set_args(set_), *(["--force"] if force else [])]
        _submit(address, command, spec, run_dir, working_dir, follow)
        return
    spec = _read(job, set_)
    _run_checked(job, spec, Launcher(spec, path, address, resume=True, force=force))


def _run_checked(job: Path, spec, launcher) -> None:
    """Ray starts while the job is checked against its model's code (torch's import, the
    model built on the meta device): about a second of a launch overlapped. Every other
    check has passed before (`_read`); a model the checks refuse shuts that Ray down
    again before the exit."""
    try:
        launcher.start_ray()
        _check_model(job, spec)
        _run(launcher)
    finally:
        launcher.stop_ray()


def _run(launcher) -> None:
    try:
        launcher.run()
        if launcher.signal is not None:  # stopped by SIGTERM/SIGINT: 143/130, as the shell counts
            raise typer.Exit(128 + launcher.signal)
    except (DataError, ResourceError, RunDirError, TrackingError) as error:
        raise _fail(str(error), 2) from None
    except VerificationError as error:  # the layout is wrong for this model: change the job
        raise _fail(str(error).replace("\n", "\n  "), 2) from None
    except OrchestratorError as error:
        # A training failure is its report (type, message, frames), not a traceback.
        report = str(error).replace("\n", "\n  ")
        raise _fail(f"{report}\n  outputs so far: {launcher.run_dir}", 1) from None


@app.command()
def validate(
    job: Path = typer.Argument(..., help="Path to job.yaml."),
    set_: Optional[List[str]] = SetOption,
    print_: bool = typer.Option(False, "--print", help="Print the resolved job, every default written out."),
) -> None:
    """Check job.yaml without starting anything; exit 2 with every problem listed.
    model.name is resolved, never called: checks that need the model built are plan's."""
    spec = _load(job, set_, build=False)
    if print_:
        from orchestrator.config.loading import dump_spec

        typer.echo(dump_spec(spec), nl=False)
        return
    typer.echo(f"{job}: valid ({spec.model.name} on {spec.data.source}, strategy {spec.strategy.name}, "
               f"workers {spec.scaling.workers})")
    if spec.scaling.use_gpu and not _has_gpu():
        typer.echo("warning: scaling.use_gpu: true, and this machine has no GPU: `launch` here stops with "
                   "exit 2; on a cluster (--address) it needs one GPU per worker there", err=True)


def _has_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


@app.command()
def schema() -> None:
    """Print job.yaml's JSON Schema, for editors (`# yaml-language-server: $schema=job.schema.json`)."""
    from orchestrator.config.schema import schema_text

    typer.echo(schema_text(), nl=False)


@app.command()
def plan(
    job: Path = typer.Argument(..., help="Path to job.yaml."),
    workers: Optional[int] = typer.Option(
        None, "--workers", min=1, max=4096, help="Plan for this many workers (default: max)."
    ),
    set_: Optional[List[str]] = SetOption,
) -> None:
    """Show the mesh, batch arithmetic and per-worker memory, without starting Ray.
    It builds the model (on the meta device), so it runs model.name's code."""
    from orchestrator.planning.report import render_plan

    spec = _load(job, set_)
    try:
        typer.echo(render_plan(spec, workers or spec.scaling.max_workers))
    except (ValueError, OrchestratorError) as error:
        raise _fail(str(error), 2) from None
    except Exception as error:  # the user's model code: its error, not ours
        raise _fail(f"building {spec.model.name!r} failed: {type(error).__name__}: {error}", 2) from None


@app.command()
def verify(
    job: Path = typer.Argument(..., help="Path to job.yaml."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Workers per layout (default: what each needs)."),
    steps: int = typer.Option(3, "--steps", min=1, max=1000, help="Optimizer steps to compare."),
    strategies: Optional[str] = typer.Option(
        None, "--strategies", help="Layouts to check, e.g. ddp,zero2,fsdp,tensor,pipeline,hybrid "
        "(default: the job's own strategy)."
    ),
    rtol: Optional[float] = typer.Option(None, "--rtol", help="Relative tolerance (default 1e-5 fp32, 1e-2 bf16)."),
    set_: Optional[List[str]] = SetOption,
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join."),
) -> None:
    """Check that each layout trains the job's model exactly as one plain process does."""
    from orchestrator.verify.render import render_report
    from orchestrator.verify.runner import verify as run_verify

    spec = _load(job, set_)
    names = [n.strip() for n in strategies.split(",") if n.strip()] if strategies else None
    try:
        report = run_verify(spec, names, workers, steps, rtol, address, _say)
    except (JobSpecError, DataError, ResourceError) as error:
        message = "\n  ".join(error.problems) if isinstance(error, JobSpecError) else str(error)
        raise _fail(message, 2) from None
    typer.echo(render_report(report))
    if not report.passed:
        raise typer.Exit(2)


@app.command()
def bench(
    job: Path = typer.Argument(..., help="Path to job.yaml."),
    workers: str = typer.Option("1,2", "--workers", help="Worker counts to run each strategy at, e.g. 1,2,4."),
    strategies: str = typer.Option(
        "ddp", "--strategies", help="Strategies to compare, e.g. ddp,zero2,fsdp,tensor,pipeline,hybrid."
    ),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Steps per run (default: the job's)."),
    repeats: int = typer.Option(1, "--repeats", min=1, max=50, help="Runs of each configuration, in turn."),
    target_loss: Optional[float] = typer.Option(
        None, "--target-loss", help="Loss for `time to target` (default: where the sequential run ends)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for runs, results.json and the report "
                                       "(default bench/NAME-TIME)."),
    set_: Optional[List[str]] = SetOption,
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to launch on (default: an "
                                          "embedded Ray per run)."),
    peers: bool = typer.Option(False, "--peers", help="Also the job as a hand-written DDP loop under torchrun "
                               "and under Ray Train (benchmarks/peers/, on this machine)."),
) -> None:
    """Was distributing worth it? The job sequentially, then each strategy at each worker count: speedup,
    efficiency, convergence against the sequential run and resources, as a report with plots."""
    from datetime import datetime

    from orchestrator.bench.runner import BenchOptions, run_bench

    spec = _load(job, set_)
    try:
        counts = [int(n) for n in workers.split(",") if n.strip()]
    except ValueError:
        raise _fail(f"--workers: whole numbers separated by commas, e.g. 1,2,4 (got {workers!r})", 2) from None
    names = [n.strip() for n in strategies.split(",") if n.strip()]
    folder = out or Path("bench") / f"{spec.name}-{datetime.now():%Y%m%d-%H%M%S}"
    if folder.exists() and any(folder.iterdir()):
        raise _fail(f"{folder} is not empty; choose another --out", 2)
    options = BenchOptions(counts, names, steps, repeats, target_loss, address, peers)
    try:
        run_bench(spec, options, folder, " ".join(["orchestrator", *sys.argv[1:]]), _say)
    except JobSpecError as error:
        raise _fail("\n  ".join(error.problems), 2) from None


def _say(message: str) -> None:
    typer.echo(f"[orchestrator] {message}")


@app.command()
def status(run_dir: str = RunDirArgument, as_json: bool = typer.Option(False, "--json")) -> None:
    """State, step, world size, restarts, last checkpoint and throughput of a run."""
    from orchestrator.run.status import read_status, render_status

    run_dir = _run_path(run_dir)
    _job_of(run_dir)
    state = read_status(run_dir)
    typer.echo(json.dumps(state, indent=2) if as_json else render_status(state))


@app.command(name="watch-preemption")
def watch_preemption(
    cloud: str = typer.Option(..., "--cloud", help="aws (spot instance-action) or gcp (instance/preempted)."),
    address: str = typer.Option("auto", "--address", help="The Ray cluster's GCS address."),
    node_id: Optional[str] = typer.Option(None, "--node-id", help="The node to drain (default: this one)."),
    metadata: Optional[str] = typer.Option(None, "--metadata", help="The metadata server (default: the cloud's)."),
    interval: float = typer.Option(5.0, "--interval", min=0.1, help="Seconds between looks."),
) -> None:
    """Run on a cluster node: wait for the cloud's preemption notice, then drain the node
    in Ray so a job checkpoints and moves off it before it goes."""
    from orchestrator.execution.preemption_notices import NOTICES, drain_this_node, wait_for_notice

    if cloud not in NOTICES:
        raise _fail(f"--cloud {cloud}: expected one of {', '.join(NOTICES)}", 2)
    deadline = wait_for_notice(cloud, metadata, interval)
    try:
        drain_this_node(address, node_id, deadline, cloud)
    except ResourceError as error:
        raise _fail(str(error), 1)


@app.command()
def report(run_dir: str = RunDirArgument) -> None:
    """Plot one run: loss, throughput and workers over time, failures, resizes and checkpoints marked."""
    from orchestrator.bench.run_report import draw_run

    path = _run_path(run_dir)
    _job_of(path)
    try:
        figures = draw_run(path)
    except ValueError as error:
        raise _fail(str(error), 2) from None
    for target, said in figures:
        typer.echo(f"{target}: {said}")


@app.command()
def scale(
    run_dir: str = RunDirArgument,
    workers: int = typer.Option(..., "--workers", help="New worker count, within scaling.workers."),
) -> None:
    """Resize a running job; it changes size at its next checkpoint boundary."""
    from orchestrator.execution.control import ask_to_scale

    run_dir = _run_path(run_dir)
    _control(lambda spec: ask_to_scale(run_dir, spec, workers), run_dir)
    typer.echo(f"asked {run_dir} to resize to {workers} workers at its next checkpoint")


@app.command()
def stop(
    run_dir: str = typer.Argument(..., help="A run directory or URI; with --address http://..., a job id too."),
    address: Optional[str] = typer.Option(
        None, "--address", help="A cluster's Jobs API (http://HEAD:8265): stop the run's job through it, "
        "for a run whose storage this machine cannot reach."
    ),
) -> None:
    """Checkpoint a running job and stop it; `orchestrator resume` continues it."""
    from orchestrator.execution.control import ask_to_stop
    from orchestrator.execution.submission import is_jobs_address, stop_run

    if is_jobs_address(address):
        try:
            job_id = stop_run(address, run_dir)
        except OrchestratorError as error:
            raise _fail(str(error), 2) from None
        typer.echo(f"asked job {job_id} to checkpoint and stop (its driver got SIGTERM)")
        return
    run_dir = _run_path(run_dir)
    _control(lambda spec: ask_to_stop(run_dir, spec), run_dir)
    typer.echo(f"asked {run_dir} to checkpoint and stop")


def _control(ask, run_dir) -> None:
    try:
        ask(_load(_job_of(run_dir), None, recorded=True))
    except ControlError as error:
        raise _fail(str(error), 2) from None


def _run_path(value: str):
    """A folder or an object storage URI, as the run's modules take it."""
    from orchestrator.run.storage import run_path

    try:
        return run_path(value)
    except ValueError as error:
        raise _fail(str(error), 2) from None


def _job_of(run_dir):
    """The resolved job.yaml of a run directory (a folder or an object storage prefix)."""
    from orchestrator.run.files import RunFiles

    if not run_dir.is_dir():
        raise _fail(f"{run_dir} is not a directory; give a run directory written by `orchestrator launch`", 2)
    job = RunFiles(run_dir).job
    if not job.is_file():
        raise _fail(f"{run_dir} has no job.yaml; is it a run directory?", 2)
    return job


@app.command()
def logs(
    run_dir: str = typer.Argument(..., help="A run directory or URI; with --address http://..., a job id."),
    events: bool = typer.Option(False, "--events", help="Show events (starts, resumes, checkpoints) instead."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing as the run writes, until it ends."),
    address: Optional[str] = typer.Option(
        None, "--address", help="A cluster's Jobs API (http://HEAD:8265): print the driver output of job RUN_DIR."
    ),
) -> None:
    """Print a run's per-step metrics (or its events) as JSON lines, or a submitted driver's output."""
    from orchestrator.execution.submission import driver_logs, follow as follow_job, is_jobs_address
    from orchestrator.run.files import RunFiles, read_jsonl
    from orchestrator.run.listing import follow_records

    if is_jobs_address(address):
        try:
            if follow:
                follow_job(address, run_dir, _say)
            else:
                sys.stdout.write(driver_logs(address, run_dir))
        except RuntimeError as error:  # the Jobs API's answer for an unknown job id
            raise _fail(f"job {run_dir} at {address}: {error}", 2) from None
        return
    path = _run_path(run_dir)
    _job_of(path)
    if follow:
        try:
            follow_records(path, events, lambda record: print(json.dumps(record), flush=True))
        except KeyboardInterrupt:
            pass
        return
    records = RunFiles(path).events if events else RunFiles(path).metrics
    if not records.exists():
        raise _fail(f"{records} does not exist", 2)
    sys.stdout.writelines(json.dumps(record) + "\n" for record in read_jsonl(records))


@app.command(name="list")
def list_(
    prefix: Optional[str] = typer.Argument(
        None, help="A folder or storage prefix holding run directories (default: runs)."
    ),
    address: Optional[str] = typer.Option(
        None, "--address", help="A cluster's Jobs API (http://HEAD:8265): the runs submitted to it."
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """The runs of a folder, a storage prefix, or a cluster: state, step, world size, started."""
    from orchestrator.execution.submission import is_jobs_address, list_runs as submitted_runs
    from orchestrator.run.listing import list_runs, render_runs
    from orchestrator.run.status import ACTIVE_STATES, read_status

    if is_jobs_address(address):
        runs = []
        try:
            jobs = submitted_runs(address)
        except OrchestratorError as error:
            raise _fail(str(error), 2) from None
        latest = {job["run_dir"]: job for job in jobs}  # a resumed run has one job per driver
        for job in latest.values():
            try:
                state = read_status(_run_path(job["run_dir"]))
            except OSError:  # storage this machine cannot reach: the Jobs API's view only
                state = {"run_dir": job["run_dir"], "state": f"job {job['job_status'].lower()}"}
            if job["job_status"] in ("FAILED", "STOPPED") and state["state"] in ("not started", *ACTIVE_STATES):
                state["state"] = f"job {job['job_status'].lower()}: `orchestrator logs {job['job_id']} --address {address}`"
            runs.append({**state, "job_id": job["job_id"], "job_status": job["job_status"]})
    else:
        root = _run_path(prefix or "runs")
        if not root.is_dir():
            raise _fail(f"{root} is not a folder or prefix of runs", 2)
        runs = list_runs(root)
    typer.echo(json.dumps(runs, indent=2) if as_json else render_runs(runs))
