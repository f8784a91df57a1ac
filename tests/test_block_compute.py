"""Activation checkpointing and torch.compile keep the 1-worker run's losses, under the
strategies that wrap or split the blocks they act on; recomputation really keeps fewer
activations; FLOPs are counted and turned into model TFLOP/s in the metrics.

Exercised by: pytest tests/test_block_compute.py
"""
from __future__ import annotations

import pytest
import torch

import models
from strategies.block_compute import checkpoint_forward
from orchestrator.training.flops import flops_per_sample, utilisation
from tests.distributed import make_spec, train_in_processes
from tests.jobs import GPT_JOB

RELATIVE_TOLERANCE = 1e-5
COMPILED_TOLERANCE = 1e-4  # fused kernels round differently


def _losses(prepared, tmp_path, name, workers, **overrides):
    spec = make_spec(GPT_JOB, scaling__workers=workers, **overrides)
    return [r["loss"] for r in train_in_processes(spec, prepared(spec), workers, tmp_path / name)]


def _max_relative_deviation(losses, reference):
    assert len(losses) == len(reference)
    return max(abs(a - b) / abs(b) for a, b in zip(losses, reference))


@pytest.mark.parametrize(
    "strategy, mode",
    [({"name": "ddp"}, "full"), ({"name": "fsdp"}, "selective"), ({"name": "tensor", "tp": 2}, "full"),
     ({"name": "pipeline", "pp": 2, "schedule": "1f1b", "microbatches": 4}, "selective"),
     # zero3 is slow; fsdp-selective keeps a sharded strategy in the default tier.
     pytest.param({"name": "zero", "stage": 3}, "full", marks=pytest.mark.slow)],
    ids=["ddp-full", "fsdp-selective", "tensor-full", "pipeline-selective", "zero3-full"],
)
def test_recomputation_keeps_the_losses(prepared, tmp_path, strategy, mode):
    reference = _losses(prepared, tmp_path, "reference", 1)
    losses = _losses(prepared, tmp_path, "recomputed", 2, strategy=strategy,
                     train__activation_checkpointing=mode)
    assert _max_relative_deviation(losses, reference) < RELATIVE_TOLERANCE


@pytest.mark.slow  # two processes compiling on two cores: about a minute
def test_compiled_blocks_keep_the_losses_under_fsdp(prepared, tmp_path):
    reference = _losses(prepared, tmp_path, "reference", 1)
    losses = _losses(prepared, tmp_path, "compiled", 2, strategy={"name": "fsdp"},
                     train__compile=True, train__activation_checkpointing="selective")
    assert _max_relative_deviation(losses, reference) < COMPILED_TOLERANCE


def test_compile_compiles_each_block_and_keeps_names():
    from torch._dynamo.utils import counters

    from strategies.block_compute import BlockCompute, apply_block_compute

    def build():
        torch.manual_seed(0)
        return models.build_model("gpt", {"depth": 2, "width": 32, "heads": 4}, input_dim=None,
                                  output_dim=None, vocab_size=64, context=16)

    eager, compiled = build(), build()
    names = list(compiled.state_dict())
    apply_block_compute(list(compiled.layers), compiled, BlockCompute("selective", compile=True))
    tokens = torch.randint(0, 64, (4, 16))
    counters.clear()
    expected, got = eager(tokens), compiled(tokens)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo traced the blocks, not a fallback
    assert list(compiled.state_dict()) == names  # checkpoints load with compile on or off
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    got.sum().backward()


def _saved_bytes(mode: str) -> int:
    """Bytes autograd keeps for backward over one forward pass of a small GPT."""
    torch.manual_seed(0)
    model = models.build_model("gpt", {"depth": 2, "width": 64, "heads": 4}, input_dim=None,
                               output_dim=None, vocab_size=64, context=32)
    for block in model.layers:
        checkpoint_forward(block, mode)
    saved = 0

    def pack(tensor):
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(torch.randint(0, 64, (8, 32))).sum().backward()
    return saved


def test_recomputation_keeps_fewer_activations():
    # Counted in forward and in backward's recomputation together; full keeps the least
    # at any one time too, which is what matters, but the order holds for the totals.
    kept = {mode: _saved_bytes(mode) for mode in ("none", "selective", "full")}
    assert kept["full"] < kept["none"], kept
    assert kept["selective"] < kept["none"], kept


def test_flops_are_counted_on_the_meta_device():
    with torch.device("meta"):
        model = models.build_model("gpt", {"depth": 2, "width": 64, "heads": 4}, input_dim=None,
                                   output_dim=None, vocab_size=64, context=32)
    flops = flops_per_sample(model, torch.zeros(1, 32, dtype=torch.long))
    block_params = sum(p.numel() for p in model.layers.parameters())
    # 6 FLOPs per parameter per token for the blocks' matrix products, plus attention and head.
    assert 6 * block_params * 32 < flops < 3 * 6 * block_params * 32
    numbers = utilisation(flops, samples_per_s=100.0, world_size=2, peak=1e12)
    assert numbers["model_tflops"] == pytest.approx(flops * 100 / 1e12)
    assert numbers["mfu"] == pytest.approx(flops * 100 / 2e12)
    assert "mfu" not in utilisation(flops, 100.0, 2, peak=None)
