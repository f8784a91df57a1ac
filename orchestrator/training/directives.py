"""The workers' side of the control channel: every rank acts on the same directive.

Rank 0 reads `directive.json` after every step; `agree` shares it with every rank in the
one small all-reduce each step has anyway (the loss's), so all ranks stop or resize after
the same step and the control channel costs no synchronisation of its own.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

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

    def local(self) -> Directive:
        """What this rank sees; `agree` makes it every rank's."""
        # Any rank on the driver's node can see it die; the file is rank 0's to read.
        if self.driver_alive is not None and not self.driver_alive():
            return Directive.ABANDON
        return self._read() if self.rank == 0 else Directive.CONTINUE

    def _read(self) -> Directive:
        when, directive = self.last_read
        if time.monotonic() - when >= self.min_interval:
            directive = read_directive(self.run_dir, self.owner, self.attempt)
            self.last_read = (time.monotonic(), directive)
        return directive


def agree(loss_sum: torch.Tensor, local: Directive) -> tuple[float, Directive]:
    """What every rank must agree on after a step, in one all-reduce: the mean loss over
    every rank's micro-batches (`loss_sum` is [sum of losses, count], float64), and the
    strongest directive any rank saw (a vote per directive; the highest with a vote wins)."""
    votes = torch.zeros(len(Directive), dtype=torch.float64)
    votes[int(local)] = 1.0
    packed = torch.cat([loss_sum, votes])
    all_reduce(packed)
    directive = max(d for d in Directive if packed[2 + int(d)] > 0)
    return float(packed[0] / packed[1]), directive
