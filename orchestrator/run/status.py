"""`orchestrator status`: what a run directory says about its run."""
from __future__ import annotations

from orchestrator.run.storage import RunPath

from orchestrator.run.control import live_driver
from orchestrator.run.records import RunRecords
from orchestrator.run.summary import failures
from orchestrator.training.checkpoint import CheckpointManager, verify

ACTIVE_STATES = ("running", "scheduling", "restarting")


def read_status(run_dir: RunPath) -> dict:
    records = RunRecords(run_dir)
    metrics = records.metrics()
    events = records.events()
    summary = records.summary()
    controller = records.controller_state()
    # Only the newest valid checkpoint is shown: older ones are not read at all.
    newest = next((p for p in reversed(CheckpointManager.list_checkpoints(run_dir)) if verify(p) is None), None)
    last = metrics[-1] if metrics else {}
    summary = summary if summary is not None and isinstance(summary.get("status"), str) else None
    controller = controller if isinstance(controller.get("state"), str) else {}
    if summary is not None and _time(summary) >= _time(controller):
        state = summary["status"]
    elif controller:
        state = controller["state"]
        if state in ACTIVE_STATES and live_driver(run_dir) is None:
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
        "restarts": records.restarts(),
        "failures": len(failures(records)),
        "last_checkpoint": newest.name if newest is not None else None,
        "samples_per_s": last.get("samples_per_s"),
        "loss": last.get("loss"),
        "driver": _driver(run_dir) if state in ACTIVE_STATES else None,
        "workers": _workers(controller) if state in ACTIVE_STATES else None,
        "waiting": controller.get("waiting") if state in ACTIVE_STATES else None,
        "started": _started(events),
        "error": (summary.get("error") or "").splitlines()[0] or None if summary and state == "failed" else None,
    }


def _workers(controller: dict) -> str | None:
    """Wanted (spares included) / starting / ready / training, as the controller last saw."""
    counts = controller.get("workers")
    if not isinstance(counts, dict):
        return None
    return ", ".join(f"{counts.get(k)} {k}" for k in ("wanted", "starting", "ready", "training"))


def _started(events: list[dict]) -> str | None:
    """When the run first started (its first event), as local time."""
    from datetime import datetime

    times = [_time(e) for e in events if _time(e) > 0]
    return datetime.fromtimestamp(min(times)).isoformat(sep=" ", timespec="seconds") if times else None


def _driver(run_dir: RunPath) -> str | None:
    beat = live_driver(run_dir)
    return None if beat is None else f"host {beat.get('host')}, pid {beat.get('pid')}"


def _time(record: dict) -> float:
    value = record.get("time", 0)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def render_status(state: dict) -> str:
    return "\n".join(f"{key:16} {value}" for key, value in state.items())
