"""The workers' side of the control channel: every rank acts on the same directive.

Rank 0 reads `directive.json` after every step and shares it with every rank in one
tiny all-reduce, so all ranks stop or resize after the same step.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from orchestrator.run.control import Directive, read_directive
from orchestrator.training.collectives import all_reduce


class RunTakenOver(RuntimeError):
    """Raised on workers of a driver that died once a new driver has taken the run."""


class DirectiveReader:
    """Polled on every rank after each step; only rank 0 touches the file."""

    def __init__(self, run_dir: Path, owner: str | None, attempt: int, rank: int,
                 driver_alive: Callable[[], bool] | None = None) -> None:
        self.run_dir = run_dir
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
            local = read_directive(self.run_dir, self.owner, self.attempt)
        else:
            local = Directive.CONTINUE
        value = torch.tensor([int(local)])
        all_reduce(value, op=dist.ReduceOp.MAX)
        return Directive(int(value))
