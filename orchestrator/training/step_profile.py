"""One step profiled on every rank (`train.profile_step: N`): what its collectives moved
and how long the step waited for them (comm_profile.py), and the most memory its
activations held at once (activations.py). Each rank's findings go into its usage.jsonl
record as `comm` and `activation_bytes`. Profiling slows the step it profiles: it is one
step, and its time is not what the metrics' steady step time is made of.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from orchestrator.training.activations import SavedActivations
from orchestrator.training.comm_profile import exposed_communication, summarize_collectives
from orchestrator.training.phases import StepPhases


class StepProfile:
    """Profiles the step run inside `step()` while `active`."""

    def __init__(self, device: torch.device, model: torch.nn.Module, phases: StepPhases) -> None:
        self.device, self.model, self.phases = device, model, phases
        self.comm: dict[str, Any] | None = None
        self.activation_bytes: int | None = None

    @contextlib.contextmanager
    def step(self, active: bool) -> Iterator[None]:
        if not active:
            yield
            return
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        activations = SavedActivations(self.model)
        self.phases.marking = True
        try:
            with profile(activities=activities, record_shapes=True) as profiler, activations.tracking():
                yield
        finally:
            self.phases.marking = False
        events = profiler.events()
        self.comm = {**summarize_collectives(events), **exposed_communication(events)}
        self.activation_bytes = activations.peak_bytes

    def findings(self) -> dict[str, Any]:
        """What goes into the rank's usage record; nothing when no step was profiled."""
        if self.comm is None:
            return {}
        return {"comm": self.comm, "activation_bytes": self.activation_bytes}
