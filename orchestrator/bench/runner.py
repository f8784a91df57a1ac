"""`orchestrator bench`: plan the runs, make them (every configuration once per
repeat, in turn, so a noisy spell on a shared machine falls on all of them), measure,
summarise, write results.json and the report.

Exercised by: orchestrator bench examples/quickstart.yaml --workers 1,2 --strategies ddp,zero2,fsdp
"""
from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from orchestrator.bench.execute import execute
from orchestrator.bench.measure import RunMeasures, measure
from orchestrator.bench.plan import plan_runs
from orchestrator.bench.summary import BenchSummary, summarize
from orchestrator.config.spec import JobSpec


@dataclass(frozen=True)
class BenchOptions:
    workers: list[int]
    strategies: list[str]
    steps: int | None = None  # default: the job's train.steps
    repeats: int = 1
    target_loss: float | None = None  # default: the reference's last 5-step mean
    address: str | None = None  # a Ray cluster to launch on; default an embedded Ray per run
    peers: bool = False  # also the DDP job as hand-written torchrun and Ray Train loops (on this machine)


def run_bench(spec: JobSpec, options: BenchOptions, out: Path, command: str,
              say: Callable[[str], None]) -> BenchSummary:
    """Raises JobSpecError (unknown strategy, bad worker counts) before anything runs."""
    configurations, skipped = plan_runs(spec, options.workers, options.strategies, options.steps,
                                        options.peers)
    out.mkdir(parents=True, exist_ok=True)
    for s in skipped:
        say(f"skipping {s.name}: {s.reason}")
    total = len(configurations) * options.repeats
    runs: list[RunMeasures] = []
    for repeat in range(options.repeats):
        for configuration in configurations:
            say(f"[{len(runs) + 1}/{total}] {configuration.name}, repeat {repeat + 1}/{options.repeats}")
            run = measure(execute(configuration, repeat, out, options.address))
            runs.append(run)
            say("  " + _describe(run))
    steps = configurations[0].spec.train.steps
    summary = summarize(runs, skipped, spec.name, steps, spec.train.global_batch_size, options.target_loss,
                        machine(options.address))
    from orchestrator.bench.plots import draw_all
    from orchestrator.bench.report import write_report

    figures = draw_all(summary, runs, out / "plots")
    (out / "results.json").write_text(json.dumps(
        {"command": command, **summary.to_json(), "runs": [asdict(run) for run in runs]}, indent=1))
    markdown, page = write_report(summary, figures, out, command)
    say(f"report: {markdown} and {page}")
    return summary


def _describe(run: RunMeasures) -> str:
    if run.error is not None:
        return f"failed after {run.wall_s:.1f} s: {run.error}"
    if run.step_s is None:
        return f"finished in {run.wall_s:.1f} s without a step record"
    return (f"{run.wall_s:.1f} s, step 1 at {run.first_step_s:.1f} s, {run.step_s * 1000:.1f} ms/step, "
            f"final loss {run.losses[-1]:.4f}")


def machine(address: str | None = None) -> dict:
    """This machine, where the sequential reference and the peers run; `cluster` is where
    the launcher's configurations ran, when not here."""
    import ray
    import torch

    found = {"cluster": address, "cpus": len(os.sched_getaffinity(0)), "gpus": torch.cuda.device_count(),
             "torch": torch.__version__, "ray": ray.__version__, "python": platform.python_version(), "host": platform.node()}
    if found["gpus"]:
        found["gpu"] = torch.cuda.get_device_name(0)
    return found
