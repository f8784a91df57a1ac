"""`orchestrator status`: what a run directory says about its run."""
from __future__ import annotations

import json
from pathlib import Path

from orchestrator.checkpoint import CheckpointManager, verify
from orchestrator.control import process_alive
from orchestrator.metrics import EVENTS_FILE, METRICS_FILE, count_restarts, read_jsonl


def read_status(run_dir: Path) -> dict:
    metrics = list(read_jsonl(run_dir / METRICS_FILE))
    events = list(read_jsonl(run_dir / EVENTS_FILE))
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else None
    checkpoints = [p for p in CheckpointManager.list_checkpoints(run_dir) if verify(p) is None]
    last = metrics[-1] if metrics else {}
    controller_path = run_dir / "controller.json"
    controller = json.loads(controller_path.read_text()) if controller_path.is_file() else {}
    if summary is not None and summary.get("time", 0) >= controller.get("time", 0):
        state = summary["status"]
    elif controller:
        state = controller["state"]
        if state in ("running", "scheduling", "restarting") and not _driver_alive(run_dir):
            state = "interrupted (resume it)"
    elif events:
        state = "interrupted (resume it)"
    else:
        state = "not started"
    return {
        "run_dir": str(run_dir),
        "state": state,
        "step": last.get("step", 0),
        "world_size": last.get("world_size"),
        "restarts": count_restarts(events),
        "last_checkpoint": checkpoints[-1].name if checkpoints else None,
        "samples_per_s": last.get("samples_per_s"),
        "loss": last.get("loss"),
    }


def render_status(state: dict) -> str:
    return "\n".join(f"{key:16} {value}" for key, value in state.items())


def _driver_alive(run_dir: Path) -> bool:
    """Whether the `orchestrator launch` process that owns the run is still there."""
    pid_file = run_dir / "driver.pid"
    return pid_file.is_file() and process_alive(int(pid_file.read_text()))
