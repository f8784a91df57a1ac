"""Copies of a training state in host memory, for a checkpoint written while training goes on.

torch.distributed.checkpoint's `DefaultStager` does the copying: it walks the state
(tensors, DTensor shards, plain values), and keeps the host buffers of one save for the
next. We change one thing. It copies each storage with `UntypedStorage.copy_`, which
holds Python's interpreter lock for the whole memcpy; a copy made on a thread while the
next step computes then stops the training thread at its next Python line until the
copy is done (100 MB: the training thread ran one 1.6 ms matmul in 18 ms; with the
copy below, eight, at full speed). We copy through tensors over the same bytes, whose
copy releases the lock; the buffers are allocated as torch allocates them (pinned ones,
for an accelerator, by torch itself).

Exercised by: pytest tests/test_checkpoint.py -k host_copy
"""
from __future__ import annotations

import functools

import torch


@functools.cache
def host_copier(device: torch.device, shared: bool = False):
    """Copies state to host memory, into buffers it keeps from one save to the next:
    pinned, with copies the device is synchronised on once, for an accelerator.
    `shared`: into shared memory (another process can map it), on a thread of its own,
    the copy's future returned at once."""
    from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions

    on_device = device.type != "cpu"
    stager = DefaultStager(StagingOptions(use_pinned_memory=on_device, use_shared_memory=shared,
                                          use_async_staging=shared, use_non_blocking_copy=on_device))
    stager._state_dict_stager = _storage_stager(pin_memory=on_device, share_memory=shared)
    return stager


def _storage_stager(pin_memory: bool, share_memory: bool):
    from torch.distributed.checkpoint._state_dict_stager import StateDictStager

    class LockFreeStager(StateDictStager):
        def _stage_untyped_storage(self, storage: torch.UntypedStorage, non_blocking: bool = False):
            cached = self._cached_storage_mapping.get(storage)
            if cached is None and self.pin_memory:  # a new pinned buffer: torch's way
                return super()._stage_untyped_storage(storage, non_blocking=non_blocking)
            if cached is None:  # as torch allocates it, for the copy below
                cached = (type(storage)._new_shared(storage.size(), device="cpu") if self.share_memory
                          else type(storage)(storage.size(), device="cpu"))
                self._cached_storage_mapping[storage] = cached
            copy_bytes(cached, storage, non_blocking)
            return cached

    return LockFreeStager(pin_memory=pin_memory, share_memory=share_memory)


def copy_bytes(target: torch.UntypedStorage, source: torch.UntypedStorage, non_blocking: bool = False) -> None:
    """`target[:] = source` (storages of one size), without holding the interpreter lock."""
    as_bytes = lambda storage: torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)  # noqa: E731
    as_bytes(target).copy_(as_bytes(source), non_blocking=non_blocking)
