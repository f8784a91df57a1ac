"""The elastic controller stepped by hand against a fake worker group: no Ray.

Exercised by: pytest tests/test_elastic_controller.py
"""
from __future__ import annotations

import dataclasses
import json

import pytest

from orchestrator.run.control import Directive, request
from orchestrator.execution.elastic.controller import ElasticController, State, Timings
from orchestrator.execution.elastic.group import AttemptStatus
from orchestrator.execution.elastic.policies import Fail, FailurePolicy, Noop, Resize, Restart, ScalingPolicy
from orchestrator.execution.failures import DIED, ERROR, HANG, FailureReport
from orchestrator.run.summary import summarize


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class FakeGroup:
    """Ready workers are a number; the test decides what each poll returns."""

    def __init__(self, ready: int, clock: FakeClock):
        self.ready = ready
        self.clock = clock
        self.starting = 0  # become ready on the next refresh
        self.capacity = 100  # how many actors the cluster could host
        self.started: list[tuple[int, int, dict | None]] = []
        self.status = AttemptStatus(running=True)
        self.lost_on_recover: list[str] = []
        self.dead_on_recover = 0
        self.drains: dict[str, float] = {}  # node -> deadline: one worker on each
        self.attempt_nodes: set[str] = set()  # the nodes the attempt runs on
        self.left: list[str] = []

    def spawn_up_to(self, total):
        self.starting = max(0, min(total, self.capacity) - self.ready)

    def refresh(self, wait_s=0.0):
        self.clock.now += wait_s
        self.ready += self.starting
        self.starting = 0
        return self.ready

    def ready_count(self):
        return self.ready

    def starting_count(self):
        return self.starting

    def start(self, world_size, attempt, failure, owner):
        self.started.append((world_size, attempt, failure))

    def poll(self, timeout_s):
        self.clock.now += timeout_s
        return self.status

    def recover(self, drain_timeout_s):
        self.ready -= self.dead_on_recover
        self.capacity -= self.dead_on_recover if self.lost_on_recover else 0
        return self.lost_on_recover

    def draining(self):
        return dict(self.drains)

    def running_on(self, nodes):
        return bool(self.attempt_nodes & set(nodes))

    def leave(self, nodes):
        for node in nodes:
            self.drains.pop(node, None)
            self.left.append(node)
            self.ready -= 1
            self.capacity -= 1

    def shutdown(self):
        pass


def make(tmp_path, ready=3, min_workers=1, max_workers=2, spares=1, max_failures=2, valid=lambda n: True):
    clock = FakeClock()
    group = FakeGroup(ready, clock)
    controller = ElasticController(
        group, tmp_path, FailurePolicy(max_failures), ScalingPolicy(min_workers, max_workers, valid),
        spares=spares, timings=Timings(replace_timeout_s=10.0), clock=clock,
    )
    return controller, group, clock


def run_until(controller, state, limit=200):
    for _ in range(limit):
        if controller.step() == state:
            return
    raise AssertionError(f"never reached {state}; at {controller.state}")


def events(tmp_path):
    return [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]


def directive(tmp_path):
    return json.loads((tmp_path / "directive.json").read_text())["directive"]


def worker_died(step=4, rank=1):
    """What a killed worker's attempt reports (its peers' broken collectives rank below it)."""
    return FailureReport(kind=DIED, type="WorkerDied", message=f"worker process died (rank {rank} on node a)",
                         rank=rank, step=step)


def code_error(step=5, error_type="ValueError", message="deliberate failure at step 5"):
    return FailureReport(kind=ERROR, type=error_type, message=message, rank=0, step=step,
                         frames=("tests/failing_models.py:38 in forward", "strategies/base.py:114 in forward_backward"))


def hang(step=3, stuck=(1,)):
    return FailureReport(kind=HANG, type="CollectiveHang", message=f"collective hang at step {step}: rank 1 "
                         "never reached it; rank 0 timed out waiting in recv in backward", rank=stuck[0],
                         step=step, stuck_ranks=stuck)


def fail_attempt(controller, group, failure):
    """The running attempt fails with `failure`; returns the controller's next state.
    The next attempt runs until the test says otherwise."""
    group.status = AttemptStatus(running=False, failure=failure)
    state = controller.step()
    group.status = AttemptStatus(running=True)
    return state


