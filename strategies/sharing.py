"""Weights reached from more than one module (tied input and output embeddings, any
parameter two layers use): found once per model, so every strategy treats them alike.

Data and fully sharded parallelism keep one parameter under every name. Tensor
parallelism keeps a shared weight whole: splitting it on one side only would
untie it and change the math.
"""
from __future__ import annotations

from torch import nn


def shared_parameters(model: nn.Module) -> dict[str, list[str]]:
    """Each parameter reached under more than one name: its first name -> the others."""
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    return {found[0]: found[1:] for found in names.values() if len(found) > 1}


def modules_sharing_weights(model: nn.Module) -> dict[str, str]:
    """Module name -> a description of what it shares, for modules that own a shared weight."""
    shared = shared_parameters(model)
    owners: dict[str, str] = {}
    for first, others in shared.items():
        every = [first, *others]
        for name in every:
            module, _, _ = name.rpartition(".")
            partners = ", ".join(n for n in every if n != name)
            owners[module] = f"shares {name.rpartition('.')[2]} with {partners}"
    return owners
