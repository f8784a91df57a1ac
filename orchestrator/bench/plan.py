"""Which runs a bench makes: the sequential reference and each strategy at each worker
count, as job specs; the layouts the job cannot take, with the reason."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.config.loading import spec_from_dict
from orchestrator.config.spec import JobSpec
from orchestrator.errors import JobSpecError
from orchestrator.verify.layouts import PRESETS

SEQUENTIAL = "sequential"
# The same DDP job as a hand-written loop under torchrun and under Ray Train's
# TorchTrainer (`--peers`): what the orchestrator's own overhead is measured against.
PEERS = ("torchrun", "ray-train")
PEER_SCRIPTS = Path(__file__).resolve().parents[2] / "benchmarks" / "peers"


@dataclass(frozen=True)
class Configuration:
    strategy: str  # a `--strategies` name, or "sequential"
    workers: int
    spec: JobSpec

    @property
    def name(self) -> str:
        return SEQUENTIAL if self.strategy == SEQUENTIAL else f"{self.strategy}-x{self.workers}"


@dataclass(frozen=True)
class Skipped:
    name: str
    reason: str


def bench_spec(spec: JobSpec, steps: int | None, strategy: dict[str, Any], workers: int) -> JobSpec:
    """`spec` under `strategy` at `workers`, with nothing else competing for the machine:
    no standby workers, no chaos, no launch check (the bench compares every step with the
    reference itself), and its middle step profiled for communication. Raises
    JobSpecError where the job cannot take the layout."""
    raw = spec.model_dump(mode="json")
    raw["strategy"] = {**strategy, "verify": False}
    if steps is not None:
        raw["train"]["steps"] = steps
    # One steady step profiled for what its collectives moved (measure.WARMUP_FRACTION).
    total = raw["train"]["steps"]
    raw["train"]["profile_step"] = max(3, total // 2) if total >= 4 else 0
    raw["scaling"].update(workers=workers, spares=0, backend="elastic")
    raw["chaos"] = {}
    return spec_from_dict(raw, base_dir=spec.base_dir)


def plan_runs(spec: JobSpec, workers: list[int], names: list[str], steps: int | None,
              peers: bool = False) -> tuple[list[Configuration], list[Skipped]]:
    """The reference first, then every (strategy, workers) the job can take, then with
    `peers` the DDP job as each peer loop at each worker count.

    Raises:
        JobSpecError: an unknown strategy name or a worker count below 1, naming the
            choices; `peers` without the peer scripts (a source checkout has them).
    """
    unknown = [name for name in names if name not in PRESETS]
    problems = [f"--strategies: unknown {unknown}; choose from {', '.join(PRESETS)}"] if unknown else []
    if not workers or any(count < 1 for count in workers):
        problems.append(f"--workers: worker counts of at least 1, e.g. 1,2,4 (got {workers})")
    if peers and not PEER_SCRIPTS.is_dir():
        problems.append(f"--peers: the peer loops are not here ({PEER_SCRIPTS}); they come with a "
                        "source checkout of the orchestrator")
    if problems:
        raise JobSpecError(problems)
    runs = [Configuration(SEQUENTIAL, 1, bench_spec(spec, steps, {"name": SEQUENTIAL}, 1))]
    skipped = []
    for name in names:
        strategy = PRESETS[name][0]
        for count in workers:
            label = f"{name}-x{count}"
            try:
                runs.append(Configuration(name, count, bench_spec(spec, steps, strategy, count)))
            except JobSpecError as error:
                skipped.append(Skipped(label, error.problems[0]))
    for peer in PEERS if peers else ():
        runs += [Configuration(peer, count, bench_spec(spec, steps, {"name": "ddp"}, count)) for count in workers]
    return runs, skipped
