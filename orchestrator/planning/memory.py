"""Per-worker memory estimates for `orchestrator plan`, computed without Ray.

Exercised by: orchestrator plan examples/gpt_zero3.yaml --workers 2
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

import strategies
from orchestrator.training.activations import SavedActivations

if TYPE_CHECKING:
    from orchestrator.config.spec import JobSpec


# Optimizer state in fp32 values per parameter.
OPTIMIZER_STATE_PER_PARAM = {"sgd": 0, "adam": 2, "adamw": 2}


@dataclass(frozen=True)
class MemoryEstimate:
    """Per-worker bytes on one data-parallel rank, after the strategy's sharding.

    `offloaded` names the parts the strategy keeps in host memory instead."""

    params: int
    grads: int
    optimizer: int
    activations: int | None
    sharded: frozenset[str] = frozenset()
    offloaded: frozenset[str] = frozenset()

    @property
    def total(self) -> int:
        """Bytes on the device: everything but what is offloaded to host memory."""
        parts = {"params": self.params, "grads": self.grads, "optimizer": self.optimizer}
        kept = sum(v for k, v in parts.items() if k not in self.offloaded)
        return kept + (self.activations or 0)


def estimate_memory(
    model: torch.nn.Module, spec: "JobSpec", example_input: torch.Tensor, dp: int = 1
) -> MemoryEstimate:
    """Estimate one worker's memory for the job's strategy at `dp` data-parallel ranks.

    Parameter, gradient and optimizer bytes are counted from the model, and divided
    by `dp` where the strategy shards them (the ZeRO paper's accounting, all fp32);
    activations from one micro-batch forward pass on the meta device (no real
    memory is used): the tensors autograd keeps for backward, counted as a run's
    profiled step counts them (orchestrator/training/activations.py).
    """
    n_params = sum(p.numel() for p in model.parameters())
    per_value = 4  # fp32 master weights, gradients and optimizer state
    state_values = OPTIMIZER_STATE_PER_PARAM[spec.optimizer.name]
    if spec.optimizer.name == "sgd" and spec.optimizer.momentum > 0:
        state_values = 1
    activation_bytes = _activation_bytes(model, example_input)
    if spec.train.precision == "bf16" and activation_bytes is not None:
        activation_bytes //= 2
    sharding_of = strategies.get_strategy(spec.strategy.name).sharding
    sharding = sharding_of(spec.strategy) if sharding_of else strategies.Sharding()
    sharded = frozenset(k for k in ("params", "grads", "optimizer") if getattr(sharding, k))

    def per_rank(part: str, total: int) -> int:
        return -(-total // dp) if part in sharded else total

    return MemoryEstimate(
        params=per_rank("params", n_params * per_value),
        grads=per_rank("grads", n_params * per_value),
        optimizer=per_rank("optimizer", n_params * per_value * state_values),
        activations=activation_bytes,
        sharded=sharded,
        offloaded=sharding.offloaded,
    )


def _activation_bytes(model: torch.nn.Module, example_input: torch.Tensor) -> int | None:
    meta_model = _copy_to_meta(model)
    activations = SavedActivations(meta_model)
    try:
        with activations.tracking():
            meta_model(example_input.to("meta"))
    except (NotImplementedError, RuntimeError):
        return None  # some kernels (e.g. LSTM) have no meta implementation
    return activations.peak_bytes


def _copy_to_meta(model: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(model).to("meta")


def human_bytes(n: int | None) -> str:
    if n is None:
        return "n/a"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    raise AssertionError("unreachable")
