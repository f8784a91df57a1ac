"""What one run measured, read back from the files it wrote (metrics.jsonl,
usage.jsonl) and the times taken around its process."""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from orchestrator.bench.execute import Executed
from orchestrator.run.files import RunFiles, read_jsonl
from orchestrator.run.records import RunRecords
from orchestrator.training.phases import COMPUTE_PARTS, PHASES

# Steps before this fraction of the run (at least 2) are warm-up, left out of the
# steady step time: the first steps allocate, compile and fill caches.
WARMUP_FRACTION = 0.1
# A run reaches the target loss at the first step whose mean over this many steps is
# at or below it: one lucky batch does not count.
TARGET_WINDOW = 5


@dataclass
class RunMeasures:
    name: str
    strategy: str
    workers: int
    repeat: int
    wall_s: float
    started: float  # when the run's process started
    error: str | None = None
    first_step_s: float | None = None  # launch to the end of step 1
    step_s: float | None = None  # median steady step time
    samples_per_s: float | None = None
    losses: list[float] = field(default_factory=list)  # per step, 1..N
    loss_times: list[float] = field(default_factory=list)  # seconds since launch, per step
    validation: dict[str, float] = field(default_factory=dict)
    phases: dict[str, float] = field(default_factory=dict)  # median seconds of each part of a step
    ranks: list[dict[str, Any]] = field(default_factory=list)  # usage.jsonl, one per rank

    @property
    def peak_rss_bytes(self) -> int | None:
        return max((r["peak_rss_bytes"] for r in self.ranks), default=None)

    @property
    def state_bytes(self) -> dict[str, int]:
        """Parameters, gradients and optimizer state on the rank that holds the most."""
        states = [r.get("state_bytes") or {} for r in self.ranks]
        return max(states, key=lambda s: sum(s.values()), default={})

    @property
    def comm(self) -> dict[str, Any] | None:
        """The profiled step's collectives on the rank that moved the most: its bytes, their
        seconds, and how long each phase of its step took and waited for them."""
        profiled = [r["comm"] for r in self.ranks if r.get("comm")]
        if not profiled:
            return None
        busiest = max(profiled, key=lambda c: (c["bytes"], c["seconds"]))  # among equals, the slowest
        return {key: busiest[key] for key in ("bytes", "seconds", "exposed_s", "phase_s")}

    @property
    def activation_bytes(self) -> int | None:
        """The most the profiled step's activations held at once, on the rank holding most."""
        return max((r["activation_bytes"] for r in self.ranks if r.get("activation_bytes") is not None),
                   default=None)

    @property
    def cpu_cores(self) -> float | None:
        """CPU cores the workers kept busy on average, all together."""
        if not self.ranks:
            return None
        return sum(r["cpu_s"] / max(r["ended"] - r["started"], 1e-9) for r in self.ranks)

    def time_to_loss(self, target: float) -> float | None:
        for i in range(TARGET_WINDOW - 1, len(self.losses)):
            if statistics.fmean(self.losses[i - TARGET_WINDOW + 1:i + 1]) <= target:
                return self.loss_times[i]
        return None


def measure(executed: Executed) -> RunMeasures:
    c = executed.configuration
    found = RunMeasures(c.name, c.strategy, c.workers, executed.repeat, executed.wall_s, executed.started,
                        executed.error)
    steps = RunRecords(executed.run_dir).steps() if executed.run_dir.exists() else []
    if steps:
        found.first_step_s = steps[0]["time"] - executed.started
        found.step_s = steady_step_s([r["time"] for r in steps]) if len(steps) > 2 else steps[-1]["step_time_s"]
        found.phases = {key: steady_median([r[key] for r in steps]) for key in PHASES + COMPUTE_PARTS
                        if all(key in r for r in steps)}
        found.samples_per_s = c.spec.train.global_batch_size / found.step_s
        found.losses = [r["loss"] for r in steps]
        found.loss_times = [r["time"] - executed.started for r in steps]
        validation = [r for r in steps if "val_loss" in r]
        if validation:
            found.validation = {k: v for k, v in validation[-1].items() if k.startswith("val_")}
    usage = RunFiles(executed.run_dir).usage
    if usage.exists():
        last = {}
        for record in read_jsonl(usage):  # a rank's last attempt stands for it
            last[record["rank"]] = record
        found.ranks = [last[rank] for rank in sorted(last)]
    return found


def steady_step_s(step_ends: list[float]) -> float:
    """The median time from one step's end to the next's, after the warm-up steps:
    everything the loop does per step is in it (records, agreement, a checkpoint)."""
    intervals = [b - a for a, b in zip(step_ends, step_ends[1:])]
    skip = max(2, int(len(intervals) * WARMUP_FRACTION))
    return statistics.median(intervals[skip:] or intervals)


def steady_median(values: list[float]) -> float:
    """The median of a per-step number after the warm-up steps."""
    skip = max(2, int(len(values) * WARMUP_FRACTION))
    return statistics.median(values[skip:] or values)
