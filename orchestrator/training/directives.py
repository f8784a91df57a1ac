"""The workers' side of the control channel: every rank acts on the same directive.

Rank 0 reads `directive.json` after every step and shares it with every rank in one
tiny all-reduce, so all ranks stop or resize after the same step.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from orchestrator.run.control import Directive, read_directive
from orchestrator.run.storage import is_remote
from orchestrator.training.collectives import all_reduce


class RunTakenOver(RuntimeError):
    """Raised on workers of a driver that died once a new driver has taken the run."""


class DirectiveReader:
    """Polled on every rank after each step; only rank 0 touches the file."""

    # On object storage a read is a request: rank 0 reads at most this often.
    REMOTE_POLL_S = 1.0

    def __init__(self, run_dir: Path, owner: str | None, attempt: int, rank: int,
                 driver_alive: Callable[[], bool] | None = None) -> None:
        self.run_dir = run_dir
        self.min_interval = self.REMOTE_POLL_S if is_remote(run_dir) else 0.0
        self.last_read = (float("-inf"), Directive.CONTINUE)  # (monotonic time, directive)
        self.owner = owner
        self.attempt = attempt
        self.rank = rank
        self.driver_alive = driver_alive

    def poll(self) -> Directive:
        # Any rank on the driver's node can see it die; the file is rank 0's to read.
        driver_gone = self.driver_alive is not None and not self.driver_alive()
        if driver_gone:
            local = Directive.ABANDON
        elif self.rank == 0:
            local = self._read()
        else:
            local = Directive.CONTINUE
        value = torch.tensor([int(local)])
        all_reduce(value, op=dist.ReduceOp.MAX)
        return Directive(int(value))

    def _read(self) -> Directive:
        when, directive = self.last_read
        if time.monotonic() - when >= self.min_interval:
            directive = read_directive(self.run_dir, self.owner, self.attempt)
            self.last_read = (time.monotonic(), directive)
        return directive
