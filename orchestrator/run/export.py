"""The final weights of a run, `model.safetensors`, and how to load them back.

Safetensors refuses two names on one storage, and models share weights (a decoder's
input embedding and output layer, tied). Each storage is written once, under its first
name; the other names are recorded as aliases in the file's metadata and restored by
`load_weights`, so the state dict loads into a fresh instance of the model's class:

    from orchestrator.run.export import load_weights
    model.load_state_dict(load_weights("runs/x/model.safetensors"))

Exercised by: pytest tests/test_export.py
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

ALIASES_KEY = "aliases"


def write_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Write `state` (name -> tensor); names whose tensor shares another's storage are aliases."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_of: dict[tuple, str] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()), tensor.dtype)
        if key in first_of and tensor.numel() > 0:
            aliases[name] = first_of[key]
            continue
        first_of[key] = name
        tensors[name] = tensor.contiguous().clone() if _shares_storage(tensor, tensors) else tensor.contiguous()
    save_file(tensors, str(path), metadata={ALIASES_KEY: json.dumps(aliases)})


def _shares_storage(tensor: torch.Tensor, written: dict[str, torch.Tensor]) -> bool:
    """Another view of a written tensor's storage (not the same view): safetensors refuses it."""
    pointer = tensor.untyped_storage().data_ptr()
    return any(t.untyped_storage().data_ptr() == pointer for t in written.values())


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every name the model had, aliases pointing at the tensor they share."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    for alias, name in json.loads(metadata.get(ALIASES_KEY, "{}")).items():
        tensors[alias] = tensors[name]
    return tensors
