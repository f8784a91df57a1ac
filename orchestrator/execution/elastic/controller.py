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
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from orchestrator.execution.elastic.policies import Fail, FailurePolicy, ScalingPolicy
from orchestrator.execution.elastic.steering import Steering
from orchestrator.execution.failures import FailureReport
from orchestrator.run.files import RunFiles, atomic_write_text
from orchestrator.run.records import EventLog, RunRecords
from orchestrator.run.storage import run_path

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
    def starting_count(self) -> int: ...
    def start(self, world_size: int, attempt: int, failure: dict | None, owner: str) -> None: ...
    def poll(self, timeout_s: float): ...
    def recover(self, drain_timeout_s: float) -> list[str]: ...
    def draining(self) -> dict[str, float]: ...
    def running_on(self, nodes) -> bool: ...
    def leave(self, nodes) -> None: ...
    def shutdown(self) -> None: ...


@dataclass(frozen=True)
class Timings:
    """How long the controller waits for each thing, in seconds."""

    replace_timeout_s: float = 20.0  # for a replacement worker before going on smaller
    poll_interval_s: float = 0.25  # between looks at a running attempt
    drain_timeout_s: float = 10.0  # for survivors of a failed attempt to unwind
    startup_timeout_s: float = 120.0  # for the workers an attempt should start with


