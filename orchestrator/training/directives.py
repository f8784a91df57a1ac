"""The workers' side of the control channel: every rank acts on the same directive.

Rank 0 reads `directive.json` after every step; `start_agreement` shares it with every
rank in the one small all-reduce each step has anyway (the loss's), so all ranks stop or
resize after the same step, and `StepRecords` lets that all-reduce overlap the next step:
the control channel and the loss record cost the ranks no meeting of their own.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from orchestrator.run.control import Directive, read_directive
from orchestrator.run.storage import is_remote
from orchestrator.training.collectives import all_reduce_async


class RunTakenOver(RuntimeError):
    """Raised on workers of a driver that died once a new driver has taken the run."""


class DirectiveReader:
    """Polled on every rank after each step; only rank 0 touches the file, at most every
    LOCAL_POLL_S: read after every step, its open, read and parse took 0.1 ms of a 20 ms
    step (0.5 %) once the step's arithmetic had left the caches cold; a driver's directive
    is a human's or a controller's, for which a tenth of a second is no delay."""

    LOCAL_POLL_S = 0.1
    # On object storage a read is a request: rank 0 reads at most this often.
    REMOTE_POLL_S = 1.0

    def __init__(self, run_dir: Path, owner: str | None, attempt: int, rank: int,
                 driver_alive: Callable[[], bool] | None = None) -> None:
        self.run_dir = run_dir
        self.min_interval = self.REMOTE_POLL_S if is_remote(run_dir) else self.LOCAL_POLL_S
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



Agreement = Callable[[], tuple[float, Directive]]


def start_agreement(loss_sum: float, count: int, local: Directive) -> Agreement:
    """Start the one all-reduce of what every rank must agree on after a step; the
    returned function waits for it and gives the mean loss over every rank's
    micro-batches (this rank's: `count` losses summing to `loss_sum`) and the strongest
    directive any rank saw (a vote per directive; the highest with a vote wins)."""
    votes = [1.0 if d == local else 0.0 for d in Directive]
    wait = all_reduce_async(torch.tensor([loss_sum, float(count), *votes], dtype=torch.float64))

    def answer() -> tuple[float, Directive]:
        total, seen, *voted = wait().tolist()
        directive = max(d for d in Directive if voted[int(d)] > 0)
        return total / seen, directive

    return answer


class StepRecords:
    """Writes each step's metrics record once its agreement is in, and says what the
    controller asked.

    A step's agreement runs while the next step computes, so the ranks meet once per
    step (in the gradients' all-reduce), not twice: a record is written, and a
    directive acted on, one step later. At a checkpoint boundary, and once a directive
    has come, the step's own agreement is waited for at once: a checkpoint is never
    written before the attempt knows it still owns the run, and a stop saves the step
    it stops at with its record written.
    """

    def __init__(self, metrics, run_dir: Path) -> None:
        self.metrics = metrics
        self.run_dir = run_dir
        self.pending: tuple[dict, Agreement] | None = None

    def settle(self, record: dict, agreement: Agreement, at_once: bool) -> Directive:
        """Hand over this step's record (without its loss) and agreement; returns the
        strongest directive answered so far (CONTINUE when none is due yet)."""
        directive = Directive.CONTINUE
        if self.pending is not None:
            directive = self._finish(*self.pending)
            self.pending = None
        if at_once or directive != Directive.CONTINUE:
            return max(directive, self._finish(record, agreement))
        self.pending = (record, agreement)
        return directive

    def _finish(self, record: dict, agreement: Agreement) -> Directive:
        loss, directive = agreement()
        if directive == Directive.ABANDON:
            raise RunTakenOver(f"{self.run_dir} is owned by a newer driver; this attempt stops")
        self.metrics.write({**record, "loss": loss})
        return directive
