"""What failed in an attempt, in a form a person can read and a policy can compare.

A rank whose attempt raises sends back `AttemptFailed(FailureReport)`: the exception's
type and message, the innermost frames of the project's and the user's code (frames of
installed packages, Ray's and torch's among them, and of the standard library are left
out), the rank and the step it was on. On the driver, `read_ray_error` turns what Ray
returns for one rank (that exception, or the death of the worker's process) into a
report, and `diagnose` picks the one report that explains the attempt, in this order:

    died   a worker's process died (SIGKILL, the OOM killer, its node lost)
    error  an exception in the training code, the user's or ours
    hang   a collective timed out on some ranks while others never returned: those
           are the stuck ranks, named with where they were
    timeout, lost   a collective timed out, or failed because a peer went away

A death comes first because the other ranks' errors follow from it. Two reports are
the same failure when kind, type, message (with addresses, ids and times taken out),
step and stuck ranks match; `FailurePolicy` stops a run whose attempt fails the same
way as the attempt before it.

Exercised by: pytest tests/test_failures.py
"""
from __future__ import annotations

import re
import sysconfig
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from orchestrator.errors import TrainingError

DIED, ERROR, HANG, TIMEOUT, LOST = "died", "error", "hang", "timeout", "lost"
PRIORITY = (DIED, ERROR, HANG, TIMEOUT, LOST)
REPEATABLE = {ERROR, HANG, TIMEOUT}  # a dead worker or a lost peer is never the code's doing
MAX_FRAMES = 4
MAX_MESSAGE_CHARS = 2000

