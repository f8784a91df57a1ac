"""A process of each rank's own that writes its checkpoint files (`checkpoint.writer`).

A writer thread in the training process competes with training for the interpreter
lock: serialising tensors and dcp's planning hold it in chunks, and the loop needs it
between its operators, so the steps around a background save slow down even with a
core free. A process has its own interpreter. The rank copies its state into shared
memory (on a thread, while the next step's forward and backward run: the strategy
waits for the copy before its optimizer step), and the writer maps that copy and
writes it with torch.distributed.checkpoint. Where a core is free (a GPU host's) the
copy costs the training nothing; handing the state over uncopied instead, as to the
thread (strategies/state_handover.py), costs the optimizer step a few percent: measured,
1.08x against 1.03x of the median step with a core to spare.

The copy's buffers are the same from one save to the next (strategies/host_copy.py), so
each is handed to the writer once: a shared buffer crosses the pipe as a file descriptor,
through a thread of multiprocessing's that the training process would otherwise wake for
each of them at every save. Later saves send only where each tensor lies in them.

dcp's planning gathers every rank's plan, so the writers of an attempt meet in a gloo
group of their own, on a store that rank 0's writer hosts. They start with the attempt
and end with it (its ranks and world size are the group's); the saves before every
rank's writer is ready are written by the save's thread. A writer makes its start
(Python, torch, dcp and what dcp imports on its first save) at the priority of the
training, a second or so of CPU taken from the first steps, and only then drops to idle
priority: started at idle priority where every core trains, it was ready only from the
fourth save of a run (benchmarks/results/checkpoint_stall_b256.md). A writer whose rank's process
has died exits within a second: it watches its parent, so a killed worker leaves no
writer behind, even one blocked in a collective with a dead peer.

Exercised by: pytest tests/test_checkpoint.py -k writer
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from orchestrator.training.cpu_priority import run_when_idle
from strategies.state_tree import map_leaves

READY = "ready"
PARENT_CHECK_S = 0.5


@dataclass(frozen=True)
class SharedView:
    """A tensor of the state, as the writer finds it: in the shared buffer `key`, sent with
    the first save that uses it (`storage`) and known to the writer after that (None)."""

    key: tuple[int, int]  # the buffer's address and size in the rank's process
    storage: torch.UntypedStorage | None
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int


class WriterProcess:
    """This rank's writer; create on every rank together (it is started, not waited for:
    `ready` says when it has joined its group, and `save` waits for that)."""

    def __init__(self, group: dist.ProcessGroup | None, rank: int, world_size: int,
                 timeout: timedelta) -> None:
        host, port = _store_address(group)
        context = multiprocessing.get_context("spawn")
        self._connection, child_end = context.Pipe()
        self._process = context.Process(
            target=_serve, name=f"checkpoint-writer-{rank}", daemon=True,
            args=(child_end, rank, world_size, host, port, timeout.total_seconds(), os.getpid()),
        )
        self._process.start()
        child_end.close()  # so that a writer that dies ends this end's reads
        self._ready = False
        # The buffers the writer holds, kept alive here: while it does, no other buffer
        # can take their address and be mistaken for one of them.
        self._sent: dict[tuple[int, int], torch.UntypedStorage] = {}

    def ready(self) -> bool:
        """Whether the writer has joined its group (without waiting).

        Raises:
            RuntimeError: it failed to, or died.
        """
        if not self._ready and self._connection.poll():
            self._answer()
            self._ready = True
        return self._ready

    @property
    def pid(self) -> int:
        return self._process.pid

    def save(self, state: dict, directory: Path) -> None:
        """Write `state` (its tensors in shared memory) into `directory` with dcp; returns
        once every rank's writer has written its part.

        Raises:
            RuntimeError: the writer failed (its traceback), or died.
        """
        if not self._ready:
            self._answer()  # its READY
            self._ready = True
        self._connection.send((self._by_reference(state), str(directory)))
        self._answer()

    def _by_reference(self, state: dict) -> dict:
        """`state` with its tensors in shared memory as SharedViews (other values as they are)."""
        return map_leaves(state, lambda _path, value: self._view(value))

    def _view(self, value: Any) -> Any:
        # Plain tensors only: a DTensor carries its mesh, and crosses the pipe whole.
        if type(value) not in (torch.Tensor, torch.nn.Parameter) or not value.is_shared():
            return value
        storage = value.untyped_storage()
        key = (storage.data_ptr(), storage.nbytes())
        first = key not in self._sent
        if first:
            self._sent[key] = storage
        return SharedView(key, storage if first else None, value.dtype, tuple(value.shape), value.stride(),
                          value.storage_offset())

    def close(self, wait_s: float = 5.0) -> None:
        """End the writer: asked to, waiting up to `wait_s`, then killed."""
        if self._process.is_alive():
            try:
                self._connection.send(None)
            except OSError:
                pass
            self._process.join(wait_s)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._connection.close()

    def _answer(self) -> None:
        try:
            answer = self._connection.recv()
        except (EOFError, OSError):
            self._process.join(1.0)
            raise RuntimeError(f"the checkpoint writer process ended (exit code "
                               f"{self._process.exitcode})") from None
        if answer not in (None, READY):
            raise RuntimeError(f"the checkpoint writer process failed:\n{answer}")


def _store_address(group: dist.ProcessGroup | None) -> tuple[str, int]:
    """Where rank 0's writer hosts the writers' store: rank 0's host (MASTER_ADDR, which
    its peers reach it by) and a free port there, told to every rank over `group`."""
    address: list[Any] = [None]
    if dist.get_rank() == 0:
        host = os.environ.get("MASTER_ADDR", "127.0.0.1")
        with socket.socket() as sock:
            sock.bind((host, 0))
            address[0] = (host, sock.getsockname()[1])
    dist.broadcast_object_list(address, src=0, group=group)
    return address[0]


def _serve(connection, rank: int, world_size: int, host: str, port: int, timeout_s: float,
           parent: int) -> None:
    """The writer's life: join the writers' group, then write each state sent until told
    to stop (None) or the rank's process is gone."""
    threading.Thread(target=_exit_without, args=(parent,), daemon=True).start()
    import torch.distributed.checkpoint as dcp

    with contextlib.suppress(ImportError):  # what a save's setup imports, when installed
        import torch.distributed.checkpoint._fsspec_filesystem  # noqa: F401
    run_when_idle()  # its start made, the rest takes only CPU training leaves

    torch.set_num_threads(1)
    try:
        timeout = timedelta(seconds=timeout_s)
        store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timeout)
        connection.send(READY)
    except BaseException:  # told to the rank, which raises it
        connection.send(traceback.format_exc())
        return
    buffers: dict[tuple[int, int], torch.UntypedStorage] = {}  # the rank's, by key
    while True:
        try:
            request = connection.recv()
        except EOFError:  # the rank's process has gone
            return
        if request is None:
            break
        state, directory = request
        try:
            dcp.save(_resolved(state, buffers), checkpoint_id=directory)
            answer = None
        except BaseException:  # the save failed: told to the rank, which raises it
            answer = traceback.format_exc()
        del state, request
        connection.send(answer)
    dist.destroy_process_group()


def _resolved(state: dict, buffers: dict[tuple[int, int], torch.UntypedStorage]) -> dict:
    """The state the rank sent, its SharedViews made tensors again (over `buffers`, which
    the views that carry a buffer add to)."""
    def tensor(_path: tuple, value: Any) -> Any:
        if not isinstance(value, SharedView):
            return value
        if value.storage is not None:
            buffers[value.key] = value.storage
        return torch.empty(0, dtype=value.dtype).set_(buffers[value.key], value.offset, value.shape, value.stride)

    return map_leaves(state, tensor)


def _exit_without(parent: int) -> None:
    """Exit once `parent` is no longer this process's parent (it died: the process was
    handed to another)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)
