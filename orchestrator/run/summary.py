"""`summary.json`: the outcome of a run, written once by the driver at the end."""
from __future__ import annotations

import json
import time
from pathlib import Path

from orchestrator.run.files import RunFiles, atomic_write_text
from orchestrator.run.records import RunRecords


def summarize(run_dir: Path) -> dict:
    """Steps, final loss and validation metrics, restarts and failures, from what the run wrote."""
    records = RunRecords(run_dir)
    steps = records.steps()
    summary: dict = {
        "steps": steps[-1]["step"] if steps else 0,
        "final_loss": steps[-1]["loss"] if steps else None,
        "restarts": records.restarts(),
        "failures": failures(records),
        "world_sizes": sorted({r["world_size"] for r in steps}),
    }
    validation = [r for r in steps if "val_loss" in r]
    if validation:
        summary["validation"] = {k: v for k, v in validation[-1].items() if k.startswith("val_")}
        summary["first_validation"] = {k: v for k, v in validation[0].items() if k.startswith("val_")}
    if records.files.weights.is_file():
        summary["weights"] = records.files.weights.name
    checks = [e for e in records.events() if e.get("event") == "verify"]
    if checks:  # the launch check of the layout (orchestrator verify, first)
        summary["verify"] = {k: v for k, v in checks[-1].items() if k not in ("event", "time")}
    return summary


def failures(records: RunRecords) -> list[dict]:
    """Every failure the controller saw (`failure` events: what failed, in which attempt,
    the decision), each with its recovery (from the first step record after it) when the
    run recovered from it."""
    recoveries = {r["failure"]["detected_at"]: r["failure"] for r in records.metrics() if "failure" in r}
    found, attempts = [], set()
    for event in records.events():
        if event["event"] == "failure" and "detected_at" not in event:  # Ray Train: each rank that saw it
            if event.get("attempt") in attempts:
                continue
            attempts.add(event.get("attempt"))
        if event["event"] == "failure":
            recovery = recoveries.get(event.get("detected_at"), {})  # older runs did not write it
            failure = {k: v for k, v in event.items() if k not in ("event", "time", "failures")}
            found.append({**failure, **{k: v for k, v in recovery.items() if k != "error"}})
    return found


def write_summary(run_dir: Path, status: str, wall_time_s: float, error: BaseException | None) -> dict:
    """Write `summary.json` for a run that ended with `status`; returns what was written."""
    summary = summarize(run_dir)
    summary.update({"wall_time_s": wall_time_s, "status": status, "time": time.time()})
    if error is not None:
        summary["error"] = str(error) or type(error).__name__
    atomic_write_text(RunFiles(run_dir).summary, json.dumps(summary, indent=2))
    return summary
