"""Writing one checkpoint while training goes on: copied at its step, written, published.

A save has two halves. On the training thread every rank takes its state as it is at
the step (the strategy's `snapshot`) and its RNG streams: that is what the checkpoint
holds, so training may go on as soon as they are taken. The second half runs in the
background (background_save.py): each rank writes its files from what it took into the
checkpoint's `.partial-` folder (or, for a run on object storage, a local staging folder
it then uploads), and rank 0 publishes the checkpoint (manifest last, rename into place)
once every rank's files are written.
The state's files are written by the save's thread or, with `checkpoint.writer:
process`, by a writer process of the rank's own (checkpoint_process.py). Where training
takes every core, the thread writes in the turns each step lends it (write_pace.py),
handed the parameters and optimizer state in host memory uncopied (the next optimizer
step writes into spare buffers: strategies/state_handover.py) and a copy of the rest.
Otherwise the thread, like the process, writes from a copy in shared memory that the
rank makes on a free core while its next step computes. Those background writes meet in
a gloo group of their own, created for the attempt, so their collectives never
interleave with the training's. The thread's files are hashed as they are written and
fsynced by their rank (checkpoint_files.py); rank 0 gathers their entries for the
manifest and hashes only the rest.

At most one save is in flight; the next one, and whatever ends the attempt, waits for
it. A rank that fails mid-write leaves the checkpoint unpublished: readers never see
it, and the next save removes its folder. `checkpoint.async_save: false` runs the
second half in line, and the state is then written without being copied.

Exercised by: pytest tests/test_checkpoint.py -k background
"""
from __future__ import annotations

import os
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from orchestrator.run.storage import ObjectPath, RunPath
from orchestrator.training import checkpoint_transfer, manifest
from orchestrator.training.background_save import BackgroundSaves
from orchestrator.training.checkpoint_process import WriterProcess
from orchestrator.training.checkpoint_files import paced_writer, tensor_bytes, without_zip_checksums
from orchestrator.training.collectives import all_gather_object, all_reduce, barrier, side_group
from orchestrator.training.rng_state import capture_rng
from orchestrator.training.write_pace import WriteAbandoned, WritePace
from strategies.base import Copy, StateWriter

PARTIAL = ".partial-"
# How each writer needs the state taken: in line, as it is; a thread in turns, handed
# over (the rest copied) at once; a free thread and a process, copied meanwhile, on a
# core training leaves (into shared memory, which a process maps).
COPIES = {"in_line": Copy.NONE, "thread": Copy.SHARED, "paced thread": Copy.NOW, "process": Copy.SHARED}

# (folder, copy) -> the writer of the strategy's state as it is now (Strategy.snapshot)
Snapshot = Callable[[Path, Copy], StateWriter]
# Called on rank 0 once a checkpoint is valid, with how long its save took.
Published = Callable[[RunPath, float], None]


