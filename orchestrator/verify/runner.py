"""`orchestrator verify`: the reference in this process, then each layout on fresh workers.

Exercised by: orchestrator verify examples/quickstart.yaml --strategies ddp,fsdp,tensor
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from orchestrator.config.spec import JobSpec
from orchestrator.execution.backend import backend_for
from orchestrator.execution.ray_runtime import refuse_ray_client, start_ray
from orchestrator.execution.resources import size_workers, worker_threads
from orchestrator.verify.check import Reference, VerifyReport
from orchestrator.verify.layouts import chosen_layouts
from orchestrator.verify.reference import run_reference


def verify(spec: JobSpec, names: list[str] | None, workers: int | None, steps: int,
           rtol: float | None, address: str | None, say) -> VerifyReport:
    """Raises JobSpecError for an unknown layout; a layout the job cannot take is a
    refused row, not an error."""
    layouts = chosen_layouts(spec, names, workers)
    refuse_ray_client(address)
    embedded = start_ray(address, say)
    try:
        return _run_all(spec, layouts, steps, rtol, say)
    finally:
        if embedded:
            import ray

            ray.shutdown()


def _run_all(spec: JobSpec, layouts: dict, steps: int, rtol: float | None, say) -> VerifyReport:
    import ray

    from orchestrator.data.pipeline import prepare_data

    reference = Reference(spec, steps, Path(tempfile.mkdtemp(prefix="orchestrator-verify-")), rtol)
    data = prepare_data(reference.spec, reference.root / "data")
    data_ref = ray.put(data)
    if spec.strategy.verify_options:
        say(f"checking a smaller instance: model.options overridden by {spec.strategy.verify_options}")
    # As many threads as a layout's worker gets: a kernel sums in another order with
    # another thread count, which an ill-conditioned model (batch norm over a few values)
    # turns into differences no layout made.
    threads = min(worker_threads(spec, count) for _, count in layouts.values())
    say(f"reference: {steps} steps of {spec.model.name} in one process ({threads} threads, as a worker)")
    report = reference.run(lambda job, run_dir: run_reference(job, data, run_dir, threads=threads))

    def on_fresh_workers(job: JobSpec, run_dir: Path) -> None:
        run_dir.mkdir(parents=True)
        resources = size_workers(job, ray.cluster_resources(), spares=0)
        backend_for("elastic").run(job, run_dir, data_ref, resources)

    for name, (strategy, count) in layouts.items():
        say(f"layout {name}: {count} workers")
        reference.check(name, strategy, count, on_fresh_workers)
    return report
