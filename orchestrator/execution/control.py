"""`orchestrator scale` and `stop`: requests to a running job, checked before they are sent.

The controller reads them from the run's requests file (run/control.py) and acts
at the next step (stop) or checkpoint boundary (scale).
"""
from __future__ import annotations

from pathlib import Path

from orchestrator.config.spec import JobSpec
from orchestrator.errors import ControlError
from orchestrator.execution.backend import backend_for
from orchestrator.planning.layout import batch_layout
from orchestrator.run.control import request
from orchestrator.run.status import ACTIVE_STATES, read_status


def ask_to_scale(run_dir: Path, spec: JobSpec, workers: int) -> None:
    """Raises ControlError naming what to change when the job cannot take `workers`."""
    low, high = spec.scaling.min_workers, spec.scaling.max_workers
    if not low <= workers <= high:
        raise ControlError(f"--workers {workers} is outside scaling.workers [{low}, {high}]; "
                           f"resume with --set scaling.workers=[min,max] to widen it")
    try:
        batch_layout(spec, workers)
    except ValueError as error:
        raise ControlError(str(error)) from None
    _require_running(run_dir, spec)
    request(run_dir, workers=workers)


def ask_to_stop(run_dir: Path, spec: JobSpec) -> None:
    """Raises ControlError when the run is not one that can be stopped now."""
    _require_running(run_dir, spec)
    request(run_dir, stop=True)


def _require_running(run_dir: Path, spec: JobSpec) -> None:
    backend = spec.scaling.backend
    if not backend_for(backend).controllable:
        raise ControlError(f"scale and stop need scaling.backend: elastic (this run uses {backend})")
    state = read_status(run_dir)["state"]
    if state not in ACTIVE_STATES:
        raise ControlError(f"{run_dir} is not running (state: {state})")
