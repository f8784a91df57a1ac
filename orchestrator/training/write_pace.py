"""Turns the training loop lends a background checkpoint write, where no core is free.

Where training keeps every core busy (CPU workers, whose torch threads are the node's
cores), whatever a background write takes is taken from the steps it runs beside,
whatever its priority: written as fast as it can go, a 100 MB save made the two or
three steps after it 20-50 % slower on a 2-core machine (benchmarks/results/
checkpoint_stall_*). Paced, the write proceeds only in turns: at the end of each step
the training thread grants the writer a budget of bytes and sleeps until they are
written, so each step lends it the same small slice of its time and no step stalls.
The budget is sized to finish the write well before the next save is due.

Where a core is free (accelerator workers, or threads left to spare) the write is not
paced: it runs beside training at idle priority, on that core.

Whatever waits for the write (the next save, the end of the run, a stop) `release`s it,
so it runs on unpaced: nothing waits on a turn that will not come. An attempt that ends
without waiting (it failed) `abandon`s it instead: the write stops at its next turn, and
its checkpoint is never published by a writer that outlived its attempt.

Exercised by: pytest tests/test_write_pace.py tests/test_checkpoint.py -k background
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

# How long a step waits for the writer to take its turn at most: a writer that does not
# come back (a stalled file system) must not stall training with it.
TURN_TIMEOUT_S = 2.0


class WriteAbandoned(RuntimeError):
    """Raised in a paced write whose attempt ended without waiting for it."""

MIN_TURN_BYTES = 1 << 20  # below this a turn's handover costs more than its bytes


class WritePace:
    """The turns of one rank's background writes; `paced=False` never waits."""

    def __init__(self, paced: bool) -> None:
        self.paced = paced
        self._changed = threading.Condition()
        self._released = True
        self._abandoned = False
        self._turns = 1
        self._turn_bytes = MIN_TURN_BYTES
        self._budget = 0  # bytes the writer may write before it asks for the next turn
        self._started = False  # the write has had its first turn (its planning)
        self._active = False  # a write is between `writes` and its end
        self._asking = False  # the writer waits for a turn
        self._granted = False  # a turn was granted and not yet taken

    def begin(self, turns: int) -> None:
        """Pace the next write (when paced) to end within about `turns` turns."""
        with self._changed:
            self._released, self._abandoned = not self.paced, False
            self._turns = max(1, turns)
            self._turn_bytes = MIN_TURN_BYTES

    def expect(self, total_bytes: int) -> None:
        """The write about to start is of about `total_bytes`: size the turns to it."""
        with self._changed:
            self._turn_bytes = max(MIN_TURN_BYTES, -(-total_bytes // self._turns))

    def release(self) -> None:
        """Let the write run on unpaced (whatever waits for it calls this)."""
        with self._changed:
            self._released = True
            self._changed.notify_all()

    def abandon(self) -> None:
        """Stop the write at its next turn (the attempt ended without waiting for it)."""
        with self._changed:
            self._abandoned = self._released = True
            self._changed.notify_all()

    def turn(self) -> None:
        """The training thread's turn: when a write is in progress, grant it a turn and
        wait until it has taken it (at the end of each step; cheap otherwise). The
        first turn of a write is its planning (dcp's, with the other ranks' writers, in
        their turns of the same step), each next one a budget of bytes."""
        with self._changed:
            if self._released or not self._active:
                return
            self._budget = self._turn_bytes if self._started else 0
            self._started = self._granted = True
            self._changed.notify_all()
            self._changed.wait_for(self._turn_taken, timeout=TURN_TIMEOUT_S)

    def _turn_taken(self) -> bool:
        return self._released or not self._active or (self._asking and not self._granted)

    # ---- the writer's side --------------------------------------------------------------
    @contextmanager
    def writes(self) -> Iterator[None]:
        """Around a write: it starts at its first turn and runs in turns until it ends."""
        with self._changed:
            self._active, self._started, self._budget = True, False, 0
            self._ask()
        try:
            yield
        finally:
            with self._changed:
                self._active = False
                self._changed.notify_all()

    def allowance(self, wanted: int) -> int:
        """How many of `wanted` bytes the writer may write now: waits for a turn when
        this one's budget is spent (all of them once released).

        Raises:
            WriteAbandoned: the attempt ended without waiting for the write.
        """
        with self._changed:
            if self._budget == 0:
                self._ask()
            if self._released:
                return wanted
            granted = min(wanted, self._budget)
            self._budget -= granted
            return granted

    def _ask(self) -> None:
        """Wait for the next turn (the lock held)."""
        if self._abandoned:
            raise WriteAbandoned("the attempt ended before this checkpoint was written")
        if self._released:
            return
        self._asking = True
        self._changed.notify_all()
        self._changed.wait_for(lambda: self._released or self._granted)
        self._asking = self._granted = False
        if self._abandoned:
            raise WriteAbandoned("the attempt ended before this checkpoint was written")
