"""Small policies that only decide; the controller carries their decisions out.

Exercised by: pytest tests/test_elastic_controller.py
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from orchestrator.execution.failures import HANG, FailureReport


@dataclass(frozen=True)
class Restart:
    reason: str


@dataclass(frozen=True)
class Fail:
    reason: str


@dataclass(frozen=True)
class Noop:
    reason: str = ""


@dataclass(frozen=True)
class Resize:
    workers: int
    reason: str


@dataclass(frozen=True)
class FailurePolicy:
    """Restarts after a failure, unless failures ran out or the failure is deterministic:
    the attempt failed the same way (same error, same step; for a hang, the same stuck
    ranks) as the attempt just before it. A restart resumes from a checkpoint before the
    failing step, so a second identical failure says the code, not the cluster, fails;
    a dead worker or a lost peer is never taken for that (see failures.REPEATABLE)."""

    max_failures: int

    def decide(self, failures: int, failure: FailureReport, attempt: int,
               previous: tuple[int, FailureReport] | None) -> Restart | Fail:
        """`failures` counts `failure`, the one just seen, which ended `attempt`;
        `previous` is the failure before it, with the attempt it ended."""
        if previous is not None and previous[0] == attempt - 1 and failure.repeats(previous[1]):
            what = "error" if failure.kind != HANG else \
                f"hang of rank {', '.join(map(str, failure.stuck_ranks))}"
            return Fail(f"deterministic failure: the same {what} at step {failure.step} in two "
                        f"attempts in a row; not a lost worker")
        if failures > self.max_failures:
            return Fail(f"failure {failures} exceeds failure.max_failures {self.max_failures}")
        return Restart(f"restarting: failure {failures} of max {self.max_failures}")


@dataclass(frozen=True)
class ScalingPolicy:
    """Picks the worker count: as many as can run, within [min, max], among the counts
    the batch can be split over, and no more than the user asked for."""

    min_workers: int
    max_workers: int
    valid: Callable[[int], bool]

    def best(self, capacity: int, requested: int | None = None) -> int | None:
        ceiling = min(self.max_workers, capacity, requested or self.max_workers)
        for n in range(ceiling, self.min_workers - 1, -1):
            if self.valid(n):
                return n
        return None

    def decide(self, current: int, capacity: int, requested: int | None = None) -> Noop | Resize:
        target = self.best(capacity, requested)
        if target is None or target == current:
            return Noop()
        if target > current:
            return Resize(target, f"growing {current} -> {target}: {capacity} workers available")
        return Resize(target, f"shrinking {current} -> {target}: requested {requested}")
