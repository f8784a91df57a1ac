"""Every file of a run directory, named once, and the only ways they are written.

    RUN_DIR/                a folder, or s3://, gs://, abfs:// (run/storage.py)
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
        model.json          what serving needs besides the weights    (rank 0)
        checkpoints/        the training state (see training/checkpoint.py)
        data/               a file source, prepared: Parquet shards   (driver, data/store.py)
        samples/            sample ids each rank trained on (train.audit_samples)
        chaos/              markers of injected faults that fired
        verify/             the launch check's runs, kept only when it fails
        ray/                Ray Train's own storage (scaling.backend: ray_train)

RUN_DIR is a local folder or a prefix on object storage (run/storage.py). In a folder,
whole files are replaced atomically (write aside, then rename), so a reader sees
the old content or the new, never half; JSON-lines files are appended a whole
line at a time, and readers skip a last line that is still being written. On object
storage, a whole file is one upload, and a JSON-lines file is a folder of segments,
one per writing process (`SegmentLog`), merged in time order by the readers.
"""
from __future__ import annotations

import atexit
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from orchestrator.run.storage import ObjectPath, RunPath, run_path


@dataclass(frozen=True)
class RunFiles:
    """The paths of one run directory (a local folder or an object storage prefix)."""

    root: RunPath

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", run_path(self.root))

    @property
    def job(self) -> RunPath:
        return self.root / "job.yaml"

    @property
    def driver_pid(self) -> RunPath:
        return self.root / "driver.pid"

    @property
    def driver_heartbeat(self) -> RunPath:
        return self.root / "driver.json"

    @property
    def driver_lock(self) -> RunPath:
        return self.root / "driver.lock"

    @property
    def controller_log(self) -> RunPath:
        return self.root / "controller.log"

    @property
    def controller_state(self) -> RunPath:
        return self.root / "controller.json"

    @property
    def requests(self) -> RunPath:
        return self.root / "requests.jsonl"

    @property
    def directive(self) -> RunPath:
        return self.root / "directive.json"

    @property
    def metrics(self) -> RunPath:
        return self.root / "metrics.jsonl"

    @property
    def events(self) -> RunPath:
        return self.root / "events.jsonl"

    @property
    def tracking(self) -> RunPath:
        return self.root / "tracking.json"

    @property
    def usage(self) -> RunPath:
        return self.root / "usage.jsonl"

    @property
    def summary(self) -> RunPath:
        return self.root / "summary.json"

    @property
    def weights(self) -> RunPath:
        return self.root / "model.safetensors"

    @property
    def model_card(self) -> RunPath:
        """The model, its inputs, label values and normalisation: what serving needs."""
        return self.root / "model.json"

    @property
    def checkpoints(self) -> RunPath:
        return self.root / "checkpoints"

    @property
    def data(self) -> RunPath:
        """A file source's prepared shards and their manifest (data/store.py)."""
        return self.root / "data"

    @property
    def samples(self) -> RunPath:
        return self.root / "samples"

    @property
    def chaos(self) -> RunPath:
        return self.root / "chaos"

    @property
    def verify(self) -> RunPath:
        """The launch check's reference and layout runs; removed once the check passes."""
        return self.root / "verify"

    @property
    def ray_storage(self) -> RunPath:
        return self.root / "ray"


