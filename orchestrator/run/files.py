"""Every file of a run directory, named once, and the only ways they are written.

    RUN_DIR/
        job.yaml            the resolved job                        (driver)
        driver.pid          pid of the driver that owns the run      (driver)
        driver.lock         held by the live driver: one per run     (driver)
        driver.json         the driver's heartbeat: host, pid, time  (driver)
        controller.log      the driver's decisions, as text          (driver)
        controller.json     the controller's state, for `status`     (driver)
        requests.jsonl      `scale` / `stop` requests                 (CLI -> driver)
        directive.json      what the current attempt must do          (driver -> workers)
        metrics.jsonl       one record per optimizer step             (rank 0)
        events.jsonl        attempts, failures, checkpoints, finish   (driver and rank 0)
        summary.json        the outcome, written once at the end      (driver)
        model.safetensors   the final, unsharded weights              (rank 0)
        checkpoints/        the training state (see training/checkpoint.py)
        samples/            sample ids each rank trained on (train.audit_samples)
        chaos/              markers of injected faults that fired
        verify/             the launch check's runs, kept only when it fails
        ray/                Ray Train's own storage (scaling.backend: ray_train)

Whole files are replaced atomically (write aside, then rename), so a reader sees
the old content or the new, never half; JSON-lines files are appended a whole
line at a time, and readers skip a last line that is still being written.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


@dataclass(frozen=True)
class RunFiles:
    """The paths of one run directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def job(self) -> Path:
        return self.root / "job.yaml"

    @property
    def driver_pid(self) -> Path:
        return self.root / "driver.pid"

    @property
    def driver_heartbeat(self) -> Path:
        return self.root / "driver.json"

    @property
    def driver_lock(self) -> Path:
        return self.root / "driver.lock"

    @property
    def controller_log(self) -> Path:
        return self.root / "controller.log"

    @property
    def controller_state(self) -> Path:
        return self.root / "controller.json"

    @property
    def requests(self) -> Path:
        return self.root / "requests.jsonl"

    @property
    def directive(self) -> Path:
        return self.root / "directive.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def weights(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    @property
    def chaos(self) -> Path:
        return self.root / "chaos"

    @property
    def verify(self) -> Path:
        """The launch check's reference and layout runs; removed once the check passes."""
        return self.root / "verify"

    @property
    def ray_storage(self) -> Path:
        return self.root / "ray"


def atomic_write_text(path: Path, text: str, durable: bool = False) -> None:
    """Replace `path` with `text` in one step: readers never see a torn file.

    `durable` also flushes the data to disk before the rename, for files that must
    survive a power loss (a checkpoint's manifest), not just a crash of this process.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(text)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record as one line, in a single write."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Complete records of a JSON-lines file; a line still being written is skipped, and
    so is a damaged one (not UTF-8, not JSON, not an object)."""
    if not Path(path).is_file():
        return
    with open(path, "rb") as handle:
        for line in handle:
            if line.endswith(b"\n"):
                record, _ = parse_record(line)
                if record is not None:
                    yield record


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file's content; None when there is none yet, or what is there is
    not a JSON object (a damaged file reads as a missing one)."""
    path = Path(path)
    try:
        content = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return content if isinstance(content, dict) else None


def parse_record(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """One JSON-lines record, or None and why it is not one."""
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except json.JSONDecodeError as error:
        return None, f"not JSON ({error.msg})"
    if not isinstance(record, dict):
        return None, f"not a JSON object but {type(record).__name__}"
    return record, None


class JsonlFollower:
    """Reads records appended to a JSON-lines file since the last call. Damaged lines
    are skipped; the last ones are kept in `rejected` as (first 200 bytes, why)."""

    def __init__(self, path: Path, from_end: bool = False) -> None:
        self.path = Path(path)
        self.offset = self.path.stat().st_size if from_end and self.path.is_file() else 0
        self.buffer = b""
        self.rejected: list[tuple[str, str]] = []

    def poll(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
            self.offset = handle.tell()
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        records = []
        for line in lines:
            if not line.strip():
                continue
            record, problem = parse_record(line)
            if record is None:
                self.rejected.append((line[:200].decode("utf-8", "replace"), problem))
            else:
                records.append(record)
        return records
