"""Where a step's time goes: fetching its data, forward and backward (with whatever
communication they do not hide), the optimizer (with the gradient reduction sharded
strategies do there). Written into each step's metrics record as `step_data_s`,
`step_compute_s` and `step_optimizer_s`; the rest of `step_time_s` is the loop's own.

On a GPU the work is queued, not done, when the host moves on: the phases are timed
only with `train.step_breakdown: true`, which waits for the device at each phase.
"""
from __future__ import annotations

import time

import torch

PHASES = ("step_data_s", "step_compute_s", "step_optimizer_s")


class StepPhases:
    def __init__(self, device: torch.device, synchronize: bool) -> None:
        self.cuda = device.type == "cuda"
        self.enabled = not self.cuda or synchronize
        self.times = dict.fromkeys(PHASES, 0.0)
        self._mark = 0.0

    def start(self) -> None:
        self.times = dict.fromkeys(PHASES, 0.0)
        self._mark = time.perf_counter()

    def lap(self, phase: str) -> None:
        """The time since the last lap (or the start) belongs to `phase`."""
        if not self.enabled:
            return
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times[phase] += now - self._mark
        self._mark = now

    def record(self) -> dict[str, float]:
        return dict(self.times) if self.enabled else {}