class CheckpointWrites:
    """Checkpoint saves under `root`, one at a time; create on every rank together.
    `writer`, of a background save: "thread" or "process" (checkpoint_process.py)."""

    def __init__(self, root: RunPath, rank: int, background: bool, timeout: timedelta,
                 writer: str = "thread", paced_over: int = 0) -> None:
        self.root = root
        self.rank = rank
        self.timeout = timeout
        self.saves = BackgroundSaves(background)
        self.group = side_group(timeout) if background else None
        self.writer = writer if background else "in_line"
        if self.writer == "process" and not dist.is_initialized():  # one process: the thread
            self.writer = "thread"
        self.process: WriterProcess | None = None  # the process writer, once started
        self.process_ready = False  # on every rank
        # The thread's writes, in turns the steps lend it when `paced_over` (write_pace.py)
        self.pace = WritePace(paced=self.writer == "thread" and paced_over > 0)
        self.distributed = dist.is_initialized()
        self.paced_over = paced_over
        self.written: dict[Path, dict] = {}  # this rank's files of the save in flight, hashed

    def prepare(self) -> None:
        """Start the writer processes, if they write the saves (every rank, once the
        model is built). Saves before they are ready on every rank are written by the
        thread."""
        if self.writer == "process":
            self.process = WriterProcess(None, self.rank, dist.get_world_size(), self.timeout)

    def start(self, final: RunPath, trainer_json: str, snapshot: Snapshot, published: Published) -> None:
        """Begin the save of checkpoint `final` (every rank): its state by `snapshot`,
        its trainer.json from rank 0; `published(final, seconds)` on rank 0 once valid."""
        self.wait()
        writer = self._writer_now()
        folder = self._begin(final)
        self.pace.begin(self.paced_over)
        self.written = {}
        write_state = snapshot(folder / "state", COPIES["paced thread" if self.pace.paced else writer])
        rng, started = capture_rng(), time.monotonic()

        def finish() -> RunPath:
            self._check_attempt()
            write_state(self._save_in_process if writer == "process" else self._save_here)
            (folder / "rng").mkdir(exist_ok=True)
            torch.save(rng, folder / "rng" / f"rank_{self.rank}.pt")
            if self.rank == 0:
                (folder / "trainer.json").write_text(trainer_json)
            if isinstance(final, ObjectPath):  # the upload's gathers tell rank 0 all are done
                files, hashed = checkpoint_transfer.upload_staged(folder, final, self.rank, self.group), {}
            else:  # the gather tells rank 0 all are written
                files, hashed = None, self._hashed_everywhere(folder)
            self._check_attempt()
            if self.rank == 0:
                make_valid(folder, final, files, hashed)
                published(final, time.monotonic() - started)
            return final

        self.saves.start(finish)

    def _writer_now(self) -> str:
        """Who writes this save: the writer process once it is ready on every rank (they
        agree, on the training thread), the thread until then."""
        if self.writer != "process" or self.process is None or self.process_ready:
            return self.writer
        self.process_ready = everyone(self.process.ready())
        return "process" if self.process_ready else "thread"

    def _save_here(self, state: dict, directory: Path) -> None:
        """dcp writes `state` here: in line, or on the save's thread (in the turns of
        `pace`), hashing the files on the way."""
        import torch.distributed.checkpoint as dcp

        self.pace.expect(tensor_bytes(state))
        storage, files = paced_writer(directory, self.pace)
        with self.pace.writes(), without_zip_checksums():
            dcp.save(state, storage_writer=storage, process_group=self.group)
        files.sync()
        self.written = files.written

    def _hashed_everywhere(self, folder: Path) -> dict[str, dict]:
        """Every rank's files of this save in `folder` that were hashed as written, named
        relative to it (every rank)."""
        mine, self.written = self.written, {}
        hashed = {}
        for table in all_gather_object({path.relative_to(folder).as_posix(): entry
                                        for path, entry in mine.items()}, self.group):
            hashed.update(table)
        return hashed

    def turn(self) -> None:
        """Lend a paced write in flight its turn (every step; write_pace.py)."""
        self.pace.turn()

    def _check_attempt(self) -> None:
        """Raise if the attempt this save belongs to has ended (its process group gone): a
        write that outlived it would take itself for a single process, and rank 0 would
        publish its share alone as the whole checkpoint."""
        if self.distributed and not dist.is_initialized():
            raise WriteAbandoned("the attempt ended before this checkpoint was written")

    def _save_in_process(self, state: dict, directory: Path) -> None:
        """This rank's writer process writes `state` (started here, on the save's thread,
        when no `prepare` started it)."""
        if self.process is None:
            self.process = WriterProcess(self.group, self.rank, dist.get_world_size(), self.timeout)
        self.process.save(state, directory)

    def close(self) -> None:
        """End the writer process, if one was started (at the end of the attempt). A save
        still in flight is given up: the attempt failed, and its checkpoint is never
        published."""
        self.pace.abandon()
        if self.process is not None:
            self.process.close(wait_s=0.0 if self.saves.busy() else 5.0)
            self.process = None

    def wait(self) -> RunPath | None:
        """Wait for the save in flight; returns its checkpoint (None when none was).

        Raises:
            Exception: what writing it raised.
        """
        self.pace.release()
        return self.saves.wait()

    def _begin(self, final: RunPath) -> Path:
        """The local folder this rank writes `final` into: a fresh `.partial-` folder
        beside it, or on object storage a staging folder of this rank (every rank)."""
        if isinstance(final, ObjectPath):
            return checkpoint_transfer.begin_staging(final, self.rank)
        partial = self.root / f"{PARTIAL}{final.name}"
        if self.rank == 0:
            for stale in self.root.glob(f"{PARTIAL}*"):  # a save that crashed, this one's included
                shutil.rmtree(stale, ignore_errors=True)
            (partial / "rng").mkdir(parents=True)
        barrier()
        return partial


def make_valid(folder: Path, final: RunPath, uploaded: dict | None, hashed: dict) -> None:
    """Publish checkpoint `final` from what every rank wrote: on object storage the
    manifest of the `uploaded` files; locally the manifest of `folder` (its files'
    entries from `hashed` where the ranks hashed them as written), which is then
    renamed into place."""
    if uploaded is not None:
        manifest.publish(final, uploaded)
        return
    manifest.write_manifest(folder, hashed)  # fsyncs every file and folder first
    shutil.rmtree(final, ignore_errors=True)  # a re-run of the same step replaces it
    os.replace(folder, final)
    manifest.fsync_path(final.parent)


def everyone(flag: bool) -> bool:
    """Whether `flag` holds on every rank (call on every rank)."""
    found = torch.tensor([0 if flag else 1], dtype=torch.int64)
    all_reduce(found, op=dist.ReduceOp.MAX)
    return int(found) == 0
