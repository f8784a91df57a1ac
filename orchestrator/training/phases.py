"""Where a step's time goes: fetching its data, forward, backward (each with whatever
communication it does not hide), the optimizer (with the gradient reduction sharded
strategies do there). Written into each step's metrics record as `step_data_s`,
`step_compute_s` (forward and backward) and `step_optimizer_s`, and, where the strategy
runs forward before backward, `step_forward_s` and `step_backward_s` (a pipeline schedule
interleaves the two: there is only their sum). The rest of `step_time_s` is the loop's own.

On a GPU the work is queued, not done, when the host moves on: the phases are timed
only with `train.step_breakdown: true`, which waits for the device at each phase.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

PHASES = ("step_data_s", "step_compute_s", "step_optimizer_s")
COMPUTE_PARTS = ("step_forward_s", "step_backward_s")
# A profiled step marks the end of each phase in the profiler's timeline with an empty
# range of this name and the phase's; the first mark is the step's start.
MARK = "orchestrator.phase_end:"


class StepPhases:
    def __init__(self, device: torch.device, synchronize: bool) -> None:
        self.cuda = device.type == "cuda"
        self.enabled = not self.cuda or synchronize
        self.marking = False  # set while the step is profiled
        self.times = dict.fromkeys(PHASES + COMPUTE_PARTS, 0.0)
        self._mark = 0.0

    def start(self) -> None:
        self.times = dict.fromkeys(PHASES + COMPUTE_PARTS, 0.0)
        self._mark = time.perf_counter()
        self._profiler_mark("start")

    def lap(self, phase: str) -> None:
        """The time since the last lap (or the start) belongs to `phase`."""
        if not self.enabled:
            return
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times[phase] += now - self._mark
        self._mark = now
        self._profiler_mark(phase)

    def ending_forward(self, loss_fn: Callable) -> Callable:
        """`loss_fn`, ending the forward phase when it has computed the loss."""
        def loss_then_lap(output, target):
            loss = loss_fn(output, target)
            self.lap("step_forward_s")
            return loss
        return loss_then_lap

    def record(self) -> dict[str, float]:
        if not self.enabled:
            return {}
        found = {key: self.times[key] for key in PHASES}
        if self.times["step_forward_s"] or self.times["step_backward_s"]:
            found.update({key: self.times[key] for key in COMPUTE_PARTS})
            found["step_compute_s"] = self.times["step_forward_s"] + self.times["step_backward_s"]
        return found

    def _profiler_mark(self, name: str) -> None:
        if self.marking:
            with torch.profiler.record_function(MARK + name):
                pass
