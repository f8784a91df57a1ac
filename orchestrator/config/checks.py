"""Checks of a job that need its process layout or its model, run after the spec
itself has validated (config/loading.py calls `job_problems`).

They live apart from the spec because they use planning (batch arithmetic, the
strategy's layout) and the model, which in turn read the spec's types: checking
them inside the spec's validator would make the spec import its own consumers.
"""
from __future__ import annotations

import torch

import models

import strategies
from orchestrator.config.spec import JobSpec
from orchestrator.data.inspection import data_problems
from orchestrator.data.model_arguments import model_arguments
from orchestrator.planning.layout import batch_fits, batch_layout, layout_for
from orchestrator.training.model import build_job_model


def job_problems(spec: JobSpec, build: bool = True, data: bool = True) -> list[str]:
    """Every problem of a validated spec's data (with `data`: its schema and first rows,
    data/inspection.py), batch arithmetic and layout, each naming its key; with `build`,
    also those that need the model built (on the meta device)."""
    problems = (data_problems(spec) if data else []) + batch_problems(spec)
    return problems or (model_layout_problems(spec) if build else [])


def batch_problems(spec: JobSpec) -> list[str]:
    """Refuse a worker range with a count whose batch arithmetic does not divide.

    In an elastic range, counts the layout itself cannot take (tensor x pipeline not
    dividing them) are skipped: the controller never runs at those counts.
    """
    problems, usable = [], []
    counts = range(spec.scaling.min_workers, spec.scaling.max_workers + 1)
    for workers in counts:
        try:
            layout_for(spec, workers)
        except strategies.LayoutError as error:
            if len(counts) == 1:
                problems.append(f"scaling.workers: {workers} workers: {error}")
            continue
        try:
            batch_layout(spec, workers)
            usable.append(workers)
        except ValueError as error:
            problems.append(str(error))
    if problems or not usable:
        fits = [n for n in range(1, 4 * spec.scaling.max_workers + 1) if batch_fits(spec, n)]
        problems.append(
            f"scaling.workers: {list(_as_tuple(spec.scaling.workers))} includes counts the job cannot "
            f"be split over; counts that fit: {', '.join(map(str, fits)) or 'none'}"
        )
    return problems


def model_layout_problems(spec: JobSpec) -> list[str]:
    """Layout checks that need the model (a tensor degree that does not divide the heads,
    more stages than blocks), for every worker count the job may run at. The model is
    built on the meta device: shapes only, no memory."""
    check = strategies.get_strategy(spec.strategy.name).check
    if check is None:
        return []
    try:
        with torch.device("meta"):
            model = build_job_model(spec, model_arguments(spec))
    except models.ModelConfigError as error:
        return [str(error)]
    except Exception as error:  # the user's factory: whatever it raises is their problem to see
        return [f"model.name: building {spec.model.name!r} failed: {type(error).__name__}: {error}"]
    problems: list[str] = []
    layouts = set()
    for workers in range(spec.scaling.min_workers, spec.scaling.max_workers + 1):
        try:
            dims = layout_for(spec, workers)
        except strategies.LayoutError:
            continue  # reported with the batch arithmetic
        if dims in layouts:
            continue
        layouts.add(dims)
        found = check(spec.strategy, model, dims, spec.train.micro_batch_size)
        problems += [p for p in found if p not in problems]
    return problems


def _as_tuple(workers: int | tuple[int, int]) -> tuple[int, ...]:
    return (workers,) if isinstance(workers, int) else tuple(workers)