def test_policies_decide_only():
    policy = FailurePolicy(max_failures=2)
    assert isinstance(policy.decide(2, worker_died(), 2, None), Restart)
    assert "failure 2 of max 2" in policy.decide(2, worker_died(), 2, None).reason
    assert isinstance(policy.decide(3, worker_died(), 3, None), Fail)
    same = policy.decide(2, code_error(), attempt=2, previous=(1, code_error()))
    assert isinstance(same, Fail) and same.reason == (
        "deterministic failure: the same error at step 5 in two attempts in a row; not a lost worker")
    assert isinstance(policy.decide(2, code_error(), attempt=3, previous=(1, code_error())), Restart)
    scaling = ScalingPolicy(1, 4, valid=lambda n: n != 3)
    assert scaling.best(capacity=3) == 2  # 3 workers cannot split the batch
    assert scaling.best(capacity=10, requested=1) == 1
    assert scaling.best(capacity=0) is None
    assert isinstance(scaling.decide(current=2, capacity=4), Resize)
    assert isinstance(scaling.decide(current=4, capacity=9), Noop)


def test_a_failed_worker_is_replaced_by_a_spare_at_the_same_size(tmp_path):
    controller, group, clock = make(tmp_path, ready=3)
    run_until(controller, State.RUNNING)
    assert group.started[-1][:2] == (2, 1)
    group.dead_on_recover = 1
    assert fail_attempt(controller, group, worker_died()) == State.RESTARTING
    run_until(controller, State.RUNNING)
    world_size, attempt, failure = group.started[-1]
    assert (world_size, attempt) == (2, 2)
    assert failure["world_size_before"] == 2 and failure["world_size_after"] == 2
    assert failure["detected_at"] <= clock.now
    assert [e["event"] for e in events(tmp_path)].count("failure") == 1


def test_a_lost_node_shrinks_the_group_without_waiting(tmp_path):
    controller, group, clock = make(tmp_path, ready=2, spares=0)
    group.capacity = 2  # two nodes, one worker each
    run_until(controller, State.RUNNING)
    group.dead_on_recover, group.lost_on_recover = 1, ["node-b"]
    fail_attempt(controller, group, worker_died())
    detected = clock.now
    run_until(controller, State.RUNNING)
    assert group.started[-1][0] == 1
    assert clock.now - detected < 1.0  # no replacement timeout was waited out


def test_a_preemption_notice_checkpoints_now_and_moves_off_the_node(tmp_path):
    controller, group, clock = make(tmp_path, ready=2, spares=0)
    group.capacity = 2  # two nodes, one worker each
    group.attempt_nodes = {"node-a", "node-b"}
    run_until(controller, State.RUNNING)
    group.drains = {"node-b": clock.now + 20}
    controller.step()
    assert directive(tmp_path) == Directive.EVACUATE.name
    notice = next(e for e in events(tmp_path) if e["event"] == "preemption_notice")
    assert notice["nodes"] == ["node-b"] and notice["deadline_in_s"] == pytest.approx(20, abs=1)
    group.status = AttemptStatus(running=False, outcomes=["resize", "resize"])  # checkpointed, returned
    controller.step()
    group.status = AttemptStatus(running=True)
    run_until(controller, State.RUNNING)
    world_size, attempt, failure = group.started[-1]
    assert (world_size, attempt) == (1, 2) and group.left == ["node-b"]
    assert failure["preempted"] and failure["world_size_before"] == 2 and failure["world_size_after"] == 1
    assert "failure" not in [e["event"] for e in events(tmp_path)]  # no failure was counted
    assert controller.failures == 0


def test_spares_on_a_draining_node_are_given_up_without_stopping_the_attempt(tmp_path):
    controller, group, clock = make(tmp_path, ready=3, spares=1)
    group.attempt_nodes = {"node-a"}
    run_until(controller, State.RUNNING)
    group.drains = {"node-c": clock.now + 20}
    controller.step()
    assert directive(tmp_path) == Directive.CONTINUE.name and group.left == ["node-c"]


def test_a_lost_worker_without_spare_is_waited_for_then_the_group_shrinks(tmp_path):
    controller, group, clock = make(tmp_path, ready=2, spares=0)
    run_until(controller, State.RUNNING)
    group.dead_on_recover, group.capacity = 1, 1  # no room for a replacement
    fail_attempt(controller, group, worker_died())
    detected = clock.now
    run_until(controller, State.RUNNING)
    assert group.started[-1][0] == 1
    assert clock.now - detected >= 10.0  # failure.replace_timeout_s


