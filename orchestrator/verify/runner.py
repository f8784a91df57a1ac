"""Run the reference and each layout, compare, and report one row per layout.

Exercised by: orchestrator verify examples/quickstart.yaml --strategies ddp,fsdp,tensor
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from orchestrator.config.spec import JobSpec
from orchestrator.data.model_arguments import model_arguments
from orchestrator.errors import JobSpecError
from orchestrator.execution.backend import backend_for
from orchestrator.execution.ray_runtime import configure_ray_data, refuse_ray_client, start_ray
from orchestrator.execution.resources import size_workers
from orchestrator.training.model import build_job_model
from orchestrator.verify.compare import Comparison, ModelFacts, compare_runs
from orchestrator.verify.layouts import chosen_layouts, reference_spec, trimmed

DEFAULT_RTOL = {"fp32": 1e-5, "bf16": 1e-2}


@dataclass
class LayoutCheck:
    layout: str
    workers: int
    seconds: float
    comparison: Comparison | None = None
    refused: str | None = None

    @property
    def passed(self) -> bool:
        return self.refused is None and self.comparison is not None and self.comparison.passed()


@dataclass
class VerifyReport:
    steps: int
    rtol: float
    reference_seconds: float
    checks: list[LayoutCheck]
    nondeterministic: list[str]  # modules that draw random numbers in forward (dropout)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks if c.refused is None)


def verify(spec: JobSpec, names: list[str] | None, workers: int | None, steps: int,
           rtol: float | None, address: str | None, say) -> VerifyReport:
    """Raises JobSpecError for an unknown layout; a layout the job cannot take is a
    refused row, not an error."""
    layouts = chosen_layouts(spec, names, workers)
    rtol = rtol if rtol is not None else DEFAULT_RTOL[spec.train.precision]
    refuse_ray_client(address)
    embedded = start_ray(address, say)
    try:
        return _run_all(spec, layouts, steps, rtol, say)
    finally:
        if embedded:
            import ray

            ray.shutdown()


def _run_all(spec: JobSpec, layouts: dict, steps: int, rtol: float, say) -> VerifyReport:
    import ray

    from orchestrator.data.pipeline import prepare_data
    from orchestrator.verify.reference import run_reference

    root = Path(tempfile.mkdtemp(prefix="orchestrator-verify-"))
    reference = reference_spec(spec, steps)
    configure_ray_data()
    data = prepare_data(reference)
    data_ref = ray.put(data)
    say(f"reference: {steps} steps of {spec.model.name} in one process")
    started = time.perf_counter()
    run_reference(reference, data, root / "reference", threads=os.cpu_count() or 1)
    report = VerifyReport(steps, rtol, time.perf_counter() - started, [], _random_modules(spec))
    for name, (strategy, workers) in layouts.items():
        say(f"layout {name}: {workers} workers")
        report.checks.append(_check(spec, name, strategy, workers, steps, rtol, data_ref, root))
    return report


def _check(spec, name, strategy, workers, steps, rtol, data_ref, root) -> LayoutCheck:
    import ray

    started = time.perf_counter()
    try:
        layout = trimmed(spec, steps, strategy, workers)
    except JobSpecError as error:
        return LayoutCheck(name, workers, 0.0, refused="; ".join(error.problems))
    resources = size_workers(layout, ray.cluster_resources(), spares=0)
    (root / name).mkdir(parents=True)
    backend_for("elastic").run(layout, root / name, data_ref, resources)
    comparison = compare_runs(root / "reference", root / name, rtol, _facts(layout))
    return LayoutCheck(name, workers, time.perf_counter() - started, comparison)


def _facts(spec: JobSpec) -> ModelFacts:
    """Shared weights, buffers and (for a tensor layout) the plan, read off the model on
    the meta device."""
    from strategies.sharing import shared_parameters
    from strategies.tensor_parallel import PlanError, resolve_plan

    with torch.device("meta"):
        model = build_job_model(spec, model_arguments(spec))
    plan: dict[str, str] = {}
    tp = getattr(spec.strategy, "tp", 1)
    if tp > 1:
        try:
            plan = resolve_plan(model, getattr(spec.strategy, "plan", "model"), tp)
        except PlanError:
            plan = {}
    return ModelFacts(shared_parameters(model), {n for n, _ in model.named_buffers()}, plan)


def _random_modules(spec: JobSpec) -> list[str]:
    """Modules that draw random numbers in a training forward pass: each rank draws its
    own, so no layout can match the reference while they are on."""
    with torch.device("meta"):
        model = build_job_model(spec, model_arguments(spec))
    found = [f"{n} (p={m.p})" for n, m in model.named_modules()
             if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]
    config = getattr(model, "config", None)
    for key, value in (config.to_dict().items() if config is not None else []):
        if ("dropout" in key or "pdrop" in key) and isinstance(value, float) and value > 0:
            found.append(f"config.{key}={value}")
    return found
