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

from orchestrator.run.files import JsonlFollower, RunFiles, append_jsonl, atomic_write_text


class Directive(enum.IntEnum):
    CONTINUE = 0
    RESIZE = 1  # save a checkpoint at the next checkpoint boundary, then return
    STOP = 2  # save a checkpoint now, then return
    ABANDON = 3  # the driver died, or another owns the run now: write nothing more


def request(run_dir: Path, **fields: Any) -> None:
    """Append a user request (`workers=N` or `stop=True`) for the controller."""
    append_jsonl(RunFiles(run_dir).requests, {**fields, "time": time.time()})


class RequestInbox:
    """The requests appended since the driver started; earlier ones are history."""

    def __init__(self, run_dir: Path) -> None:
        self.follower = JsonlFollower(RunFiles(run_dir).requests, from_end=True)

    def poll(self) -> list[dict[str, Any]]:
        return self.follower.poll()


def write_directive(run_dir: Path, owner: str, attempt: int, directive: Directive) -> None:
    """`owner` identifies the driver; workers of any other driver abandon the run."""
    content = {"owner": owner, "attempt": attempt, "directive": directive.name}
    atomic_write_text(RunFiles(run_dir).directive, json.dumps(content))


def read_directive(run_dir: Path, owner: str | None, attempt: int) -> Directive:
    """What the driver `owner` asks of `attempt`; ABANDON when another driver owns the run."""
    try:
        content = json.loads(RunFiles(run_dir).directive.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return Directive.CONTINUE
    if owner is not None and content.get("owner") != owner:
        return Directive.ABANDON
    if content.get("attempt") != attempt:
        return Directive.CONTINUE
    return Directive[content["directive"]]


def claim_driver(run_dir: Path) -> None:
    """Record this process as the run's driver."""
    atomic_write_text(RunFiles(run_dir).driver_pid, str(os.getpid()))


def driver_alive(run_dir: Path) -> bool:
    """Whether the `orchestrator launch` process that owns the run is still there."""
    pid_file = RunFiles(run_dir).driver_pid
    return pid_file.is_file() and process_alive(int(pid_file.read_text()))


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
