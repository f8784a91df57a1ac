"""The elastic controller: an explicit state machine over a worker group.

    SCHEDULING -> RUNNING -> FINISHED | STOPPED
                     |  \\-> (resize at a checkpoint boundary) -> SCHEDULING
                     \\-> RESTARTING -> SCHEDULING, or ERRORED when failures run out

Policies decide (`FailurePolicy`, `ScalingPolicy`); only the controller acts, and
it logs every decision with its reason to `events.jsonl`. The group is injected, so
the controller can be stepped by hand against a fake (tests/test_elastic_controller.py).
"""
from __future__ import annotations

import enum
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Protocol

from orchestrator.control import REQUESTS_FILE, Directive, write_directive
from orchestrator.elastic.policies import Fail, FailurePolicy, Resize, ScalingPolicy
from orchestrator.metrics import METRICS_FILE, EventLog, JsonlFollower, read_jsonl

log = logging.getLogger(__name__)


class State(enum.Enum):
    SCHEDULING = "scheduling"
    RUNNING = "running"
    RESTARTING = "restarting"
    FINISHED = "finished"
    STOPPED = "stopped"
    ERRORED = "errored"


TERMINAL = {State.FINISHED, State.STOPPED, State.ERRORED}


class WorkerGroup(Protocol):
    def spawn_up_to(self, total: int) -> None: ...
    def refresh(self, wait_s: float = 0.0) -> int: ...
    def ready_count(self) -> int: ...
    def start(self, world_size: int, attempt: int, failure: dict | None, owner: str) -> None: ...
    def poll(self, timeout_s: float): ...
    def recover(self, drain_timeout_s: float) -> list[str]: ...
    def shutdown(self) -> None: ...


