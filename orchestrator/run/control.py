"""How a running job is told to stop or resize: the control files of a run.

    requests.jsonl   appended by `orchestrator scale` / `orchestrator stop`, read by the controller
    directive.json   written by the controller for the current attempt, read by rank 0
    driver.pid       the driver that owns the run, for `status` and for workers on its node

The workers' side (rank 0 reads, every rank agrees) is training/directives.py.
"""
from __future__ import annotations

import enum
import json
import os
import time
from pathlib import Path
from typing import Any

from orchestrator.errors import RunDirError
from orchestrator.run.files import JsonlFollower, RunFiles, append_jsonl, atomic_write_text, read_json
from orchestrator.run.storage import ObjectPath, run_path


class Directive(enum.IntEnum):
    CONTINUE = 0
    RESIZE = 1  # save a checkpoint at the next checkpoint boundary, then return
    EVACUATE = 2  # a node of the attempt is going away: save a checkpoint now, then return
    STOP = 3  # save a checkpoint now, then return
    ABANDON = 4  # the driver died, or another owns the run now: write nothing more


def request(run_dir: Path, **fields: Any) -> None:
    """Append a user request (`workers=N` or `stop=True`) for the controller."""
    append_jsonl(RunFiles(run_dir).requests, {**fields, "time": time.time()})


# Bounds a request's worker count: beyond any cluster, and small enough to plan for.
MAX_REQUESTED_WORKERS = 100_000


class RequestInbox:
    """The requests appended since the driver started; earlier ones are history.

    Anyone who can write the run directory can append to requests.jsonl, by hand too;
    a line that is not a request is set aside with the reason, never acted on."""

    def __init__(self, run_dir: Path) -> None:
        self.follower = JsonlFollower(RunFiles(run_dir).requests, from_end=True)

    def poll(self) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """(requests, rejected lines as (line, why)) appended since the last call."""
        requests = []
        for record in self.follower.poll():
            problem = request_problem(record)
            if problem is None:
                requests.append(record)
            else:
                self.follower.rejected.append((json.dumps(record)[:200], problem))
        rejected, self.follower.rejected = self.follower.rejected, []
        return requests, rejected


def request_problem(record: dict[str, Any]) -> str | None:
    """Why a record is not a request `scale` or `stop` would write; None if it is one."""
    unknown = set(record) - {"stop", "workers", "time"}
    if unknown:
        return f"unknown key(s) {sorted(unknown)}"
    if "time" in record and (isinstance(record["time"], bool) or not isinstance(record["time"], (int, float))):
        return "time is not a number"
    if ("stop" in record) == ("workers" in record):
        return "a request is either {\"stop\": true} or {\"workers\": N}"
    if "stop" in record and record["stop"] is not True:
        return "stop must be true"
    workers = record.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= MAX_REQUESTED_WORKERS:
        return f"workers must be a whole number from 1 to {MAX_REQUESTED_WORKERS}"
    return None


def write_directive(run_dir: Path, owner: str, attempt: int, directive: Directive) -> None:
    """`owner` identifies the driver; workers of any other driver abandon the run."""
    content = {"owner": owner, "attempt": attempt, "directive": directive.name}
    atomic_write_text(RunFiles(run_dir).directive, json.dumps(content))


def read_directive(run_dir: Path, owner: str | None, attempt: int) -> Directive:
    """What the driver `owner` asks of `attempt`; ABANDON when another driver owns the run."""
    content = read_json(RunFiles(run_dir).directive)
    if content is None:  # none yet, or torn: the driver rewrites it whole
        return Directive.CONTINUE
    if owner is not None and content.get("owner") != owner:
        return Directive.ABANDON
    if content.get("attempt") != attempt or content.get("directive") not in Directive.__members__:
        return Directive.CONTINUE
    return Directive[content["directive"]]


# A driver rewrites its heartbeat every HEARTBEAT_S; one older than HEARTBEAT_STALE_S
# means the driver is gone, whichever host reads it.
HEARTBEAT_S = 5.0
HEARTBEAT_STALE_S = 30.0


def write_heartbeat(run_dir: Path, started: float) -> None:
    """The driver says it is alive: host, pid, when it started, now."""
    import socket

    content = {"host": socket.gethostname(), "pid": os.getpid(), "started": started, "time": time.time()}
    atomic_write_text(RunFiles(run_dir).driver_heartbeat, json.dumps(content))


def live_driver(run_dir: Path) -> dict[str, Any] | None:
    """The heartbeat of the run's driver if that driver is alive, else None. On the
    driver's own host its pid decides; elsewhere the heartbeat's age does. A run
    without a heartbeat (written before there was one) falls back to driver.pid."""
    import socket

    beat = read_json(RunFiles(run_dir).driver_heartbeat)
    if beat is None:
        return {"host": socket.gethostname(), "pid": _pid_file(run_dir)} if _pid_alive(run_dir) else None
    pid, when = beat.get("pid"), beat.get("time")
    if not isinstance(pid, int) or isinstance(when, bool) or not isinstance(when, (int, float)):
        return None
    if beat.get("host") == socket.gethostname():
        return beat if pid > 0 and process_alive(pid) else None
    return beat if time.time() - when < HEARTBEAT_STALE_S else None


def _pid_file(run_dir: Path) -> int | None:
    try:
        return int(RunFiles(run_dir).driver_pid.read_text().strip())
    except (OSError, ValueError):  # none, or damaged: no driver to speak of
        return None


def _pid_alive(run_dir: Path) -> bool:
    pid = _pid_file(run_dir)
    return pid is not None and pid > 0 and process_alive(pid)


class DriverLock:
    """One driver per run directory. Across hosts, a fresh heartbeat of another driver
    refuses the run (unless `force`: that driver's workers then abandon the run, see
    Directive.ABANDON); on one host, an exclusive lock on `driver.lock`, held for the
    driver's life and released by the system when it dies, however it dies."""

    def __init__(self, run_dir: Path, force: bool = False) -> None:
        self.run_dir = run_path(run_dir)
        self.path = RunFiles(run_dir).driver_lock
        self.force = force
        self.handle = None

    def acquire(self) -> None:
        """Raises:
        RunDirError: another live driver holds the run (naming it).
        """
        import fcntl

        self.refuse_if_driven()
        if isinstance(self.run_dir, ObjectPath):  # no locks on object storage: the heartbeat decides
            self._claim()
            return
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunDirError(f"{self.run_dir} is driven already ({holder}); "
                              "`orchestrator status` shows it, `orchestrator stop` stops it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"host {_hostname()}, pid {os.getpid()}")
        handle.flush()
        self.handle = handle
        self._claim()

    def _claim(self) -> None:
        atomic_write_text(RunFiles(self.run_dir).driver_pid, str(os.getpid()))
        write_heartbeat(self.run_dir, time.time())

    def refuse_if_driven(self) -> None:
        """Raises RunDirError naming the live driver of the run, unless `force`."""
        other = live_driver(self.run_dir)
        if other is not None and other.get("pid") != os.getpid() and not self.force:
            raise RunDirError(f"{self.run_dir} is driven already (host {other.get('host')}, pid {other.get('pid')}); "
                              "`orchestrator status` shows it, `orchestrator stop` stops it, "
                              "`resume --force` takes it over")

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing drops the lock
            self.handle = None


def _hostname() -> str:
    import socket

    return socket.gethostname()


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
