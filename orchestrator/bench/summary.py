"""The bench's numbers: each configuration's medians over its repeats, set against the
sequential reference (speedup, efficiency, loss deviation, time to the target loss)."""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.bench.measure import TARGET_WINDOW, RunMeasures
from orchestrator.bench.plan import SEQUENTIAL, Skipped


@dataclass
class Spread:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float | None]) -> "Spread | None":
        present = [v for v in values if v is not None]
        if not present:
            return None
        return cls(statistics.median(present), min(present), max(present))


@dataclass
class Row:
    """One configuration over its repeats."""

    name: str
    strategy: str
    workers: int
    repeats: int
    failed: list[str] = field(default_factory=list)  # each failed repeat's error
    wall_s: Spread | None = None
    first_step_s: Spread | None = None
    step_s: Spread | None = None
    samples_per_s: float | None = None  # global batch / median step
    speedup: float | None = None  # the reference's median step over this one's
    efficiency: float | None = None  # speedup / workers
    wall_speedup: float | None = None  # the reference's median wall time over this one's
    time_to_target_s: Spread | None = None
    loss_deviation: list[float] = field(default_factory=list)  # per step, relative to the reference
    max_loss_deviation: float | None = None
    final_loss: float | None = None
    validation: dict[str, float] = field(default_factory=dict)
    peak_rss_bytes: int | None = None  # the largest worker's, over repeats
    state_bytes: dict[str, int] = field(default_factory=dict)
    cpu_cores: float | None = None
    comm_bytes: int | None = None  # one step's collectives, on the worker that moved the most
    comm_s: float | None = None  # their time (with waiting for the slowest rank)
    exposed_s: dict[str, float] = field(default_factory=dict)  # per phase, the profiled step waiting for them
    profiled_phase_s: dict[str, float] = field(default_factory=dict)  # and how long its phases took
    activation_bytes: int | None = None  # the profiled step's, at their most, on the worker holding most
    phases: dict[str, float] = field(default_factory=dict)  # median seconds per part, first repeat


@dataclass
class BenchSummary:
    job: str
    steps: int
    global_batch_size: int
    target_loss: float | None
    rows: list[Row]
    skipped: list[Skipped]
    machine: dict[str, Any]

    @property
    def reference(self) -> Row | None:
        return next((r for r in self.rows if r.strategy == SEQUENTIAL), None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(runs: list[RunMeasures], skipped: list[Skipped], job: str, steps: int, global_batch: int,
              target_loss: float | None, machine: dict[str, Any]) -> BenchSummary:
    names = list(dict.fromkeys(run.name for run in runs))
    grouped = {name: [run for run in runs if run.name == name] for name in names}
    reference_runs = [r for r in grouped.get(SEQUENTIAL, []) if r.error is None and r.losses]
    if target_loss is None and reference_runs:
        # Where the reference ends, by the measure time_to_loss applies: it reaches it.
        target_loss = statistics.fmean(reference_runs[0].losses[-TARGET_WINDOW:])
    rows = [_row(group, target_loss) for group in grouped.values()]
    summary = BenchSummary(job, steps, global_batch, target_loss, rows, skipped, machine)
    if summary.reference is not None and reference_runs:
        for row in rows:
            _against(row, summary.reference, reference_runs[0], [r for r in grouped[row.name] if r.error is None])
    return summary


def _row(runs: list[RunMeasures], target: float | None) -> Row:
    first = runs[0]
    ok = [r for r in runs if r.error is None and r.losses]
    row = Row(first.name, first.strategy, first.workers, len(runs), failed=[r.error for r in runs if r.error])
    if not ok:
        return row
    row.wall_s = Spread.of([r.wall_s for r in ok])
    row.first_step_s = Spread.of([r.first_step_s for r in ok])
    row.step_s = Spread.of([r.step_s for r in ok])
    row.samples_per_s = ok[0].samples_per_s * ok[0].step_s / row.step_s.median
    if target is not None:
        row.time_to_target_s = Spread.of([r.time_to_loss(target) for r in ok])
    row.final_loss = ok[0].losses[-1]
    row.validation = ok[0].validation
    row.peak_rss_bytes = max((r.peak_rss_bytes for r in ok if r.peak_rss_bytes is not None), default=None)
    row.state_bytes = ok[0].state_bytes
    row.phases = ok[0].phases
    comm = ok[0].comm
    if comm is not None:
        row.comm_bytes, row.comm_s = comm["bytes"], comm["seconds"]
        row.exposed_s, row.profiled_phase_s = comm["exposed_s"], comm["phase_s"]
    row.activation_bytes = ok[0].activation_bytes
    row.cpu_cores = Spread.of([r.cpu_cores for r in ok]).median if any(r.ranks for r in ok) else None
    return row


def _against(row: Row, reference: Row, reference_run: RunMeasures, runs: list[RunMeasures]) -> None:
    if row.step_s is None or reference.step_s is None:
        return
    row.speedup = reference.step_s.median / row.step_s.median
    row.efficiency = row.speedup / row.workers
    row.wall_speedup = reference.wall_s.median / row.wall_s.median
    row.loss_deviation = [abs(got - want) / max(abs(want), 1e-12)
                          for got, want in zip(runs[0].losses, reference_run.losses)]
    row.max_loss_deviation = max(row.loss_deviation, default=None)


def step_parts(row: Row) -> dict[str, float]:
    """The median step of a configuration in its parts, in seconds, in the order they
    happen. The share of each phase the profiled step spent waiting for collectives is
    taken out of that phase and shown as a part of its own (on a GPU it is known for the
    whole step only: it comes out of backward). What is left of the step is the loop's own."""
    if not row.phases or row.step_s is None:
        return {}
    phases = row.phases
    split = "step_forward_s" in phases
    shares = {phase: min(1.0, seconds / row.profiled_phase_s[phase]) if row.profiled_phase_s.get(phase) else 0.0
              for phase, seconds in row.exposed_s.items()}
    if "step" in shares:  # a GPU's
        phase = "step_backward_s" if split else "step_compute_s"
        waited = {phase: min(shares["step"] * row.step_s.median, phases[phase])}
    else:
        waited = {phase: share * phases.get(phase, 0.0) for phase, share in shares.items()}
    timed = ["step_data_s", *(["step_forward_s", "step_backward_s"] if split else ["step_compute_s"]),
             "step_optimizer_s"]
    parts = {STEP_PARTS[p]: phases[p] - waited.get(p, 0.0) for p in timed}
    parts["communication waited for"] = sum(waited.values())
    parts["between steps"] = max(0.0, row.step_s.median - sum(phases[p] for p in timed))
    return parts


STEP_PARTS = {"step_data_s": "data", "step_forward_s": "forward", "step_backward_s": "backward",
              "step_compute_s": "forward + backward", "step_optimizer_s": "optimizer"}
