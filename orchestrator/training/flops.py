"""The model's FLOPs per training sample, and the share of the hardware's peak a run
achieves: model FLOPs utilisation (MFU), as PaLM defines it.

FLOPs are counted, not estimated from the parameter count: one forward pass of the plain
model on the meta device (no memory, no compute) under torch's FlopCounterMode, which
knows matrix products, convolutions and attention. Training is taken as three forward
passes (backward costs two), the usual accounting; recomputation by activation
checkpointing is not counted, so MFU compares layouts and options on the model's
arithmetic alone.

Exercised by: pytest tests/test_block_compute.py -k flops
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

TRAINING_PASSES = 3  # forward, and backward at twice the forward's cost

# Dense peak TFLOP/s per device (vendor datasheets, without sparsity): (bf16, fp32).
# fp32 is the plain (non-tensor-core) rate: training in fp32 here leaves TF32 off.
# Matched in order against torch.cuda.get_device_name(), so the more specific name first.
PEAK_TFLOPS: list[tuple[str, float, float]] = [
    ("H100 PCIe", 756.0, 51.2),
    ("H100", 989.4, 66.9),
    ("H200", 989.4, 66.9),
    ("H800", 989.4, 66.9),
    ("A100", 312.0, 19.5),
    ("L40S", 362.1, 91.6),
    ("L4", 121.0, 30.3),
]


def flops_per_sample(model: nn.Module, example: torch.Tensor) -> float | None:
    """Training FLOPs of one sample through `model` (built on the meta device), from a
    forward pass of `example` (a batch of one or more samples, any device). None when
    the model cannot run on the meta device (kernels without a meta implementation,
    code that reads tensor values)."""
    counter = FlopCounterMode(display=False)
    model.eval()  # the same FLOPs; batch norm in training mode refuses a batch of one
    try:
        with counter, torch.no_grad():
            model(example.to("meta"))
    except Exception:  # noqa: BLE001 - a metric, not the run: a model meta cannot run has none
        return None
    return TRAINING_PASSES * counter.get_total_flops() / len(example)


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak in FLOP/s at `precision`, or None when not known (CPUs,
    GPUs missing from the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, bf16, fp32 in PEAK_TFLOPS:
        if fragment in name:
            return 1e12 * (bf16 if precision == "bf16" else fp32)
    return None


def utilisation(flops_per_sample: float | None, samples_per_s: float, world_size: int,
                peak: float | None) -> dict[str, float]:
    """`model_tflops` (the job's achieved model TFLOP/s, all workers together) and `mfu`
    (that over the workers' combined peak), for a step's metrics record."""
    if flops_per_sample is None:
        return {}
    achieved = flops_per_sample * samples_per_s
    numbers = {"model_tflops": achieved / 1e12}
    if peak:
        numbers["mfu"] = achieved / (world_size * peak)
    return numbers
