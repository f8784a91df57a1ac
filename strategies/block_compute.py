"""How each block of the model computes: activation checkpointing and torch.compile.

Both are applied to the model's blocks (`strategies.blocks.repeated_blocks`), or to the
whole model when it has none, after a strategy has wrapped or sharded it (the order
torchtitan composes them in: tensor split, then recomputation, then compilation, each
block on its own). Neither changes a parameter's name, so checkpoints load with the
options on or off, and neither changes the math beyond the rounding of fused kernels:

- `activation_checkpointing`: "full" keeps only each block's input and runs its forward
  again during backward; "selective" keeps the outputs of matrix products and attention
  (the expensive ops) and recomputes the cheap element-wise ones around them (layer
  norms, activations, dropout masks are recomputed from the same RNG state).
- `compile`: `nn.Module.compile()` on each block, compiled on its first call. Blocks of one
  class share the compiled code; a model's own Python in between (embedding, head, loss)
  stays eager.

Exercised by: pytest tests/test_block_compute.py
"""
from __future__ import annotations

import functools
import types
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

ActivationCheckpointing = Literal["none", "selective", "full"]


@dataclass(frozen=True)
class BlockCompute:
    """What the job asked for (`train.activation_checkpointing`, `train.compile`)."""

    activation_checkpointing: ActivationCheckpointing = "none"
    compile: bool = False

    @property
    def changes_anything(self) -> bool:
        return self.activation_checkpointing != "none" or self.compile


def _ops_worth_keeping() -> frozenset:
    """Ops whose outputs selective checkpointing keeps: each costs a matrix product."""
    aten = torch.ops.aten
    names = [
        "mm", "addmm", "bmm", "baddbmm", "convolution",
        "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
    ]
    return frozenset(getattr(aten, name).default for name in names if hasattr(aten, name))


def _keep_matmuls(_ctx, op, *_args, **_kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if op in _ops_worth_keeping() else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_contexts():
    return create_selective_checkpoint_contexts(_keep_matmuls)


def checkpoint_forward(module: nn.Module, mode: ActivationCheckpointing) -> None:
    """Make `module`'s forward recompute in backward instead of keeping its activations.

    The forward is replaced on the instance, not wrapped in another module, so the
    module's parameter names (and so checkpoints and tensor plans) stay as they were.
    Non-reentrant checkpointing: it composes with DDP, FSDP2 and DTensor, and keyword
    arguments (a decoder layer's masks and positions) pass through.
    """
    if mode == "none":
        return
    original = module.forward
    context_fn = _selective_contexts if mode == "selective" else None

    @functools.wraps(original)
    def forward(*args, **kwargs):
        if not torch.is_grad_enabled():  # evaluation keeps nothing to recompute from
            return original(*args, **kwargs)
        if context_fn is None:
            return checkpoint(original, *args, use_reentrant=False, **kwargs)
        return checkpoint(original, *args, use_reentrant=False, context_fn=context_fn, **kwargs)

    module.forward = _with_code_of_class(forward, type(module))


# One code object per module class for the replaced forwards. torch.compile keeps its
# compiled variants per code object, a few of them (dynamo's recompile_limit): with one
# shared code object, a GPT's embedding, blocks and head, each in training and evaluation,
# would use them up and the rest would silently run eagerly.
_CODE_OF_CLASS: dict[type, types.CodeType] = {}


def _with_code_of_class(function: types.FunctionType, cls: type) -> types.FunctionType:
    code = _CODE_OF_CLASS.setdefault(
        cls, function.__code__.replace(co_name=f"{cls.__name__}_recomputed_forward")
    )
    copy = types.FunctionType(code, function.__globals__, code.co_name, function.__defaults__,
                              function.__closure__)
    return functools.update_wrapper(copy, function)


def apply_block_compute(blocks: list[nn.Module], model: nn.Module, options: BlockCompute) -> None:
    """Apply `options` to `blocks` (or to `model` when the list is empty), in place."""
    units = blocks or [model]
    for unit in units:
        checkpoint_forward(unit, options.activation_checkpointing)
        if options.compile:
            unit.compile()
