"""Small policies that only decide; the controller carries their decisions out.

Exercised by: pytest tests/test_elastic_controller.py
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


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
    max_failures: int

    def decide(self, failures: int) -> Restart | Fail:
        """`failures` counts the failure just seen."""
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