class ElasticController:
    def __init__(
        self,
        group: WorkerGroup,
        run_dir: Path,
        failure_policy: FailurePolicy,
        scaling_policy: ScalingPolicy,
        spares: int,
        replace_timeout_s: float,
        poll_interval_s: float = 0.25,
        drain_timeout_s: float = 10.0,
        startup_timeout_s: float = 120.0,
        clock=time.time,
    ) -> None:
        self.group = group
        self.run_dir = Path(run_dir)
        self.failure_policy = failure_policy
        self.scaling = scaling_policy
        self.spares = spares
        self.replace_timeout_s = replace_timeout_s
        self.poll_interval_s = poll_interval_s
        self.drain_timeout_s = drain_timeout_s
        self.startup_timeout_s = startup_timeout_s
        self.clock = clock
        self.events = EventLog(self.run_dir)
        # Requests left by an earlier run of this directory are history; the directive
        # file is claimed for this driver, which makes any orphaned workers of a dead
        # driver stop writing (see Directive.ABANDON).
        self.requests = JsonlFollower(self.run_dir / REQUESTS_FILE, from_end=True)
        self.owner = uuid.uuid4().hex
        write_directive(self.run_dir, self.owner, 0, Directive.CONTINUE)

        self.state = State.SCHEDULING
        self.attempt = 0
        self.world_size = 0
        self.failures = 0
        self.requested_workers: int | None = None
        self.pending_failure: dict | None = None
        self.wait_for: int | None = None  # workers to wait for before the next attempt
        self.wait_deadline = 0.0
        self.directive = Directive.CONTINUE
        self.error: str | None = None

    # ---- driving --------------------------------------------------------------------------
    def run(self) -> State:
        try:
            while self.state not in TERMINAL:
                self.step()
        finally:
            self.group.shutdown()
        return self.state

    def step(self) -> State:
        handler = {
            State.SCHEDULING: self._schedule,
            State.RUNNING: self._watch,
            State.RESTARTING: self._restart,
        }[self.state]
        new_state = handler()
        if new_state != self.state:
            self._record("state", state=new_state.value)
        self.state = new_state
        self._write_status()
        return new_state

    # ---- states ---------------------------------------------------------------------------
    def _schedule(self) -> State:
        """Start the next attempt with as many ready workers as the policy allows,
        after waiting (until the deadline) for the count this attempt should have."""
        want = self._wanted()
        self.group.spawn_up_to(want + self.spares)
        ready = self.group.refresh(wait_s=0.0)
        target = self.scaling.best(ready, self.requested_workers)
        if self.wait_for is None:
            self.wait_for, self.wait_deadline = want, self.clock() + self.startup_timeout_s
        still_waiting = ready < self.wait_for and self.clock() < self.wait_deadline
        if target is None or still_waiting:
            if target is None and self.clock() >= self.wait_deadline:
                self.error = (f"only {ready} workers could be started; scaling.workers needs at "
                              f"least {self.scaling.min_workers}")
                self._record("errored", reason=self.error)
                return State.ERRORED
            self.group.refresh(wait_s=self.poll_interval_s)
            return State.SCHEDULING
        self.wait_for = None
        self.attempt += 1
        if self.pending_failure is not None:
            self.pending_failure["world_size_after"] = target
        self._record("attempt", attempt=self.attempt, world_size=target, previous=self.world_size)
        self.world_size = target
        self.directive = Directive.CONTINUE
        self.group.start(target, self.attempt, self.pending_failure, self.owner)
        self.pending_failure = None
        return State.RUNNING

    def _watch(self) -> State:
        status = self.group.poll(self.poll_interval_s)
        if status.running:
            self._handle_requests()
            self._maybe_grow()
            return State.RUNNING
        if status.error is not None:
            return self._on_failure(status.error)
        if all(outcome == "finished" for outcome in status.outcomes):
            self._record("finished", attempt=self.attempt)
            return State.FINISHED
        if "stopped" in status.outcomes:
            self._record("stopped", attempt=self.attempt)
            return State.STOPPED
        # Every rank returned at a resize boundary: schedule at the new size, no waiting.
        self.wait_for, self.wait_deadline = 0, self.clock()
        return State.SCHEDULING

    def _on_failure(self, error: str) -> State:
        self.failures += 1
        decision = self.failure_policy.decide(self.failures)
        self._record("failure", error=error, failures=self.failures, decision=decision.reason)
        log.warning("%s (%s)", decision.reason, error)
        if isinstance(decision, Fail):
            self.error = f"{decision.reason}; last error: {error}"
            return State.ERRORED
        self.pending_failure = {
            "detected_at": self.clock(),
            "error": error,
            "last_step": _last_step(self.run_dir),
            "world_size_before": self.world_size,
        }
        return State.RESTARTING

    def _restart(self) -> State:
        """Let survivors unwind and drop what is gone. A worker lost on a node that is
        still there is replaced (by a spare at once, or a new process within
        failure.replace_timeout_s); a lost node is not waited for: the group shrinks."""
        lost_nodes = self.group.recover(self.drain_timeout_s)
        self.pending_failure["lost_nodes"] = len(lost_nodes)
        detected = self.pending_failure["detected_at"]
        self.wait_for = 0 if lost_nodes else self.world_size
        self.wait_deadline = detected + self.replace_timeout_s
        self._record("restarting", lost_nodes=lost_nodes, ready=self.group.ready_count(),
                     previous_world_size=self.world_size)
        return State.SCHEDULING

    # ---- while running ------------------------------------------------------------------------
    def _handle_requests(self) -> None:
        for request in self.requests.poll():
            if request.get("stop"):
                self._record("stop_requested")
                self._direct(Directive.STOP)
            elif "workers" in request:
                workers = int(request["workers"])
                if self.scaling.best(workers, workers) != workers:
                    self._record("scale_refused", workers=workers,
                                 reason="outside scaling.workers or the batch does not divide")
                    continue
                self.requested_workers = workers
                self._record("scale_requested", workers=workers)
        decision = self.scaling.decide(self.world_size, self.group.ready_count(), self.requested_workers)
        if isinstance(decision, Resize) and self.requested_workers is not None:
            self.group.spawn_up_to(decision.workers + self.spares)
            self._direct(Directive.RESIZE, reason=decision.reason)

    def _wanted(self) -> int:
        return self.scaling.best(10**9, self.requested_workers) or self.scaling.max_workers

    def _maybe_grow(self) -> None:
        want = self._wanted()
        if self.world_size >= want:
            return
        self.group.spawn_up_to(want + self.spares)
        ready = self.group.refresh(wait_s=0.0)
        decision = self.scaling.decide(self.world_size, ready, self.requested_workers)
        if isinstance(decision, Resize) and decision.workers > self.world_size:
            self._direct(Directive.RESIZE, reason=decision.reason)

    def _direct(self, directive: Directive, reason: str = "") -> None:
        if directive <= self.directive:
            return
        self.directive = directive
        write_directive(self.run_dir, self.owner, self.attempt, directive)
        self._record("directive", directive=directive.name, reason=reason)

    # ---- bookkeeping ----------------------------------------------------------------------
    def _record(self, event: str, **fields) -> None:
        self.events.write(event, **fields)
        log.info("%s %s", event, fields)

    def _write_status(self) -> None:
        status = {
            "state": self.state.value, "attempt": self.attempt, "world_size": self.world_size,
            "failures": self.failures, "requested_workers": self.requested_workers,
            "time": self.clock(),
        }
        (self.run_dir / "controller.json").write_text(json.dumps(status))


def _last_step(run_dir: Path) -> int:
    steps = [r["step"] for r in read_jsonl(run_dir / METRICS_FILE) if "step" in r]
    return max(steps, default=0)
