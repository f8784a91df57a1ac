"""One check: the sequential reference once, then each layout against it.

Where the processes come from is the caller's: `orchestrator verify` starts fresh
workers for each layout, `launch` uses the warm workers it then trains on. Both
hand in how to run a trimmed job (`RunJob`), and get a `LayoutCheck` back.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from orchestrator.config.loading import spec_from_dict
from orchestrator.config.spec import JobSpec
from orchestrator.data.model_arguments import model_arguments
from orchestrator.errors import JobSpecError
from orchestrator.training.model import build_job_model
from orchestrator.verify.compare import Comparison, ModelFacts, compare_runs
from orchestrator.verify.layouts import reference_spec, trimmed

DEFAULT_RTOL = {"fp32": 1e-5, "bf16": 1e-2}

# run(trimmed job, directory to train it into): trains it there, or raises.
RunJob = Callable[[JobSpec, Path], None]


@dataclass
class LayoutCheck:
    layout: str
    workers: int
    seconds: float
    comparison: Comparison | None = None
    refused: str | None = None  # the layout cannot take this job (why)
    error: str | None = None  # the layout's run failed (what failed)

    @property
    def passed(self) -> bool:
        return self.refused is None and self.error is None and self.comparison is not None \
            and self.comparison.passed()

    def to_event(self) -> dict[str, Any]:
        """The fields of a `verify` event in events.jsonl and of `summary.json`'s `verify`."""
        found: dict[str, Any] = {"layout": self.layout, "workers": self.workers, "passed": self.passed,
                                 "seconds": round(self.seconds, 3)}
        if self.comparison is not None:
            c = self.comparison
            found.update(loss_deviation=c.loss_deviation, grad_norm_deviation=c.grad_norm_deviation,
                         parameter_deviation=c.parameter_deviation, worst_parameter=c.worst_parameter,
                         first_divergent_step=c.first_divergent_step, differing=c.differing,
                         noisy=c.noisy)
        for key in ("refused", "error"):
            if getattr(self, key) is not None:
                found[key] = getattr(self, key)
        return found


@dataclass
class VerifyReport:
    steps: int
    rtol: float
    reference_seconds: float
    checks: list[LayoutCheck] = field(default_factory=list)
    nondeterministic: list[str] = field(default_factory=list)  # modules drawing random numbers in forward
    smaller_instance: dict[str, Any] = field(default_factory=dict)  # strategy.verify_options, when used
    dropout_off: dict[str, float] = field(default_factory=dict)  # config keys the check set to 0

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks if c.refused is None)


