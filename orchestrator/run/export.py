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

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from orchestrator.run.storage import ObjectPath, run_path

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
    with _local_copy(path, upload=True) as local:
        save_file(tensors, str(local), metadata={ALIASES_KEY: json.dumps(aliases)})


@contextlib.contextmanager
def _local_copy(path, upload: bool) -> Iterator[Path]:
    """`path` itself when local; for an object, a temporary local file: uploaded after
    the block (`upload`), or holding the object's download during it."""
    if not isinstance(path, ObjectPath):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="orchestrator-weights-") as folder:
        local = Path(folder) / path.name
        if not upload:
            path.download(local)
        yield local
        if upload:
            path.upload(local)


def _shares_storage(tensor: torch.Tensor, written: dict[str, torch.Tensor]) -> bool:
    """Another view of a written tensor's storage (not the same view): safetensors refuses it."""
    pointer = tensor.untyped_storage().data_ptr()
    return any(t.untyped_storage().data_ptr() == pointer for t in written.values())


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every name the model had, aliases pointing at the tensor they share."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = run_path(path)
    with _local_copy(path, upload=False) as local:
        tensors = load_file(str(local))
        with safe_open(str(local), framework="pt") as handle:
            metadata = handle.metadata() or {}
    for alias, name in json.loads(metadata.get(ALIASES_KEY, "{}")).items():
        tensors[alias] = tensors[name]
    return tensors
