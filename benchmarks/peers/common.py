"""What the hand-written peer loops share: the job, its data and how a run reports.

The job is the one the speed benchmarks compare on: an MLP 256-1024-1024-10 trained with
AdamW on synthetic classification data, global batch split evenly over the workers, one
thread per worker. Each peer writes one JSON object on rank 0: the wall-clock time at the
end of every step (`step_ends`) and the losses, so the harness reads every loop the same
way (benchmarks/step_tax.py).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

FEATURES, HIDDEN, CLASSES = 256, 1024, 10
SAMPLES = 16384
LR = 1e-3


def build_model():
    from torch import nn

    return nn.Sequential(
        nn.Linear(FEATURES, HIDDEN), nn.ReLU(),
        nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
        nn.Linear(HIDDEN, CLASSES),
    )


def make_data(seed: int = 0):
    """Features and labels from a fixed random linear teacher."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(SAMPLES, FEATURES, generator=generator)
    teacher = torch.randn(FEATURES, CLASSES, generator=generator)
    return inputs, (inputs @ teacher).argmax(dim=1)


def rank_batch(step: int, rank: int, world_size: int, global_batch: int, seed: int = 0):
    """This rank's indices of step `step`'s global batch: one permutation per epoch."""
    import torch

    per_epoch = SAMPLES // global_batch
    epoch, position = divmod(step, per_epoch)
    order = torch.randperm(SAMPLES, generator=torch.Generator().manual_seed(seed + epoch))
    batch = order[position * global_batch:(position + 1) * global_batch]
    share = global_batch // world_size
    return batch[rank * share:(rank + 1) * share]


class StepClock:
    """Wall-clock time at each step's end, and the losses, written once at the end."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.step_ends: list[float] = []
        self.losses: list[float] = []

    def tick(self, loss: float) -> None:
        self.step_ends.append(time.time())
        self.losses.append(loss)

    def write(self) -> None:
        self.out.write_text(json.dumps({"step_ends": self.step_ends, "losses": self.losses}))


def train(model, rank: int, world_size: int, steps: int, global_batch: int, out: Path) -> None:
    """The plain loop both peers run once their launcher has wrapped `model` in DDP:
    AdamW, one global batch split over the ranks per step; rank 0 writes the clock."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    inputs, targets = make_data()
    clock = StepClock(out)
    for step in range(steps):
        ids = rank_batch(step, rank, world_size, global_batch)
        loss = torch.nn.functional.cross_entropy(model(inputs[ids]), targets[ids])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        clock.tick(float(loss))
    if rank == 0:
        clock.write()
