"""Models that fail on purpose, as a user's buggy model would, for the failure tests:
`tests.failing_models:raises_at_step` and `tests.failing_models:hangs_at_step`.

Each counts its training forward passes in a buffer, which is saved in checkpoints
and loaded on resume, so a restarted attempt knows which optimizer step it is on.
"""
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


class StepCountingMLP(nn.Module):
    def __init__(self, input_dim: int, output_dim: int, forwards_per_step: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(input_dim, 32), nn.ReLU(), nn.Linear(32, output_dim))
        self.forwards_per_step = forwards_per_step
        self.register_buffer("forwards", torch.zeros((), dtype=torch.long))

    def step_starting(self) -> int | None:
        """Counts a training forward pass; the optimizer step it starts, if it starts one."""
        if not (self.training and torch.is_grad_enabled()):
            return None
        self.forwards += 1
        done = int(self.forwards) - 1
        return done // self.forwards_per_step + 1 if done % self.forwards_per_step == 0 else None


class RaisesAtStep(StepCountingMLP):
    def __init__(self, input_dim: int, output_dim: int, step: int, forwards_per_step: int) -> None:
        super().__init__(input_dim, output_dim, forwards_per_step)
        self.step = step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step_starting() == self.step:
            raise ValueError(f"deliberate failure at step {self.step}")
        return self.body(x)


class HangsAtStep(StepCountingMLP):
    def __init__(self, input_dim: int, output_dim: int, step: int, rank: int, marker: str | None,
                 forwards_per_step: int) -> None:
        super().__init__(input_dim, output_dim, forwards_per_step)
        self.step, self.rank = step, rank
        self.marker = Path(marker) if marker else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.step_starting() == self.step and dist.get_rank() == self.rank:
            if self.marker is None or not self.marker.exists():
                if self.marker is not None:
                    self.marker.touch()
                time.sleep(3600)  # never returns within the test: its peers' collective times out
        return self.body(x)


def raises_at_step(input_dim: int, output_dim: int, step: int = 5, forwards_per_step: int = 1) -> nn.Module:
    """Raises ValueError in forward on the `step`-th optimizer step, in every attempt."""
    return RaisesAtStep(input_dim, output_dim, step, forwards_per_step)


def hangs_at_step(input_dim: int, output_dim: int, step: int = 3, rank: int = 1, marker: str | None = None,
                  forwards_per_step: int = 1) -> nn.Module:
    """On `rank` only, sleeps in forward on the `step`-th optimizer step, so the other
    ranks' collective never completes: in every attempt, or with a `marker` file (made
    as the hang starts) only the first time."""
    return HangsAtStep(input_dim, output_dim, step, rank, marker, forwards_per_step)
