"""How much memory a step's activations take: the tensors autograd keeps from forward for
backward, counted while they are alive, at their highest.

Autograd hands every tensor it saves to the saved-tensor hooks (`torch.autograd.graph.
saved_tensors_hooks`); each is counted by its storage (views of one storage count once)
until autograd lets go of it, which is when backward has used it. Parameters are saved
too (a linear layer keeps its weight) but are not activations: trainable leaves, their
views and the parameters' storages are left out. The count is the same on a CPU, a GPU
and the meta device (where `plan` estimates it without memory), and it covers pipeline
schedules, whose in-flight micro-batches are exactly what is alive at once. Blocks under
activation checkpointing keep what they keep through hooks of their own, which these do
not see: with recomputation on, the count is what the rest of the model keeps, a lower
bound.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


class SavedActivations:
    """Counts the bytes of the tensors saved for backward inside `tracking()`."""

    def __init__(self, model: torch.nn.Module | None) -> None:
        self._parameters = {_storage(p).data_ptr() for p in model.parameters()} if model is not None else set()
        self._live: dict[int, list[int]] = {}  # storage pointer -> [bytes, references]
        self.live_bytes = 0
        self.peak_bytes = 0

    @contextlib.contextmanager
    def tracking(self) -> Iterator["SavedActivations"]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack):
            yield self

    def _pack(self, tensor: torch.Tensor):
        if _is_weight(tensor):
            return tensor
        storage = _storage(tensor)
        if storage.device.type == "meta":  # no addresses: the storage object's own identity
            key = storage._cdata
        elif storage.data_ptr() in self._parameters:
            return tensor
        else:
            key = storage.data_ptr()
        entry = self._live.get(key)
        if entry is None:
            entry = self._live[key] = [storage.nbytes(), 0]
            self.live_bytes += entry[0]
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        entry[1] += 1
        return _Saved(tensor, self, key)

    def _release(self, key: int) -> None:
        entry = self._live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.live_bytes -= entry[0]
            del self._live[key]


class _Saved:
    """One saved tensor; autograd drops it after backward used it (or with the graph)."""

    __slots__ = ("tensor", "owner", "key")

    def __init__(self, tensor: torch.Tensor, owner: SavedActivations, key: int) -> None:
        self.tensor, self.owner, self.key = tensor, owner, key

    def __del__(self) -> None:
        self.owner._release(self.key)


def _is_weight(tensor: torch.Tensor) -> bool:
    """A trainable leaf or a view of one (a linear layer saves its weight transposed).
    FSDP's and ZeRO-3's gathered weights are such leaves, in storages of their own."""
    root = tensor._base if tensor._base is not None else tensor
    return root.is_leaf and root.requires_grad


def _storage(tensor: torch.Tensor) -> torch.UntypedStorage:
    """The storage holding a tensor's data; a DTensor's is its local shard's."""
    return getattr(tensor, "_local_tensor", tensor).untyped_storage()


def _unpack(saved) -> torch.Tensor:
    return saved.tensor if isinstance(saved, _Saved) else saved
