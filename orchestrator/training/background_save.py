"""At most one checkpoint write in flight, on a thread of its own.

A checkpoint is saved in two halves (checkpoint.py). On the training thread every rank
takes its state (handed over or copied: checkpoint_write.py) and captures its RNG
streams: that is what the checkpoint holds, so training may go on as soon as it is
taken. The second half (writing it, and on rank 0 publishing the checkpoint) runs here while
training goes on. The next save, and anything that ends the attempt, waits for it
first; an error it met is raised then, on the training thread, where the attempt fails
as it would had the write failed in line.

With `background=False` the second half runs in line, at once: the synchronous save.

The thread runs at the scheduler's idle priority where the OS has one (Linux's
SCHED_IDLE): writing and hashing a checkpoint takes CPU time, and where a core is free
it takes that one. Where training keeps every core busy (CPU workers) idle priority is
not enough (the write still slowed the steps beside it by 20-50 %), and the write runs
in the turns each step lends it instead (write_pace.py). Whatever waits for it (the
next save, the end) sleeps, which leaves it the core.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from orchestrator.training.cpu_priority import run_when_idle


class BackgroundSaves:
    def __init__(self, background: bool) -> None:
        self.background = background
        self._thread: threading.Thread | None = None
        self._result: Any = None
        self._error: BaseException | None = None

    def start(self, finish: Callable[[], Any]) -> None:
        """Run `finish` (in the background when enabled), after the one before it."""
        self.wait()
        if not self.background:
            self._result = finish()
            return
        self._thread = threading.Thread(target=self._run, args=(finish,), daemon=True,
                                        name="checkpoint-save")
        self._thread.start()

    def busy(self) -> bool:
        """Whether a save is being written in the background now."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> Any:
        """Wait for the save in flight; returns what it returned (None when there was none).

        Raises:
            Exception: what the save raised.
        """
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        result, error = self._result, self._error
        self._result = self._error = None
        if error is not None:
            raise error
        return result

    def _run(self, finish: Callable[[], Any]) -> None:
        # A daemon thread: a rank whose attempt failed leaves a write that waits on a dead
        # peer behind (it fails at the side group's timeout) and never publishes it.
        run_when_idle()
        try:
            self._result = finish()
        except BaseException as error:  # handed to the training thread by wait()
            self._error = error

