"""Checks of a job beyond its schema, run after the spec itself has validated
(config/loading.py): its data, batch arithmetic and layout (`job_problems`), then its
model's code and, built on the meta device, the model against the layout
(`model_problems`).

They live apart from the spec because they use the data's readers, planning (batch
arithmetic, the strategy's layout) and the model's code, which in turn read the spec's
types: checking them inside the spec's validator would make the spec import its own
consumers. Only `model_problems` needs torch, so a job's other problems are found
without it.
"""
from __future__ import annotations

from typing import Any

import strategies
from orchestrator.config.spec import JobSpec
from orchestrator.data.inspection import data_problems
from orchestrator.planning.layout import batch_fits, batch_layout, layout_for


def job_problems(spec: JobSpec, here: bool = True) -> list[str]:
    """Every problem of a validated spec's data (with `here`: this machine has the data;
    data/inspection.py reads its schema and first rows) and batch arithmetic, each naming
    its key."""
    return (data_problems(spec) if here else []) + batch_problems(spec)


def model_problems(spec: JobSpec, build: bool = True) -> list[str]:
    """`model.options` against the model's code; with `build`, and when they pass, the
    layout checks that need the model built. For a spec without `job_problems`."""
    return model_option_problems(spec.model.name, spec.model.options) or (
        model_layout_problems(spec) if build else [])


def model_option_problems(name: Any, options: Any) -> list[str]:
    """`model.name` resolves (importing its code, and torch) and takes `model.options`,
    checked against the factory's signature without building the model."""
    import models

    if not isinstance(name, str) or not isinstance(options, dict):
        return []  # the schema reports them
    try:
        models.check_model_options(name, options)
    except models.ModelConfigError as error:
        return [str(error)]
    return []


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
    import torch

    import models
    from orchestrator.data.model_arguments import model_arguments
    from orchestrator.training.model import build_job_model

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