class Reference:
    """The job's first `steps` steps in one plain process, and what is known about its
    model (shared weights, buffers, randomness), read once off the meta device.

    Dropout that a Hugging Face config sets is turned off for the check (each rank
    would draw its own masks, and no layout could match); the check's model options
    are the job's, then `strategy.verify_options`, then those zeros."""

    def __init__(self, spec: JobSpec, steps: int, root: Path, rtol: float | None = None) -> None:
        self.job = spec
        self.steps = steps
        self.root = root
        self.rtol = rtol if rtol is not None else DEFAULT_RTOL[spec.train.precision]
        self.model_options = dict(spec.strategy.verify_options)
        self.meta_model = self._meta_model()
        self.dropout_off = {key: 0.0 for key in config_dropout(self.meta_model)}
        if self.dropout_off:
            self.model_options.update(self.dropout_off)
            self.meta_model = self._meta_model()
        self.spec = reference_spec(spec, steps, self.model_options)
        self.nondeterministic = random_modules(self.meta_model)
        self.report: VerifyReport | None = None

    def _meta_model(self) -> torch.nn.Module:
        job = reference_spec(self.job, self.steps, self.model_options)
        with torch.device("meta"):
            return build_job_model(job, model_arguments(job))

    @property
    def directory(self) -> Path:
        return self.root / "reference"

    @property
    def reordered_directory(self) -> Path | None:
        """The reference again with another micro-batch size: the same sums in another
        order, to tell a tensor's rounding noise from a layout's error (compare.NOISE_FACTOR)."""
        return self.root / "reference-reordered" if self._reordered_spec() is not None else None

    def run(self, run_job: RunJob) -> VerifyReport:
        started = time.perf_counter()
        run_job(self.spec, self.directory)
        if self.reordered_directory is not None:
            run_job(self._reordered_spec(), self.reordered_directory)
        self.report = VerifyReport(self.steps, self.rtol, time.perf_counter() - started,
                                   nondeterministic=self.nondeterministic,
                                   smaller_instance=dict(self.job.strategy.verify_options),
                                   dropout_off=self.dropout_off)
        return self.report

    def check(self, name: str, strategy: dict[str, Any], workers: int, run_job: RunJob) -> LayoutCheck:
        """Run `strategy` at `workers` with `run_job` and compare it; the row is added to
        the report. A layout the job cannot take is a refused row; one whose run fails,
        a failed row with the error."""
        started = time.perf_counter()
        try:
            layout = trimmed(self.job, self.steps, strategy, workers, self.model_options)
        except JobSpecError as error:
            return self._add(LayoutCheck(name, workers, 0.0, refused="; ".join(error.problems)))
        try:
            run_job(layout, self.root / name)
        except Exception as error:  # the row says what failed; the caller decides what follows
            return self._add(LayoutCheck(name, workers, time.perf_counter() - started, error=str(error)))
        comparison = compare_runs(self.directory, self.root / name, self.rtol, self.facts(layout),
                                  self.reordered_directory)
        return self._add(LayoutCheck(name, workers, time.perf_counter() - started, comparison))

    def facts(self, layout: JobSpec) -> ModelFacts:
        """Shared weights, buffers and (for a tensor layout) the plan, to explain a difference."""
        from strategies.sharing import shared_parameters
        from strategies.tensor_parallel import PlanError, resolve_plan

        plan: dict[str, str] = {}
        tp = getattr(layout.strategy, "tp", 1)
        if tp > 1:
            try:
                plan = resolve_plan(self.meta_model, getattr(layout.strategy, "plan", "model"), tp)
            except PlanError:
                plan = {}
        buffers = {n for n, _ in self.meta_model.named_buffers()}
        batch_norm = {f"{module_name}.{buffer}" if module_name else buffer
                      for module_name, module in self.meta_model.named_modules()
                      if isinstance(module, torch.nn.modules.batchnorm._NormBase)
                      for buffer, _ in module.named_buffers(recurse=False)}
        return ModelFacts(shared_parameters(self.meta_model), buffers, plan, batch_norm)

    def _reordered_spec(self) -> JobSpec | None:
        """The reference with half (else twice) the micro-batch, where the batch allows."""
        raw = self.spec.model_dump(mode="json")
        micro, batch = raw["train"]["micro_batch_size"], raw["train"]["global_batch_size"]
        for other in (micro // 2, micro * 2):
            if other >= 1 and other != micro and batch % other == 0:
                raw["train"]["micro_batch_size"] = other
                return spec_from_dict(raw, base_dir=self.spec.base_dir)
        return None

    def _add(self, check: LayoutCheck) -> LayoutCheck:
        if self.report is not None:
            self.report.checks.append(check)
        return check


def random_modules(model: torch.nn.Module) -> list[str]:
    """Modules that draw random numbers in a training forward pass: each rank draws its
    own, so no layout can match the reference while they are on."""
    found = [f"{n} (p={m.p})" for n, m in model.named_modules()
             if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]
    return found + [f"config.{key}" for key in config_dropout(model)]


def config_dropout(model: torch.nn.Module) -> list[str]:
    """A Hugging Face model's config keys that switch dropout on (model.options can set
    them: they are config keys)."""
    config = getattr(model, "config", None)
    to_dict = getattr(config, "to_dict", None)
    if to_dict is None:
        return []
    return [key for key, value in to_dict().items()
            if ("dropout" in key or "pdrop" in key) and isinstance(value, float) and value > 0]
