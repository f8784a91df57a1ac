"""`launch`'s check: the job's own layout against a sequential reference, before step 1.

It runs when a wrong layout would go unnoticed: the model is not one of the built-ins
(whose layouts the test suite proves) and the strategy changes how the model is
computed (sharded or split weights, a split forward). `strategy.verify` forces it on
or off. It runs on the workers the launch then trains on (see
execution/elastic/warm.py), and a failure stops the launch with the layout, the step
and the tensors that differ.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Protocol

import strategies
from orchestrator.config.spec import JobSpec
from orchestrator.data.model_arguments import example_input, model_arguments
from orchestrator.errors import TrainingError, VerificationError
from orchestrator.planning.layout import batch_layout
from orchestrator.planning.memory import estimate_memory, human_bytes
from orchestrator.run.files import RunFiles
from orchestrator.run.records import EventLog, RunRecords
from orchestrator.run.storage import remove_tree
from orchestrator.verify.check import LayoutCheck, Reference
from orchestrator.verify.render import HEADER, failure_lines, noise_line, randomness_line, row

CHECK_STEPS = 3


class Workers(Protocol):
    """What the check needs of the started workers (execution/elastic/warm.WarmWorkers)."""

    def world_size(self) -> int: ...
    def memory_bytes(self) -> dict[str, int]: ...  # {"device": ..., "host": ...}
    def run_alone(self, spec: JobSpec, run_dir: Path, on_host: bool = False) -> None: ...
    def run_together(self, spec: JobSpec, run_dir: Path, world_size: int) -> None: ...


def check_reason(spec: JobSpec) -> str | None:
    """Why `launch` checks this job's layout first; None when it does not."""
    import models

    option = spec.strategy.verify
    if option is not None:
        return "strategy.verify: true" if option else None
    if spec.model.name in models.MODEL_REGISTRY:
        return None
    if not strategies.get_strategy(spec.strategy.name).changes_math(spec.strategy):
        return None
    return f"{spec.model.name} has not been checked under {spec.strategy.name}, which changes how it is computed"


def launch_check(spec: JobSpec, run_dir: Path, say) -> "LaunchCheck | None":
    """The check `launch` runs first, or None: not needed, or passed already (a resume)."""
    reason = check_reason(spec)
    if reason is None:
        return None
    passed = [e for e in RunRecords(run_dir).events() if e.get("event") == "verify" and e.get("passed")]
    if passed:
        say(f"verify: passed when the run started ({passed[-1]['layout']}); not repeated")
        return None
    return LaunchCheck(spec, run_dir, reason, say)


class LaunchCheck:
    """Called with the started workers; returns when the layout matches, raises when not."""

    def __init__(self, spec: JobSpec, run_dir: Path, reason: str, say, steps: int = CHECK_STEPS) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.reason = reason
        self.say = say
        self.steps = steps

    def __call__(self, workers: Workers) -> None:
        """Raises:
        VerificationError: the layout differs from the reference (or its run failed).
        TrainingError: the model does not train even in one process.
        """
        started = time.perf_counter()
        size = workers.world_size()
        self.ready_seconds = time.perf_counter() - started
        root = RunFiles(self.run_dir).verify
        remove_tree(root)  # an earlier launch's failed check
        reference = Reference(self.spec, self.steps, root)
        place = self._place(reference, workers)
        if place is None or not self._deterministic(reference):
            return
        self.say(f"verify: {self.reason}; checking {self.steps} steps at {size} workers against "
                 "a sequential run (strategy.verify: false skips this)")
        if reference.dropout_off:
            self.say(f"verify: dropout off for the check ({', '.join(reference.dropout_off)} = 0)")
        try:
            reference.run(lambda job, run_dir: workers.run_alone(job, run_dir, on_host=place == "host"))
        except Exception as error:
            raise TrainingError(f"the model failed to train in one process (the launch check's "
                                f"reference):\n{error}") from error
        own = self.spec.strategy.model_dump(mode="json")
        check = reference.check(own["name"], own, size,
                                lambda job, run_dir: workers.run_together(job, run_dir, size))
        self._record(check, reference, time.perf_counter() - started)
        if not check.passed:
            raise VerificationError(self._failure(check, reference))
        remove_tree(root)

    def _place(self, reference: Reference, workers: Workers) -> str | None:
        """Where the reference runs: on a worker's device ("device"), in its host memory
        when only that holds the whole model ("host"), or nowhere (None: the check is
        skipped, loudly). plan's memory estimate decides."""
        if self.spec.strategy.verify_options:
            self.say(f"verify: on a smaller instance, model.options overridden by {self.spec.strategy.verify_options}")
        job = reference.spec
        micro_batch = batch_layout(job, 1).micro_batch
        needed = estimate_memory(reference.meta_model, job, example_input(job, model_arguments(job), micro_batch)).total
        memory = workers.memory_bytes()
        if needed <= memory["device"]:
            return "device"
        if needed <= memory["host"]:
            self.say(f"verify: the model needs about {human_bytes(needed)} in one process, more than a worker's "
                     f"device has ({human_bytes(memory['device'])}); the reference runs in host memory")
            return "host"
        self._skip(f"the model needs about {human_bytes(needed)} in one process, a worker has "
                   f"{human_bytes(memory['device'])} (host {human_bytes(memory['host'])}): set "
                   "strategy.verify_options to check a smaller instance")
        return None

    def _deterministic(self, reference: Reference) -> bool:
        """Whether the forward pass draws no random numbers; if it does, the check is
        skipped, loudly: each rank would draw its own, and no layout could match."""
        if not reference.nondeterministic:
            return True
        self._skip(f"the model draws random numbers in its forward pass ({', '.join(reference.nondeterministic)}): "
                   "set them to 0 in strategy.verify_options to check the layout")
        return False

    def _skip(self, message: str) -> None:
        self.say(f"verify: SKIPPED: {message}")
        EventLog(self.run_dir).write("verify", layout=self.spec.strategy.name, passed=False, skipped=message)

    def _record(self, check: LayoutCheck, reference: Reference, seconds: float) -> None:
        fields = check.to_event()
        fields.update(steps=self.steps, reference_seconds=round(reference.report.reference_seconds, 3),
                      seconds=round(seconds, 3), workers_ready_seconds=round(self.ready_seconds, 3),
                      reason=self.reason)
        EventLog(self.run_dir).write("verify", **fields)
        verdict = "pass" if check.passed else "FAIL"
        noise = f"\n  {noise_line(check.comparison.noisy)}" if check.comparison and check.comparison.noisy else ""
        self.say(f"verify: {verdict} in {seconds:.1f} s (workers starting {self.ready_seconds:.1f} s, reference "
                 f"{reference.report.reference_seconds:.1f} s, layout {check.seconds:.1f} s)\n  {HEADER}\n  {row(check)}"
                 + noise)

    def _failure(self, check: LayoutCheck, reference: Reference) -> str:
        lines = [f"the layout does not train {self.spec.model.name} as one process does; "
                 "nothing was trained"] + failure_lines(check)
        if reference.report.nondeterministic:
            lines.append(randomness_line(reference.report))
        lines.append(f"the check's runs are kept in {RunFiles(self.run_dir).verify}; "
                     "`orchestrator verify` compares other layouts")
        return "\n".join(lines)