def test_failures_beyond_the_maximum_end_the_run(tmp_path):
    controller, group, _ = make(tmp_path, max_failures=1)
    run_until(controller, State.RUNNING)
    fail_attempt(controller, group, worker_died(step=4))
    run_until(controller, State.RUNNING)
    assert fail_attempt(controller, group, worker_died(step=4)) == State.ERRORED
    assert "exceeds failure.max_failures 1" in controller.error


def test_the_group_starts_with_what_is_there_and_grows_at_a_checkpoint_boundary(tmp_path):
    """Capacity that is not there yet (an autoscaler's nodes, a node coming back) is not
    waited for: the job starts with what is ready, and grows when more comes."""
    controller, group, clock = make(tmp_path, ready=1, max_workers=3, spares=0)
    group.capacity = 1  # room for one worker now
    started = clock.now
    run_until(controller, State.RUNNING)
    assert group.started[-1][0] == 1 and clock.now - started < 1.0  # not the start-up timeout
    group.capacity = 3  # the nodes came
    controller.step()
    controller.step()
    assert directive(tmp_path) == Directive.RESIZE.name
    group.status = AttemptStatus(running=False, outcomes=["resize"])
    controller.step()
    group.status = AttemptStatus(running=True)
    run_until(controller, State.RUNNING)
    assert group.started[-1][:2] == (3, 2)


def test_status_says_which_workers_are_wanted_and_why_the_attempt_waits(tmp_path):
    controller, group, _ = make(tmp_path, ready=0, min_workers=2, max_workers=3, spares=1)
    group.capacity = 1
    controller.step()
    status = json.loads((tmp_path / "controller.json").read_text())
    assert status["state"] == "scheduling" and status["workers"]["wanted"] == 4
    assert "scaling.workers' minimum of 2" in status["waiting"]


def test_scale_and_stop_requests_become_directives(tmp_path):
    controller, group, _ = make(tmp_path, ready=3, max_workers=2)
    run_until(controller, State.RUNNING)
    request(tmp_path, workers=7)  # outside [1, 2]: refused, logged
    controller.step()
    assert "scale_refused" in [e["event"] for e in events(tmp_path)]
    request(tmp_path, workers=1)
    controller.step()
    assert directive(tmp_path) == "RESIZE"
    request(tmp_path, stop=True)
    controller.step()
    assert directive(tmp_path) == "STOP"
    group.status = AttemptStatus(running=False, outcomes=["stopped"])
    assert controller.step() == State.STOPPED


def test_too_few_workers_is_an_error_naming_the_range(tmp_path):
    controller, group, _ = make(tmp_path, ready=0, min_workers=2, spares=0)
    group.capacity = 1
    controller.timings = dataclasses.replace(controller.timings, startup_timeout_s=3.0)
    run_until(controller, State.ERRORED)
    assert "at least 2" in controller.error


@pytest.mark.parametrize("outcome,state", [("finished", State.FINISHED), ("stopped", State.STOPPED)])
def test_terminal_outcomes(tmp_path, outcome, state):
    controller, group, _ = make(tmp_path)
    run_until(controller, State.RUNNING)
    group.status = AttemptStatus(running=False, outcomes=[outcome, outcome])
    assert controller.step() == state
    assert json.loads((tmp_path / "controller.json").read_text())["state"] == state.value


def test_the_same_error_at_the_same_step_twice_in_a_row_ends_the_run_without_spending_max_failures(tmp_path):
    controller, group, _ = make(tmp_path, max_failures=5)
    run_until(controller, State.RUNNING)
    assert fail_attempt(controller, group, code_error()) == State.RESTARTING
    run_until(controller, State.RUNNING)
    assert fail_attempt(controller, group, code_error()) == State.ERRORED
    assert [attempt for _, attempt, _ in group.started] == [1, 2]  # no third attempt
    assert controller.error.splitlines() == [
        "deterministic failure: the same error at step 5 in two attempts in a row; not a lost worker",
        "ValueError: deliberate failure at step 5",
        "  at tests/failing_models.py:38 in forward",
        "  at strategies/base.py:114 in forward_backward",
        "(rank 0, step 5)",
    ]
    failures = [e for e in events(tmp_path) if e["event"] == "failure"]
    assert [(f["attempt"], f["step"], f["type"]) for f in failures] == [(1, 5, "ValueError"), (2, 5, "ValueError")]
    assert failures[0]["decision"] == "restarting: failure 1 of max 5"
    assert failures[1]["decision"].startswith("deterministic failure")