class ElasticController:
    def __init__(self, group: WorkerGroup, run_dir: Path, failure_policy: FailurePolicy,
                 scaling_policy: ScalingPolicy, spares: int, timings: Timings = Timings(),
                 clock=time.time, early_spares: int | None = None) -> None:
        self.group = group
        self.run_dir = run_path(run_dir)
        self.failure_policy = failure_policy
        self.scaling = scaling_policy
        self.spares = spares
        # Spares started before the first attempt runs (the rest start once it does).
        self.early_spares = spares if early_spares is None else early_spares
        self.timings = timings
        self.clock = clock
        self.events = EventLog(self.run_dir)
        self.owner = uuid.uuid4().hex
        self.steering = Steering(self.run_dir, self.owner, group, scaling_policy, spares, self._record, clock)

        self.state = State.SCHEDULING
        self.attempt = 0
        self.world_size = 0
        self.failures = 0
        self.last_failure: tuple[int, FailureReport] | None = None  # (attempt, what ended it)
        self.pending_failure: dict | None = None
        self.wait_for: int | None = None  # workers to wait for before the next attempt
        self.wait_deadline = 0.0
        self.waiting: str | None = None  # why the next attempt has not started, while it waits
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
        write_status(self)
        return new_state

    # ---- states ---------------------------------------------------------------------------
    def _schedule(self) -> State:
        """Start the next attempt with as many ready workers as the policy allows,
        after waiting (until the deadline) for the count this attempt should have."""
        want = self.steering.wanted()
        self.steering.leave_draining_nodes()
        asked = want + (self.spares if self.attempt else self.early_spares)
        self.group.spawn_up_to(asked)
        ready = self.group.refresh(wait_s=0.0)
        target = self.scaling.best(ready, self.steering.requested_workers)
        if self.wait_for is None:
            self.wait_for, self.wait_deadline = want, self.clock() + self.timings.startup_timeout_s
        # Workers already starting are waited for; capacity that is not there yet (an
        # autoscaler's nodes) is not: the attempt starts with the minimum, and grows at
        # a checkpoint boundary as workers come (steering.py). After a failure the dead
        # worker's slot frees once Ray sees it gone: its replacement is waited for.
        starting = self.group.starting_count()
        expected = starting or target is None or self.pending_failure is not None
        still_waiting = ready < self.wait_for and self.clock() < self.wait_deadline and expected
        if target is None or still_waiting:
            if target is None and self.clock() >= self.wait_deadline:
                self.error = (f"only {ready} workers could be started; scaling.workers needs at "
                              f"least {self.scaling.min_workers}")
                self._record("errored", reason=self.error)
                return State.ERRORED
            self.waiting = (f"for {self.wait_for - ready} more workers ({starting} starting)" if target
                            else f"for scaling.workers' minimum of {self.scaling.min_workers}: {ready} ready, "
                                 f"{starting} starting, capacity for {asked} asked of the cluster")
            self.group.refresh(wait_s=self.timings.poll_interval_s)
            return State.SCHEDULING
        self.wait_for = self.waiting = None
        self.attempt += 1
        if self.pending_failure is not None:
            self.pending_failure["world_size_after"] = target
        self._record("attempt", attempt=self.attempt, world_size=target, previous=self.world_size)
        self.world_size = target
        self.steering.new_attempt(self.attempt)
        self.group.start(target, self.attempt, self.pending_failure, self.owner)
        self.pending_failure = None
        return State.RUNNING

    def _watch(self) -> State:
        status = self.group.poll(self.timings.poll_interval_s)
        if status.running:
            self.group.spawn_up_to(self.steering.wanted() + self.spares)  # spares, and replacements for them
            self.steering.while_running(self.world_size)
            return State.RUNNING
        if status.failure is not None:
            return self._on_failure(status.failure)
        if all(outcome == "finished" for outcome in status.outcomes):
            self._record("finished", attempt=self.attempt)
            return State.FINISHED
        if "stopped" in status.outcomes:
            self._record("stopped", attempt=self.attempt)
            return State.STOPPED
        # Every rank returned at a resize boundary: schedule at the new size, no waiting.
        self.wait_for, self.wait_deadline = 0, self.clock()
        # A preemption notice ended it: the next attempt says so as its failure.
        self.pending_failure = self.steering.moved_off(self.world_size)
        return State.SCHEDULING

    def _on_failure(self, failure: FailureReport) -> State:
        self.failures += 1
        decision = self.failure_policy.decide(self.failures, failure, self.attempt, self.last_failure)
        self.last_failure = (self.attempt, failure)
        detected_at = self.clock()
        self._record("failure", attempt=self.attempt, failures=self.failures, decision=decision.reason,
                     detected_at=detected_at, error=failure.text(), **failure.to_dict())
        if isinstance(decision, Fail):
            self.error = f"{decision.reason}\n" + failure.text()
            return State.ERRORED
        self.pending_failure = {
            "detected_at": detected_at,
            "error": failure.headline(),
            # The step before the one a rank was on is done, even where its record was still
            # waiting for the step's all-reduce (training/directives.py: StepRecords).
            "last_step": max(RunRecords(self.run_dir).last_step(), (failure.step or 1) - 1),
            "world_size_before": self.world_size,
        }
        return State.RESTARTING

    def _restart(self) -> State:
        """Let survivors unwind and drop what is gone. A worker lost on a node that is
        still there is replaced (by a spare at once, or a new process within
        failure.replace_timeout_s); a lost node is not waited for: the group shrinks."""
        lost_nodes = self.group.recover(self.timings.drain_timeout_s)
        self.pending_failure["lost_nodes"] = len(lost_nodes)
        detected = self.pending_failure["detected_at"]
        self.wait_for = 0 if lost_nodes else self.world_size
        self.wait_deadline = detected + self.timings.replace_timeout_s
        self._record("restarting", lost_nodes=lost_nodes, ready=self.group.ready_count(),
                     previous_world_size=self.world_size)
        return State.SCHEDULING

    # ---- bookkeeping ----------------------------------------------------------------------
    def _record(self, event: str, **fields) -> None:
        self.events.write(event, **fields)
        log.info("%s %s", event, fields)


def write_status(controller: ElasticController) -> None:
    """The controller's state for `orchestrator status`: the attempt, the workers
    wanted, starting, ready and training, and why the next attempt waits, if it does."""
    group, steering = controller.group, controller.steering
    status = {
        "state": controller.state.value, "attempt": controller.attempt, "world_size": controller.world_size,
        "failures": controller.failures, "requested_workers": steering.requested_workers,
        "workers": {"wanted": steering.wanted() + controller.spares, "starting": group.starting_count(),
                    "ready": group.ready_count(), "training": controller.world_size},
        "waiting": controller.waiting if controller.state == State.SCHEDULING else None,
        "time": controller.clock(),
    }
    atomic_write_text(RunFiles(controller.run_dir).controller_state, json.dumps(status))
