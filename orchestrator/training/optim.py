"""Optimizers and learning-rate schedules built from the job spec."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable

import torch

if TYPE_CHECKING:
    from orchestrator.config.spec import JobSpec


def build_optimizer(spec: "JobSpec", params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    opt = spec.optimizer
    if opt.name == "sgd":
        return torch.optim.SGD(
            params, lr=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov, weight_decay=opt.weight_decay
        )
    # foreach=False: the per-tensor path gives the same arithmetic on full and sharded
    # (DTensor) parameters, which keeps every strategy equal to the sequential run.
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[opt.name]
    return cls(params, lr=opt.lr, betas=opt.betas, eps=opt.eps, weight_decay=opt.weight_decay, foreach=False)


def lr_multiplier(spec: "JobSpec", step: int) -> float:
    """Learning rate at optimizer step `step` (0-based) as a share of `optimizer.lr`."""
    schedule, total = spec.schedule, spec.train.steps
    if step < schedule.warmup_steps:
        return (step + 1) / schedule.warmup_steps
    after = step - schedule.warmup_steps
    if schedule.name == "constant":
        return 1.0
    if schedule.name == "step":
        return schedule.gamma ** (after // schedule.step_size)
    span = max(1, total - schedule.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(after, span) / span))
    return schedule.min_lr_ratio + (1 - schedule.min_lr_ratio) * cosine


def build_scheduler(spec: "JobSpec", optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(spec, step))