@pytest.mark.parametrize("sequence", [
    [code_error(step=5), code_error(step=6), code_error(step=7)],  # it moves: not the same failure
    [code_error(), code_error(error_type="KeyError"), code_error()],  # another error between
    [code_error(message="loss is nan (x=0x7f00)"), code_error(message="loss is inf (x=0x7f00)")],
    [worker_died(step=4), worker_died(step=4), worker_died(step=4)],  # a dead worker is always retried
    [hang(stuck=(1,)), hang(stuck=(0,))],  # another rank hangs
], ids=["step-moves", "errors-alternate", "messages-differ", "worker-dies-at-the-same-step", "another-rank-hangs"])
def test_different_failures_keep_restarting_until_max_failures(tmp_path, sequence):
    controller, group, _ = make(tmp_path, max_failures=len(sequence))
    for failure in sequence:
        run_until(controller, State.RUNNING)
        assert fail_attempt(controller, group, failure) == State.RESTARTING
    run_until(controller, State.RUNNING)
    assert fail_attempt(controller, group, worker_died(step=99)) == State.ERRORED
    assert "exceeds failure.max_failures" in controller.error


def test_the_same_error_is_retried_when_an_attempt_between_them_did_not_fail(tmp_path):
    controller, group, _ = make(tmp_path, max_failures=5)
    run_until(controller, State.RUNNING)
    fail_attempt(controller, group, code_error())
    run_until(controller, State.RUNNING)
    group.status = AttemptStatus(running=False, outcomes=["resize", "resize"])  # ended at a boundary
    controller.step()
    group.status = AttemptStatus(running=True)
    run_until(controller, State.RUNNING)
    assert fail_attempt(controller, group, code_error()) == State.RESTARTING


def test_the_same_rank_hanging_at_the_same_step_twice_ends_the_run(tmp_path):
    controller, group, _ = make(tmp_path, max_failures=5)
    run_until(controller, State.RUNNING)
    assert fail_attempt(controller, group, hang()) == State.RESTARTING
    run_until(controller, State.RUNNING)
    assert fail_attempt(controller, group, hang()) == State.ERRORED
    assert controller.error.splitlines()[:2] == [
        "deterministic failure: the same hang of rank 1 at step 3 in two attempts in a row; not a lost worker",
        "collective hang at step 3: rank 1 never reached it; rank 0 timed out waiting in recv in backward",
    ]


def test_the_summary_lists_every_failure_with_its_attempt_and_recovery(tmp_path):
    controller, group, _ = make(tmp_path, max_failures=3)
    for step in (4, 7, 10):
        run_until(controller, State.RUNNING)
        fail_attempt(controller, group, worker_died(step=step))
        run_until(controller, State.RUNNING)
        failure = group.started[-1][2]  # what the next attempt's first step record carries
        record = {"step": step, "loss": 1.0, "world_size": 2, "failure": dict(failure, steps_redone=1)}
        (tmp_path / "metrics.jsonl").open("a").write(json.dumps(record) + "\n")
    group.status = AttemptStatus(running=False, outcomes=["finished", "finished"])
    assert controller.step() == State.FINISHED

    summary = summarize(tmp_path)
    assert summary["restarts"] == 3
    assert [(f["attempt"], f["kind"], f["step"]) for f in summary["failures"]] == [
        (1, DIED, 4), (2, DIED, 7), (3, DIED, 10)]
    assert all(f["error"].startswith("worker process died (rank 1") for f in summary["failures"])
    assert all(f["steps_redone"] == 1 and f["world_size_after"] == 2 for f in summary["failures"])


def test_a_failure_that_ends_the_run_is_listed_but_is_not_a_restart(tmp_path):
    controller, group, _ = make(tmp_path, max_failures=5)
    run_until(controller, State.RUNNING)
    fail_attempt(controller, group, code_error())
    run_until(controller, State.RUNNING)
    fail_attempt(controller, group, code_error())
    summary = summarize(tmp_path)
    assert summary["restarts"] == 1 and [f["attempt"] for f in summary["failures"]] == [1, 2]