def atomic_write_text(path: Path, text: str, durable: bool = False) -> None:
    """Replace `path` with `text` in one step: readers never see a torn file.

    `durable` also flushes the data to disk before the rename, for files that must
    survive a power loss (a checkpoint's manifest), not just a crash of this process.
    """
    if isinstance(path, ObjectPath):
        path.write_text(text)  # one upload: atomic, and durable once it returns
        return
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as handle:
        handle.write(text)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one record as one line, in a single write (on object storage: to this
    process's segment, uploaded within FLUSH_S seconds; `flush_logs` uploads it now)."""
    if isinstance(path, ObjectPath):
        SegmentLog.of(path).append((json.dumps(record) + "\n").encode("utf-8"))
        return
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


class JsonlAppender:
    """Appends records to one JSON-lines file as `append_jsonl` does, the file kept open
    between them: for a record per training step, where opening and closing the file
    each time cost more than the write. `close` it when done."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def append(self, record: dict[str, Any]) -> None:
        if isinstance(self.path, ObjectPath):
            append_jsonl(self.path, record)
            return
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        line = (json.dumps(record) + "\n").encode("utf-8")
        while line:  # one write for a line this short, unless the disk fills
            line = line[os.write(self._fd, line):]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Complete records of a JSON-lines file; a line still being written is skipped, and
    so is a damaged one (not UTF-8, not JSON, not an object)."""
    if isinstance(path, ObjectPath):
        yield from _merge_segments(path, SegmentLog.read_segments(path))
        return
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
    path = run_path(path)
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

    REMOTE_POLL_S = 1.0

    def __init__(self, path: RunPath, from_end: bool = False) -> None:
        self.path = run_path(path)
        self.rejected: list[tuple[str, str]] = []
        self.last_poll = float("-inf")
        if isinstance(self.path, ObjectPath):
            # Segments only grow (until their writer starts the next): lines consumed per segment.
            self.consumed = {name: len(lines) for name, lines in SegmentLog.read_segments(self.path)} \
                if from_end else {}
            return
        self.offset = self.path.stat().st_size if from_end and self.path.is_file() else 0
        self.buffer = b""

    def poll(self, force: bool = False) -> list[dict[str, Any]]:
        """`force`: look now, even on object storage within REMOTE_POLL_S of the last look."""
        if isinstance(self.path, ObjectPath):
            return self._poll_segments(force)
        if not self.path.is_file():
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            chunk = handle.read()
            self.offset = handle.tell()
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return self._parse(lines)

    def _poll_segments(self, force: bool) -> list[dict[str, Any]]:
        if not force and time.monotonic() - self.last_poll < self.REMOTE_POLL_S:
            return []  # each look is a listing and a read per segment: not more often than this
        self.last_poll = time.monotonic()
        fresh = []
        for name, lines in SegmentLog.read_segments(self.path):
            seen = self.consumed.get(name, 0)
            fresh.append((name, lines[seen:]))
            self.consumed[name] = len(lines)
        return list(_merge_segments(self.path, fresh, parse=self._parse))

    def _parse(self, lines: list[bytes]) -> list[dict[str, Any]]:
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


def _merge_segments(path: ObjectPath, segments, parse=None) -> Iterator[dict[str, Any]]:
    """Records of every segment, in the order they were written: by their `time`, and in
    writing order within a segment (a stable sort)."""
    records = []
    for _, lines in segments:
        if parse is not None:
            records.extend(parse(lines))
        else:
            records.extend(r for line in lines if (r := parse_record(line)[0]) is not None)
    records.sort(key=lambda r: r["time"] if isinstance(r.get("time"), (int, float)) else 0.0)
    return iter(records)


# A JSON-lines file on object storage is uploaded at most this often by each writer.
FLUSH_S = 1.0
# A segment grows to this size, then its writer starts the next one.
SEGMENT_BYTES = 4 << 20


class SegmentLog:
    """One process's lines of a JSON-lines file on object storage.

    Object storage has no append: `PATH/` holds one object per writer and part,
    `<start time>-<host>-<pid>-<part>.jsonl`, rewritten whole with every line so far by a
    background thread: at once after a quiet spell (a short-lived command's one request
    is visible at once), then at most every FLUSH_S seconds. A writer never waits for
    storage, so a training step never does. A process killed outright loses at most its
    last FLUSH_S seconds of lines; steps redone after a restart write their records again.
    """

    _logs: dict[str, "SegmentLog"] = {}
    _guard = threading.Lock()
    _flusher: threading.Thread | None = None
    _wake = threading.Event()

    def __init__(self, folder: ObjectPath) -> None:
        self.folder = folder
        self.writer = f"{time.time_ns():020d}-{socket.gethostname()}-{os.getpid()}"
        self.part = 0
        self.lines: list[bytes] = []
        self.size = 0
        self.dirty = False
        self.lock = threading.Lock()  # the lines; held briefly, by writers and the uploader
        self.upload_lock = threading.Lock()  # one upload at a time: an older never overwrites a newer

    @classmethod
    def of(cls, folder: ObjectPath) -> "SegmentLog":
        key = f"{os.getpid()}:{folder}"  # a forked child writes its own segments
        with cls._guard:
            if key not in cls._logs:
                cls._logs[key] = SegmentLog(folder)
                cls._start_flusher()
            return cls._logs[key]

    def append(self, line: bytes) -> None:
        with self.lock:
            self.lines.append(line)
            self.size += len(line)
            self.dirty = True
        self._wake.set()

    def flush(self) -> None:
        """Upload the lines written so far, if any are new (on the caller's thread)."""
        with self.upload_lock:
            with self.lock:
                if not self.dirty:
                    return
                part, count, content = self.part, len(self.lines), b"".join(self.lines)
                self.dirty = False
            try:
                (self.folder / f"{self.writer}-{part:04d}.jsonl").write_bytes(content)
            except OSError:
                with self.lock:  # uploaded next time, with whatever came since
                    self.dirty = True
                raise
            if len(content) >= SEGMENT_BYTES:  # full: lines after it start the next part
                with self.lock:
                    self.lines = self.lines[count:]
                    self.size = sum(len(line) for line in self.lines)
                    self.part = part + 1

    @classmethod
    def read_segments(cls, folder: ObjectPath) -> list[tuple[str, list[bytes]]]:
        """(segment name, its complete lines) for every segment, this process's own
        lines uploaded first so that a writer reads what it wrote."""
        own = cls._logs.get(f"{os.getpid()}:{folder}")
        if own is not None:
            own.flush()
        segments = []
        for segment in sorted(folder.glob("*.jsonl"), key=lambda p: p.name):
            try:
                content = segment.read_bytes()
            except FileNotFoundError:  # removed while listing
                continue
            segments.append((segment.name, [line for line in content.split(b"\n") if line]))
        return segments

    @classmethod
    def flush_all(cls) -> None:
        for log in list(cls._logs.values()):
            try:
                log.flush()
            except OSError:  # storage unreachable: the next flush carries these lines too
                pass

    @classmethod
    def _start_flusher(cls) -> None:
        if cls._flusher is not None and cls._flusher.is_alive():
            return

        def loop() -> None:
            while True:
                cls._wake.wait()  # a line was written
                cls._wake.clear()
                cls.flush_all()
                time.sleep(FLUSH_S)  # lines written meanwhile go up together

        # Exit handlers run last-registered first. pyarrow registers the one that
        # finalizes S3 when `pyarrow.fs` is first imported, so it is imported here, before
        # ours is registered: the last lines then go up while S3 still works. Left to the
        # flusher's first upload, that import could come after ours, and a command that
        # wrote one request and exited at once would upload into a finalized S3 (a crash).
        import pyarrow.fs  # noqa: F401

        atexit.register(flush_logs)
        cls._flusher = threading.Thread(target=loop, name="segment-log-flusher", daemon=True)
        cls._flusher.start()


def flush_logs() -> None:
    """Upload every JSON-lines record this process has written to object storage
    (nothing to do for a local run): before a process ends, and before a summary reads
    them back."""
    SegmentLog.flush_all()


atexit.register(flush_logs)
