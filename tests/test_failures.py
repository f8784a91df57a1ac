"""Failure reports: what an exception becomes, which rank's report explains an attempt,
and when two failures are the same one. Pure logic, no Ray cluster.

Exercised by: pytest tests/test_failures.py
"""
from __future__ import annotations

import json
import pickle

import pytest
import ray

from orchestrator.execution.failures import (
    DIED, ERROR, HANG, LOST, TIMEOUT, AttemptFailed, FailureReport, diagnose, read_ray_error,
    report_exception,
)

GLOO_TIMEOUT = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] "
                "Timed out waiting 5000ms for recv operation to complete")
GLOO_PEER_GONE = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection "
                  "closed by peer [127.0.0.1]:45965. This is typically caused by a remote worker crashing.")


def forward(value: str) -> int:
    raise ValueError(f"bad token {value!r} at 0x7f3a2c00")


def raised(function, *args) -> BaseException:
    try:
        function(*args)
    except BaseException as error:  # the test wants the exception itself, traceback and all
        return error
    raise AssertionError("nothing was raised")


def test_an_exception_reads_as_its_type_message_and_the_user_frames_innermost_first():
    # json calls back into our code: its own (standard library) frames are left out
    error = raised(lambda: json.loads("[1]", parse_int=forward))
    report = report_exception(error, rank=1, step=5)
    assert (report.kind, report.type, report.rank, report.step) == (ERROR, "ValueError", 1, 5)
    assert report.message == "bad token '1' at 0x7f3a2c00"
    assert report.frames[0].startswith("tests/test_failures.py:") and report.frames[0].endswith("in forward")
    assert not any("json" in frame for frame in report.frames)
    assert report.text().splitlines() == [
        "ValueError: bad token '1' at 0x7f3a2c00", *(f"  at {f}" for f in report.frames), "(rank 1, step 5)",
    ]


def test_a_chained_exception_names_its_cause_and_shows_where_the_cause_was_raised():
    def export():
        try:
            forward("x")
        except ValueError as cause:
            raise RuntimeError("export failed") from cause

    report = report_exception(raised(export), rank=0, step=3)
    assert report.message == "export failed\ncaused by ValueError: bad token 'x' at 0x7f3a2c00"
    assert report.frames[0].endswith("in forward")


@pytest.mark.parametrize("message,kind,operation", [
    (GLOO_TIMEOUT, TIMEOUT, "recv"),
    (GLOO_PEER_GONE, LOST, None),
    ("shape mismatch", ERROR, None),
])
def test_collective_errors_are_told_apart_from_errors_of_the_code(message, kind, operation):
    report = report_exception(RuntimeError(message), rank=0, step=2)
    assert (report.kind, report.operation) == (kind, operation)
    assert not report.message.startswith("[/__w")  # gloo's C++ source location is noise


def test_the_same_failure_differs_only_in_addresses_pids_and_times():
    first = report_exception(RuntimeError("lost 0x7f00aa from 10.0.0.1:4312 (pid=991) at 2026-12-04 05:43:39"), 0, 5)
    again = report_exception(RuntimeError("lost 0x7e11bb from 10.0.0.7:5555 (pid=12) at 2026-12-05 01:02:03"), 1, 5)
    assert again.repeats(first)
    assert not report_exception(RuntimeError("lost 0x1"), 0, 6).repeats(report_exception(RuntimeError("lost 0x1"), 0, 5))
    assert not report_exception(KeyError("lost"), 0, 5).repeats(report_exception(ValueError("lost"), 0, 5))


def test_a_dead_worker_or_a_lost_peer_is_never_the_same_failure_twice():
    died = FailureReport(kind=DIED, type="WorkerDied", message="worker process died (rank 1)", rank=1, step=4)
    lost = report_exception(RuntimeError(GLOO_PEER_GONE), 0, 4)
    assert not died.repeats(died) and not lost.repeats(lost)


def test_a_dead_worker_explains_the_broken_collectives_of_its_peers():
    peer = report_exception(RuntimeError(GLOO_PEER_GONE), rank=0, step=4)
    died = FailureReport(kind=DIED, type="WorkerDied", message="worker process died (rank 1)", rank=1)
    chosen = diagnose([peer, died], stuck={})
    assert chosen.kind == DIED and chosen.rank == 1 and chosen.step == 4  # the step its peers were on


def test_an_error_of_the_code_comes_before_a_lost_peer_and_the_lowest_rank_first():
    lost = report_exception(RuntimeError(GLOO_PEER_GONE), rank=0, step=5)
    errors = [report_exception(ValueError("boom"), rank=r, step=5) for r in (2, 1)]
    assert diagnose([lost, *errors], stuck={}).rank == 1


def test_a_timed_out_collective_names_the_ranks_that_never_returned_and_where_they_are():
    waiting = report_exception(RuntimeError(GLOO_TIMEOUT), rank=0, step=3)
    hang = diagnose([waiting], stuck={1: ("tests/failing_models.py:51 in forward",)})
    assert (hang.kind, hang.stuck_ranks, hang.rank, hang.step) == (HANG, (1,), 1, 3)
    assert hang.message.startswith("collective hang at step 3: rank 1 never reached it; rank 0 timed out")
    assert hang.frames == ("tests/failing_models.py:51 in forward",)
    assert hang.text().splitlines()[1] == "  rank 1 stuck at tests/failing_models.py:51 in forward"
    assert hang.repeats(diagnose([waiting], stuck={1: ()}))
    assert not hang.repeats(diagnose([waiting], stuck={2: ()}))


def test_reports_cross_process_boundaries_and_ray_errors_are_read():
    report = report_exception(raised(forward, "y"), rank=1, step=5)
    failed = pickle.loads(pickle.dumps(AttemptFailed(report)))
    assert failed.report == report and str(failed) == report.text()
    wrapped = ray.exceptions.RayTaskError("run_attempt", "traceback", failed).as_instanceof_cause()
    assert read_ray_error(wrapped, rank=1, node="node-a") == FailureReport(**{**report.to_dict(), "node": "node-a",
                                                                           "frames": report.frames,
                                                                           "stuck_ranks": ()})
    died = read_ray_error(ray.exceptions.ActorDiedError(), rank=1, node="0123456789abcdef0123")
    assert (died.kind, died.message) == (DIED, "worker process died (rank 1 on node 0123456789ab)")


@pytest.mark.parametrize("ray_text,reason", [
    ("The actor died unexpectedly before finishing this task.\n\tclass_name: TrainWorker\n\tpid: 22396\n"
     "The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit "
     "detail: Worker unexpectedly exits with a connection error code 2. End of file. Some common causes",
     "Worker unexpectedly exits with a connection error code 2."),
    ("The actor died unexpectedly before finishing this task.\n\tclass_name: TrainWorker\n\tip: 10.0.0.2\n"
     "The actor is dead because its node has died. Node Id: cf9763cecc15\n"
     "\tthe actor's node was terminated expectedly: received SIGTERM",
     "The actor is dead because its node has died."),
])
def test_a_dead_worker_says_why_ray_thinks_it_died(ray_text, reason):
    died = read_ray_error(ray.exceptions.RayActorError(None, ray_text), rank=1, node="cf9763cecc15aa")
    assert died.message == f"worker process died (rank 1 on node cf9763cecc15): {reason}"
