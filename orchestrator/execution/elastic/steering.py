"""Steering a running attempt: the user's scale and stop requests, growing onto new
capacity, moving off nodes that are about to go, and the directive that tells the
workers to checkpoint and return.

The controller asks for this once per look at a running attempt; every decision is
recorded with its reason through the controller's `record`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from orchestrator.execution.elastic.policies import Resize, ScalingPolicy
from orchestrator.run.control import Directive, RequestInbox, write_directive
from orchestrator.run.records import RunRecords


@dataclass(frozen=True)
class Evacuation:
    """Nodes of the attempt that Ray drains (a preemption notice), and when it was seen."""

    nodes: tuple[str, ...]
    noticed_at: float
    deadline: float  # the earliest of the nodes' deadlines, Unix seconds (inf: none)


class Steering:
    def __init__(self, run_dir: Path, owner: str, group, scaling: ScalingPolicy, spares: int,
                 record: Callable[..., None], clock: Callable[[], float] = time.time) -> None:
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
        self.clock = clock
        self.evacuation: Evacuation | None = None

    def wanted(self) -> int:
        """The worker count to aim for: the user's request, else the most that fits."""
        return self.scaling.best(10**9, self.requested_workers) or self.scaling.max_workers

    def new_attempt(self, attempt: int) -> None:
        self.attempt = attempt
        self.directive = Directive.CONTINUE

    def while_running(self, world_size: int) -> None:
        self._handle_requests(world_size)
        self._watch_drains()
        self._maybe_grow(world_size)

    def leave_draining_nodes(self) -> Evacuation | None:
        """Between attempts: give up the workers on nodes about to go. Returns the
        evacuation the attempt that just ended made, if it made one."""
        evacuation, self.evacuation = self.evacuation, None
        nodes = set(self.group.draining()) | set(evacuation.nodes if evacuation else ())
        if nodes:
            self.group.leave(nodes)
        return evacuation

    def moved_off(self, world_size: int) -> dict | None:
        """After an attempt returned at a boundary: leave draining nodes. When a
        preemption notice ended the attempt (it checkpointed and returned), the record
        the next attempt carries as its failure, with no steps to redo."""
        evacuation = self.leave_draining_nodes()
        if evacuation is None:
            return None
        margin = evacuation.deadline - self.clock()
        self.record("moved_off_nodes", attempt=self.attempt, nodes=list(evacuation.nodes),
                    before_deadline_s=round(margin, 1) if margin != float("inf") else None)
        return {
            "detected_at": evacuation.noticed_at,
            "error": f"preemption notice: {len(evacuation.nodes)} node(s) draining",
            "last_step": RunRecords(self.run_dir).last_step(),
            "world_size_before": world_size,
            "lost_nodes": len(evacuation.nodes),
            "preempted": True,
        }

    def _watch_drains(self) -> None:
        """A node of the attempt is draining: checkpoint now and move off it before its
        deadline (steps_redone 0), rather than lose the steps since the last checkpoint
        when it vanishes. Spares on such a node are just given up."""
        if self.evacuation is not None:
            return
        drains = self.group.draining()
        if not drains:
            return
        if not self.group.running_on(drains):
            self.group.leave(drains)
            self.record("left_draining_nodes", nodes=sorted(drains), reason="only spares there")
            return
        now = self.clock()
        self.evacuation = Evacuation(tuple(sorted(drains)), now, min(drains.values()))
        left = self.evacuation.deadline - now
        self.record("preemption_notice", nodes=list(self.evacuation.nodes),
                    deadline_in_s=round(left, 1) if left != float("inf") else None)
        self._direct(Directive.EVACUATE, reason=f"{len(drains)} node(s) draining: checkpoint now and move off")

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
        """Resize at the next boundary when more workers are ready than the attempt has
        (the controller starts them: ElasticController._watch)."""
        if world_size >= self.wanted():
            return
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
