"""`orchestrator list` and `logs --follow`: the runs under a folder or a storage prefix,
and a run's records as it writes them, read from its storage (no shared disk needed)."""
from __future__ import annotations

import time
from typing import Any, Callable

from orchestrator.run.files import JsonlFollower, RunFiles
from orchestrator.run.status import ACTIVE_STATES, read_status
from orchestrator.run.storage import RunPath

COLUMNS = ("run_dir", "state", "step", "world_size", "started")


def list_runs(prefix: RunPath) -> list[dict[str, Any]]:
    """Every run directly under `prefix` (a folder holding job.yaml), oldest first."""
    runs = [read_status(child) for child in sorted(prefix.iterdir(), key=str)
            if child.is_dir() and RunFiles(child).job.is_file()]
    return sorted(runs, key=lambda run: run.get("started") or "")


def render_runs(runs: list[dict[str, Any]]) -> str:
    rows = [COLUMNS] + [tuple("" if run.get(c) is None else str(run.get(c)) for c in COLUMNS) for run in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def follow_records(run_dir: RunPath, events: bool, write: Callable[[dict], None], poll_s: float = 1.0) -> str:
    """Write each record of the run (its metrics, or its events) as it appears, until the
    run is no longer active; returns its state then. Ctrl-C stops following."""
    files = RunFiles(run_dir)
    follower = JsonlFollower(files.events if events else files.metrics)
    while True:
        state = read_status(run_dir)["state"]
        for record in follower.poll(force=True):
            write(record)
        if state not in ACTIVE_STATES:
            return state
        time.sleep(poll_s)
