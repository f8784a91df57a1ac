"""Steering a running attempt: the user's scale and stop requests, growing onto new
capacity, and the directive that tells the workers to checkpoint and return.

The controller asks for this once per look at a running attempt; every decision is
recorded with its reason through the controller's `record`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from orchestrator.execution.elastic.policies import Resize, ScalingPolicy
from orchestrator.run.control import Directive, RequestInbox, write_directive


class Steering:
    def __init__(self, run_dir: Path, owner: str, group, scaling: ScalingPolicy, spares: int,
                 record: Callable[..., None]) -> None:
        self.run_dir = run_dir
        self.owner = owner
        self.group = group
        self.scaling = scaling
        self.spares = spares
        self.record = record
        # Requests left by an earlier run of this directory are history; the directive
        # file is claimed for this driver, which makes any orphaned workers of a dead
        # driver stop writing (see Directive.ABANDON).
        self.requests = RequestInbox(run_dir)
        write_directive(run_dir, owner, 0, Directive.CONTINUE)
        self.requested_workers: int | None = None
        self.attempt = 0
        self.directive = Directive.CONTINUE

    def wanted(self) -> int:
        """The worker count to aim for: the user's request, else the most that fits."""
        return self.scaling.best(10**9, self.requested_workers) or self.scaling.max_workers

    def new_attempt(self, attempt: int) -> None:
        self.attempt = attempt
        self.directive = Directive.CONTINUE

    def while_running(self, world_size: int) -> None:
        self._handle_requests(world_size)
        self._maybe_grow(world_size)

    def _handle_requests(self, world_size: int) -> None:
        requests, rejected = self.requests.poll()
        for line, reason in rejected:
            self.record("request_rejected", line=line, reason=reason)
        for request in requests:
            if request.get("stop"):
                self.record("stop_requested")
                self._direct(Directive.STOP)
            else:
                workers = request["workers"]
                if self.scaling.best(workers, workers) != workers:
                    self.record("scale_refused", workers=workers,
                                reason="outside scaling.workers or the batch does not divide")
                    continue
                self.requested_workers = workers
                self.record("scale_requested", workers=workers)
        decision = self.scaling.decide(world_size, self.group.ready_count(), self.requested_workers)
        if isinstance(decision, Resize) and self.requested_workers is not None:
            self.group.spawn_up_to(decision.workers + self.spares)
            self._direct(Directive.RESIZE, reason=decision.reason)

    def _maybe_grow(self, world_size: int) -> None:
        want = self.wanted()
        if world_size >= want:
            return
        self.group.spawn_up_to(want + self.spares)
        ready = self.group.refresh(wait_s=0.0)
        decision = self.scaling.decide(world_size, ready, self.requested_workers)
        if isinstance(decision, Resize) and decision.workers > world_size:
            self._direct(Directive.RESIZE, reason=decision.reason)

    def _direct(self, directive: Directive, reason: str = "") -> None:
        if directive <= self.directive:
            return
        self.directive = directive
        write_directive(self.run_dir, self.owner, self.attempt, directive)
        self.record("directive", directive=directive.name, reason=reason)
