"""PyTorch internals the strategies reach into, and why.

- `replicate`: data parallelism over DTensor parameters (hybrid.py). It lives in a private
  module, `torch.distributed._composable.replicate_with_fsdp`.
- `saved_other`: the operand an autograd Mul/Div node saved, which the automatic tensor
  plan reads (tensor_parallel.py); torch exposes it only as the node's `_saved_other`.

Exercised by: pytest tests/test_compat.py
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from strategies.compat import missing, reach, release

TESTED_VERSION = "2.13.0"


def installed_version() -> str:
    return release(torch.__version__)


def replicate(module: nn.Module, mesh: DeviceMesh) -> nn.Module:
    """Replicate `module` over `mesh`, averaging gradients: DDP that takes DTensors.

    torch's DistributedDataParallel refuses DTensor parameters, which tensor parallelism
    makes. replicate() is DDP built on FSDP2's machinery: it composes with tensor
    parallelism, and pipeline stages hold its gradient sync back to a schedule's last
    micro-batch as they do FSDP's. torch 2.13 has it in a private module only.
    """
    return _internal("torch.distributed._composable.replicate_with_fsdp", "replicate")(module, mesh=mesh)


def saved_other(node: Any) -> Any:
    """The second operand autograd node `node` (a MulBackward0 or DivBackward0) saved.

    The automatic tensor plan tells an element-wise mask (a dropout mask, the
    activation's own shape) from a broadcast full-width vector by this operand's shape.
    """
    try:
        return node._saved_other
    except AttributeError as error:
        what = f"{type(node).__name__}._saved_other"
        raise missing("torch", installed_version(), TESTED_VERSION, what) from error


def check() -> None:
    """Find every internal this module reaches.

    Raises:
        RuntimeError: naming the missing internal and both versions.
    """
    _internal("torch.distributed._composable.replicate_with_fsdp", "replicate")
    flowing = torch.ones(2, requires_grad=True)
    for node in ((flowing * torch.ones(2)).grad_fn, (flowing / torch.ones(2)).grad_fn):
        saved_other(node)


def _internal(module: str, attribute: str) -> Any:
    return reach(module, attribute, "torch", installed_version(), TESTED_VERSION)
