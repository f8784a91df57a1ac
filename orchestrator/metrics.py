"""What a run writes as it goes: `metrics.jsonl` (one object per optimizer step) and
`events.jsonl` (starts, resumes, checkpoints, failures). Rank 0 writes both; the
driver reads them for the progress display and the summary.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

METRICS_FILE = "metrics.jsonl"
EVENTS_FILE = "events.jsonl"


class _JsonLines:
    def __init__(self, path: Path, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled

    def _append(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")


class MetricsLog(_JsonLines):
    def __init__(self, run_dir: Path, enabled: bool) -> None:
        super().__init__(Path(run_dir) / METRICS_FILE, enabled)

    def write(self, record: dict[str, Any]) -> None:
        self._append({**record, "time": time.time()})


class EventLog(_JsonLines):
    def __init__(self, run_dir: Path, enabled: bool = True) -> None:
        super().__init__(Path(run_dir) / EVENTS_FILE, enabled)

    def write(self, event: str, **fields: Any) -> None:
        self._append({"event": event, "time": time.time(), **fields})


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Complete records of a JSON-lines file; a line still being written is skipped."""
    if not path.is_file():
        return
    with open(path) as handle:
        for line in handle:
            if line.endswith("\n"):
                yield json.loads(line)


def count_restarts(events: list[dict[str, Any]]) -> int:
    """Restarts after failures, from `events.jsonl`. The elastic controller logs each
    failure; under Ray Train a restart shows only as one more worker start."""
    if any(e["event"] == "attempt" for e in events):
        return sum(e["event"] == "failure" for e in events)
    return max(0, sum(e["event"] == "started" for e in events) - 1)


def latest_per_step(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per step, the last written: steps redone after a restart replace
    the records of the attempt that failed."""
    by_step = {r["step"]: r for r in records}
    return [by_step[s] for s in sorted(by_step)]


class JsonlFollower:
    """Reads records appended to a JSON-lines file since the last call."""

    def __init__(self, path: Path, from_end: bool = False) -> None:
        self.path = path
        self.offset = path.stat().st_size if from_end and path.is_file() else 0
        self.buffer = ""

    def poll(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with open(self.path) as handle:
            handle.seek(self.offset)
            chunk = handle.read()
            self.offset = handle.tell()
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split("\n")
        return [json.loads(line) for line in lines if line]
