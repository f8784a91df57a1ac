"""How a running job is told to stop or resize, and how its workers hear it.

Two files in the run directory:
    requests.jsonl   appended by `orchestrator scale` / `orchestrator stop`, read by the controller
    directive.json   written by the controller for the current attempt, read by the workers

Rank 0 reads the directive after every step and shares it with every rank in one
tiny all-reduce, so all ranks act on the same step.
"""
from __future__ import annotations

import enum
import json
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from orchestrator.collectives import all_reduce

REQUESTS_FILE = "requests.jsonl"
DIRECTIVE_FILE = "directive.json"


class Directive(enum.IntEnum):
    CONTINUE = 0
    RESIZE = 1  # save a checkpoint at the next checkpoint boundary, then return
    STOP = 2  # save a checkpoint now, then return
    ABANDON = 3  # the driver died, or another owns the run now: write nothing more


class RunTakenOver(RuntimeError):
    """Raised on workers of a driver that died once a new driver has taken the run."""


def request(run_dir: Path, **fields) -> None:
    """Append a user request (`workers=N` or `stop=True`) for the controller."""
    with open(Path(run_dir) / REQUESTS_FILE, "a") as handle:
        handle.write(json.dumps({**fields, "time": time.time()}) + "\n")


def write_directive(run_dir: Path, owner: str, attempt: int, directive: Directive) -> None:
    """`owner` identifies the driver; workers of any other driver abandon the run."""
    path = Path(run_dir) / DIRECTIVE_FILE
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"owner": owner, "attempt": attempt, "directive": directive.name}))
    os.replace(tmp, path)


class DirectiveReader:
    """Read on every rank after each step; only rank 0 touches the file."""

    def __init__(self, run_dir: Path, owner: str | None, attempt: int, rank: int,
                 driver_alive: Callable[[], bool] | None = None) -> None:
        self.path = Path(run_dir) / DIRECTIVE_FILE
        self.owner = owner
        self.attempt = attempt
        self.rank = rank
        self.driver_alive = driver_alive

    def poll(self) -> Directive:
        # Any rank on the driver's node can see it die; the file is rank 0's to read.
        driver_gone = self.driver_alive is not None and not self.driver_alive()
        value = torch.tensor([Directive.ABANDON if driver_gone else self._read() if self.rank == 0 else 0])
        all_reduce(value, op=dist.ReduceOp.MAX)
        return Directive(int(value))

    def _read(self) -> int:
        try:
            content = json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return Directive.CONTINUE
        if self.owner is not None and content.get("owner") != self.owner:
            return Directive.ABANDON
        if content.get("attempt") != self.attempt:
            return Directive.CONTINUE
        return Directive[content["directive"]]


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
