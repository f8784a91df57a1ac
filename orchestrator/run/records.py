"""What a run records as it goes, and the one reader of those records.

`metrics.jsonl` holds one object per optimizer step, `events.jsonl` the attempts,
resumes, checkpoints and failures. Rank 0 and the driver append; the progress
display, `summary.json` and `orchestrator status` read them through `RunRecords`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from orchestrator.run.files import JsonlAppender, RunFiles, append_jsonl, read_json, read_jsonl


class MetricsLog:
    """Appends per-step records to `metrics.jsonl` (on the rank that is `enabled`), the
    file kept open until `close`."""

    def __init__(self, run_dir: Path, enabled: bool) -> None:
        self.path = RunFiles(run_dir).metrics
        self.enabled = enabled
        self._appender = JsonlAppender(self.path)

    def write(self, record: dict[str, Any]) -> None:
        """A record's own `time` (when its step ended) is kept; else it is now."""
        if self.enabled:
            self._appender.append({"time": time.time(), **record})

    def close(self) -> None:
        self._appender.close()


class EventLog:
    """Appends events to `events.jsonl` (on the rank that is `enabled`)."""

    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        self.path = RunFiles(run_dir).events
        self.enabled = enabled

    def write(self, event: str, **fields: Any) -> None:
        if self.enabled:
            append_jsonl(self.path, {"event": event, "time": time.time(), **fields})


class RunRecords:
    """Reads what a run wrote: per-step metrics, events, the controller's state, the summary."""

    def __init__(self, run_dir: Path) -> None:
        self.files = RunFiles(run_dir)

    def metrics(self) -> list[dict[str, Any]]:
        """Every step record as written, redone steps included (a damaged line, or one
        without a whole-number step, is left out)."""
        return [r for r in read_jsonl(self.files.metrics) if _whole(r.get("step"))]

    def steps(self) -> list[dict[str, Any]]:
        """One record per step, the last written: steps redone after a restart replace
        the records of the attempt that failed."""
        return latest_per_step(self.metrics())

    def events(self) -> list[dict[str, Any]]:
        return [r for r in read_jsonl(self.files.events) if isinstance(r.get("event"), str)]

    def last_step(self) -> int:
        return max((r["step"] for r in self.metrics() if "step" in r), default=0)

    def restarts(self) -> int:
        return count_restarts(self.events())

    def controller_state(self) -> dict[str, Any]:
        return read_json(self.files.controller_state) or {}

    def summary(self) -> dict[str, Any] | None:
        return read_json(self.files.summary)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def count_restarts(events: list[dict[str, Any]]) -> int:
    """Restarts after failures, from `events.jsonl`. The elastic controller logs each
    restart (a failure that ends the run is not one); under Ray Train a restart shows
    only as one more worker start."""
    if any(e["event"] == "attempt" for e in events):
        return sum(e["event"] == "restarting" for e in events)
    return max(0, sum(e["event"] == "started" for e in events) - 1)


def latest_per_step(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per step, the last written."""
    by_step = {r["step"]: r for r in records}
    return [by_step[s] for s in sorted(by_step)]