_COLLECTIVE_TIMEOUT = re.compile(r"Timed out waiting (\d+)ms for (\w+) operation|Timed out.*(?:collective|Watchdog)")
_PEER_LOST = re.compile(r"Connection (?:closed|reset) by peer|Broken pipe|ECONNRESET|ProcessGroup.*abort", re.I)
_SOURCE_LOCATION = re.compile(r"\[[^\]\s]*\.(?:cc|cpp|h|hpp):\d+\] ")  # gloo's and NCCL's C++ prefix
_VOLATILE = [
    (re.compile(r"0x[0-9a-fA-F]+"), "0x?"),
    (re.compile(r"\[?\b\d{1,3}(?:\.\d{1,3}){3}\]?(?::\d+)?"), "<address>"),
    (re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?"), "<time>"),
    (re.compile(r"\b(pid|port|actor_id|node_id|worker_id)\b([=: ]+)\w+", re.I), r"\1\2?"),
    (re.compile(r"\b[0-9a-f]{16,}\b"), "<id>"),
]
_ACTOR_FIELD = re.compile(r"\t\w+: ")  # "\tpid: 123" in Ray's text of an actor's death
_LIBRARY_ROOTS = tuple(sorted({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}))
_PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the directory that holds orchestrator/
_COLLECTIVES = {"all_reduce", "all_gather", "all_gather_into_tensor", "reduce_scatter",
                "reduce_scatter_tensor", "broadcast", "barrier", "all_to_all", "gather", "scatter",
                "reduce", "send", "recv", "monitored_barrier", "all_gather_object", "broadcast_object_list"}


@dataclass(frozen=True)
class FailureReport:
    """One failure, small and picklable: what, where in the code, on which rank and step."""

    kind: str  # one of PRIORITY
    type: str  # the exception's class name, or WorkerDied / CollectiveHang
    message: str
    frames: tuple[str, ...] = ()  # innermost first: "path:line in function"
    rank: int | None = None
    step: int | None = None  # the step the rank was on (the one in progress)
    node: str | None = None
    stuck_ranks: tuple[int, ...] = ()
    operation: str | None = None  # the collective a timed-out rank waited in

    def headline(self) -> str:
        if self.kind in (DIED, HANG):
            return self.message
        return f"{self.type}: {self.message}"

    def text(self) -> str:
        """`Type: message`, the frames, and where it happened, one per line."""
        lines = [self.headline()]
        for i, frame in enumerate(self.frames):  # a hang's frames are where the stuck rank is
            lead = f"rank {self.rank} stuck at" if self.kind == HANG and i == 0 else "at"
            lines.append(f"  {lead} {frame}")
        where = [f"rank {self.rank}" if self.rank is not None else "",
                 f"step {self.step}" if self.step is not None else ""]
        if any(where):
            lines.append(f"({', '.join(w for w in where if w)})")
        return "\n".join(lines)

    def signature(self) -> tuple:
        return (self.kind, self.type, normalise(self.message), self.step, self.stuck_ranks)

    def repeats(self, other: "FailureReport") -> bool:
        """True when this is a failure the code can cause again, and `other` was the same one."""
        return self.kind in REPEATABLE and self.signature() == other.signature()

    def to_dict(self) -> dict:
        return {**asdict(self), "frames": list(self.frames), "stuck_ranks": list(self.stuck_ranks)}


class AttemptFailed(TrainingError):
    """A rank's attempt raised; `report` says what, where and at which step."""

    def __init__(self, report: FailureReport) -> None:
        self.report = report
        super().__init__(report.text())

    def __reduce__(self):
        return (type(self), (self.report,))


def report_exception(error: BaseException, rank: int | None, step: int | None) -> FailureReport:
    """The report of an exception raised on a worker (where its traceback still exists)."""
    innermost = error
    while innermost.__cause__ is not None:
        innermost = innermost.__cause__
    message = _SOURCE_LOCATION.sub("", str(error)).strip() or "(no message)"
    if innermost is not error:
        message += f"\ncaused by {type(innermost).__name__}: {_SOURCE_LOCATION.sub('', str(innermost)).strip()}"
    summary = traceback.extract_tb(innermost.__traceback__)
    kind, operation = _collective_kind(message, summary)
    return FailureReport(kind=kind, type=type(error).__name__, message=message[:MAX_MESSAGE_CHARS],
                         frames=code_frames(summary), rank=rank, step=step, operation=operation)


def code_frames(summary: traceback.StackSummary) -> tuple[str, ...]:
    """The innermost frames of project and user code, innermost first, as `path:line in name`."""
    kept = []
    for frame in reversed(summary):
        path = _display_path(frame.filename)
        if path is not None:
            kept.append(f"{path}:{frame.lineno} in {frame.name}")
        if len(kept) == MAX_FRAMES:
            break
    return tuple(kept)


def read_ray_error(error: BaseException, rank: int, node: str | None) -> FailureReport:
    """The report of what `ray.get` raised for one rank's attempt."""
    import ray

    cause = getattr(error, "cause", None)
    if isinstance(cause, AttemptFailed):
        return replace(cause.report, node=node)
    if isinstance(error, ray.exceptions.RayTaskError) and cause is not None:
        return replace(report_exception(cause, rank, None), node=node)
    where = f"rank {rank} on node {node[:12]}" if node else f"rank {rank}"
    reason = _death_reason(str(error)) if isinstance(error, ray.exceptions.RayActorError) else None
    return FailureReport(kind=DIED, type="WorkerDied", rank=rank, node=node,
                         message=f"worker process died ({where})" + (f": {reason}" if reason else ""))


def _death_reason(text: str) -> str | None:
    """The first sentence of why Ray says an actor died ("Worker exit detail: ...", or the
    first line after its class_name/pid/ip lines), e.g. "The actor is dead because its
    node has died." """
    detail = re.search(r"Worker exit detail: ([^.]*\.)", text)
    if detail:
        return detail.group(1)
    reasons = [line.strip() for line in text.splitlines()[1:] if line.strip() and not _ACTOR_FIELD.match(line)]
    return re.split(r"(?<=\.) ", reasons[0])[0] if reasons else None


def diagnose(reports: list[FailureReport], stuck: dict[int, tuple[str, ...]]) -> FailureReport:
    """The report that explains an attempt, from every failed rank's `reports` and the
    ranks that had not returned (`stuck`: rank -> where it was, innermost frame first)."""
    first = min(reports, key=lambda r: (PRIORITY.index(r.kind), r.rank if r.rank is not None else -1))
    step = max((r.step for r in reports if r.step is not None), default=None)
    if first.kind == TIMEOUT and stuck:
        ranks = tuple(sorted(stuck))
        waiters = sorted(r.rank for r in reports if r.kind == TIMEOUT)
        waited_at = f" ({first.frames[0]})" if first.frames else ""
        message = (f"collective hang at step {step}: {_ranks(ranks)} never reached it; "
                   f"{_ranks(waiters)} timed out waiting in {first.operation}{waited_at}")
        return replace(first, kind=HANG, type="CollectiveHang", message=message, step=step,
                       stuck_ranks=ranks, frames=stuck[ranks[0]], rank=ranks[0])
    return replace(first, step=first.step if first.step is not None else step)


def _ranks(ranks: list[int] | tuple[int, ...]) -> str:
    return f"rank{'s' * (len(ranks) > 1)} {', '.join(map(str, ranks))}"


def normalise(message: str) -> str:
    """The message with what changes between runs of the same failure taken out."""
    for pattern, replacement in _VOLATILE:
        message = pattern.sub(replacement, message)
    return message


def _collective_kind(message: str, summary: traceback.StackSummary) -> tuple[str, str | None]:
    """(kind, operation): a collective that timed out or lost its peer, else a plain error."""
    timeout = _COLLECTIVE_TIMEOUT.search(message)
    if timeout is None:
        return (LOST, None) if _PEER_LOST.search(message) else (ERROR, None)
    collectives = [f.name for f in summary if "torch/distributed" in f.filename and f.name in _COLLECTIVES]
    if collectives:
        return TIMEOUT, collectives[-1]
    operation = timeout.group(2) or "a collective"
    in_backward = any("torch/autograd" in f.filename for f in summary)  # gradient synchronisation
    return TIMEOUT, f"{operation} in backward" if in_backward else operation


def _display_path(filename: str) -> str | None:
    """A frame's file as the user knows it, or None for library code."""
    if filename.startswith("<") or filename.startswith(_LIBRARY_ROOTS):
        return None
    path = Path(filename)
    for root in (Path.cwd(), _PROJECT_ROOT):
        if path.is_relative_to(root):
            return str(path.relative_to(root))
    return filename
