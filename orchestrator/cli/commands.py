"""The `orchestrator` command. Commands parse arguments and delegate; no logic lives here.

Exit status: 0 success, 1 training failed, 2 bad input (job.yaml, flags, resources);
launch/resume stopped by SIGTERM or SIGINT (after a checkpoint): 128 + the signal, 143 or 130.
"""
from __future__ import annotations

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
    VerificationError,
)

app = typer.Typer(
    help="Elastic distributed training on Ray: write one job.yaml, launch it anywhere.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

SetOption = typer.Option(None, "--set", help="Override a job.yaml key: --set train.steps=200 (repeatable).")
RunDirArgument = typer.Argument(..., help="A run directory written by `orchestrator launch`.")


def _fail(message: str, code: int) -> "typer.Exit":
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _load(job: Path, overrides: Optional[List[str]], build: bool = True):
    from orchestrator.config.loading import load_spec

    try:
        return load_spec(job, overrides, build=build)
    except JobSpecError as error:
        raise _fail(f"{job} is not a valid job:\n  " + "\n  ".join(error.problems), 2) from None


@app.command()
def launch(
    job: Path = typer.Argument(..., help="Path to job.yaml."),
    set_: Optional[List[str]] = SetOption,
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Where outputs go; default runs/NAME-TIME."),
    address: Optional[str] = typer.Option(
        None, "--address", help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)."
    ),
) -> None:
    """Train a job: embedded local Ray, or an existing cluster with --address."""
    from orchestrator.execution.launcher import Launcher, default_run_dir

    spec = _load(job, set_)
    _run(Launcher(spec, run_dir or default_run_dir(spec), address))


@app.command()
def resume(
    run_dir: Path = RunDirArgument,
    set_: Optional[List[str]] = SetOption,
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join."),
    force: bool = typer.Option(
        False, "--force", help="Take the run over from a driver that still looks alive; its workers "
        "stop writing to the run at their next step."
    ),
) -> None:
    """Continue a run from its newest valid checkpoint (after a crash, a stop, or to train longer)."""
    from orchestrator.execution.launcher import Launcher

    _run(Launcher(_load(_job_of(run_dir), set_), run_dir, address, resume=True, force=force))


def _run(launcher) -> None:
    try:
        launcher.run()
        if launcher.signal is not None:  # stopped by SIGTERM/SIGINT: 143/130, as the shell counts
            raise typer.Exit(128 + launcher.signal)
    except (DataError, ResourceError, RunDirError) as error:
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
) -> None:
    """Check job.yaml without starting anything; exit 2 with every problem listed.
    model.name is resolved, never called: checks that need the model built are plan's."""
    spec = _load(job, set_, build=False)
    typer.echo(f"{job}: valid ({spec.model.name} on {spec.data.source}, strategy {spec.strategy.name}, "
               f"workers {spec.scaling.workers})")


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


def _say(message: str) -> None:
    typer.echo(f"[orchestrator] {message}")


@app.command()
def status(run_dir: Path = RunDirArgument, as_json: bool = typer.Option(False, "--json")) -> None:
    """State, step, world size, restarts, last checkpoint and throughput of a run."""
    from orchestrator.run.status import read_status, render_status

    _job_of(run_dir)
    state = read_status(run_dir)
    typer.echo(json.dumps(state, indent=2) if as_json else render_status(state))


@app.command()
def scale(
    run_dir: Path = RunDirArgument,
    workers: int = typer.Option(..., "--workers", help="New worker count, within scaling.workers."),
) -> None:
    """Resize a running job; it changes size at its next checkpoint boundary."""
    from orchestrator.execution.control import ask_to_scale

    _control(lambda spec: ask_to_scale(run_dir, spec, workers), run_dir)
    typer.echo(f"asked {run_dir} to resize to {workers} workers at its next checkpoint")


@app.command()
def stop(run_dir: Path = RunDirArgument) -> None:
    """Checkpoint a running job and stop it; `orchestrator resume` continues it."""
    from orchestrator.execution.control import ask_to_stop

    _control(lambda spec: ask_to_stop(run_dir, spec), run_dir)
    typer.echo(f"asked {run_dir} to checkpoint and stop")


def _control(ask, run_dir: Path) -> None:
    try:
        ask(_load(_job_of(run_dir), None))
    except ControlError as error:
        raise _fail(str(error), 2) from None


def _job_of(run_dir: Path) -> Path:
    """The resolved job.yaml of a run directory."""
    from orchestrator.run.files import RunFiles

    if not run_dir.is_dir():
        raise _fail(f"{run_dir} is not a directory; give a run directory written by `orchestrator launch`", 2)
    job = RunFiles(run_dir).job
    if not job.is_file():
        raise _fail(f"{run_dir} has no job.yaml; is it a run directory?", 2)
    return job


@app.command()
def logs(
    run_dir: Path = RunDirArgument,
    events: bool = typer.Option(False, "--events", help="Show events (starts, resumes, checkpoints) instead."),
) -> None:
    """Print a run's per-step metrics (or its events) as JSON lines."""
    from orchestrator.run.files import RunFiles

    _job_of(run_dir)
    path = RunFiles(run_dir).events if events else RunFiles(run_dir).metrics
    if not path.is_file():
        raise _fail(f"{path} does not exist", 2)
    sys.stdout.write(path.read_bytes().decode("utf-8", "replace"))

