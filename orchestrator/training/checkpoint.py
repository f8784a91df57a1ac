"""Checkpoints owned by the orchestrator: the whole training state, written atomically.

Layout of one checkpoint, `RUN_DIR/checkpoints/step_00000050/`:
    state/          model + optimizer + schedule, written by the strategy (all ranks)
    trainer.json    step, layout and data cursor at save time
    rng/rank_N.pt   every RNG stream of rank N, as tensors (read with weights_only)
    manifest.json   size and sha256 of every file above; written last (manifest.py)

A save takes the state at its step and writes it while training goes on
(checkpoint_write.py); a checkpoint is either published whole or not there.

In a local run directory, a checkpoint is built in a `.partial-*` directory, flushed
to disk, and renamed into place only after every rank has finished and the manifest is
written, so a crash mid-save leaves no directory that looks complete (and the next save
removes it). On object storage, which has no rename, each rank uploads its files
straight to `step_N/` and the manifest is written after all of them
(checkpoint_transfer.py): a prefix without a valid manifest is never loaded.
Loading takes the newest valid checkpoint, and says so in events.jsonl when it
passes over one; pruning keeps the newest `keep` valid ones, never by name alone.

Exercised by: pytest tests/test_checkpoint.py
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from orchestrator.run.files import RunFiles
from orchestrator.run.records import EventLog
from orchestrator.run.storage import ObjectPath, RunPath, remove_tree, run_path
from orchestrator.training import checkpoint_transfer, manifest
from orchestrator.training.checkpoint_write import PARTIAL, CheckpointWrites, Snapshot
from orchestrator.training.rng_state import restore_rng
from strategies.base import Copy, StateWriter, nothing_to_write

log = logging.getLogger(__name__)

PREFIX = "step_"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


@dataclass
class TrainerState:
    """What the loop needs besides the strategy's state to continue bit for bit."""

    step: int  # optimizer steps completed
    world_size: int
    dp_size: int
    samples_seen: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


class CheckpointManager:
    """Saves and finds checkpoints under `RUN_DIR/checkpoints`. Call `save` and
    `load_latest` on every rank; rank 0 does the file bookkeeping."""

    def __init__(self, run_dir: RunPath, keep: int, rank: int, world_size: int,
                 background: bool = False, timeout: timedelta = timedelta(minutes=30),
                 writer: str = "thread", paced_over: int = 0) -> None:
        self.run_dir = run_path(run_dir)
        self.root = RunFiles(run_dir).checkpoints
        self.keep = keep
        self.rank = rank
        self.world_size = world_size
        self.root.mkdir(parents=True, exist_ok=True)
        self._verdicts: dict[tuple[str, int], str | None] = {}  # (path, manifest mtime) -> problem
        self._fetched: dict[str, Path] = {}  # remote checkpoint -> this rank's verified download
        self.writes = CheckpointWrites(self.root, rank, background, timeout, writer, paced_over)

    # ---- saving -------------------------------------------------------------------------
    def save(self, state: TrainerState, save_strategy: Callable[[Path], None]) -> RunPath:
        """Write a checkpoint of `state` now, the strategy's part by `save_strategy(folder)`;
        returns it once published."""
        def snapshot(folder: Path, copy: Copy) -> StateWriter:
            save_strategy(folder)  # written now: nothing is left for the background
            return nothing_to_write

        self.start_save(state, snapshot)
        return self.wait()

    def prepare(self) -> None:
        """Once the model is built (every rank): start what writes the saves."""
        self.writes.prepare()

    def start_save(self, state: TrainerState, snapshot: Snapshot) -> None:
        """Begin a checkpoint of `state` (every rank; checkpoint_write.py): `snapshot(folder,
        copy)` takes the strategy's state as it is now. At most one save is in flight."""
        final = self.root / f"{PREFIX}{state.step:08d}"
        self.writes.start(final, state.to_json(), snapshot, self._published)

    def turn(self) -> None:
        """At the end of each step: lend the save in flight its turn, if it is paced."""
        self.writes.turn()

    def wait(self) -> RunPath | None:
        """Wait for the save in flight: published, on rank 0; written, on the others.
        Returns its checkpoint (None when none was in flight)."""
        return self.writes.wait()

    def close(self) -> None:
        """At the end of the attempt (every rank): end what its saves started."""
        self.writes.close()

    def _published(self, final: RunPath, seconds: float) -> None:
        """Rank 0, once `final` is valid: record it, then prune."""
        self._verdicts[self._key(final)] = None  # written and checked just now
        EventLog(self.run_dir).write("checkpoint", step=int(final.name[len(PREFIX):]),
                                     path=final.name, save_s=round(seconds, 3))
        self._prune(keep_also=final)

    def _prune(self, keep_also: RunPath) -> None:
        """Keep the newest `keep` valid checkpoints (the one just written among them);
        remove older valid ones and every invalid one, which no resume can use."""
        kept = 0
        for candidate in reversed(self.checkpoints()):
            valid = self.problem(candidate) is None
            if valid and (kept < self.keep or candidate == keep_also):
                kept += 1
                continue
            reason = "beyond checkpoint.keep" if valid else self.problem(candidate)
            log.info("removing checkpoint %s: %s", candidate.name, reason)
            remove_tree(candidate)

    # ---- loading ------------------------------------------------------------------------
    def checkpoints(self) -> list[RunPath]:
        """Committed checkpoint directories, oldest first."""
        return self.list_checkpoints(self.run_dir)

    @staticmethod
    def list_checkpoints(run_dir: RunPath) -> list[RunPath]:
        """Checkpoint directories in step order (as numbers: step_100000000 after
        step_99999999), oldest first."""
        root = RunFiles(run_dir).checkpoints
        found = [(int(m.group(1)), p) for p in root.glob(f"{PREFIX}*")
                 if (m := _NAME.match(p.name)) and p.is_dir()]
        return [p for _, p in sorted(found)]

    def problem(self, directory: RunPath) -> str | None:
        """What is wrong with a checkpoint (None: valid), checked once per version of it.
        On object storage the check reads this rank's download of it."""
        key = self._key(directory)
        if key not in self._verdicts:
            self._verdicts[key] = manifest.check(self._local(directory))
        return self._verdicts[key]

    def _local(self, directory: RunPath) -> Path:
        """A local folder holding `directory`: itself, or this rank's download of it."""
        if not isinstance(directory, ObjectPath):
            return directory
        if str(directory) not in self._fetched:
            target = checkpoint_transfer.staging_root(self.root, self.rank) / directory.name
            self._fetched = {str(directory): checkpoint_transfer.download(directory, target)}
        return self._fetched[str(directory)]

    @staticmethod
    def _key(directory: RunPath) -> tuple[str, int]:
        try:
            return str(directory), (directory / manifest.MANIFEST).stat().st_mtime_ns
        except OSError:
            return str(directory), -1

    def latest_valid(self) -> Path | None:
        """The newest valid checkpoint (checked on rank 0, the answer shared with every
        rank). Each one passed over is an event (`checkpoint_skipped`), and so is
        finding none while some exist: a fallback is never silent."""
        choice: list[str | None] = [None]
        if self.rank == 0:
            choice[0] = self._newest_valid()
        if dist.is_initialized() and self.world_size > 1:
            dist.broadcast_object_list(choice, src=0)
        return run_path(choice[0]) if choice[0] else None

    def _newest_valid(self) -> str | None:
        events = EventLog(self.run_dir)
        candidates = list(reversed(self.checkpoints()))
        for candidate in candidates:
            problem = self.problem(candidate)
            if problem is None:
                return str(candidate)
            log.warning("skipping checkpoint %s: %s", candidate.name, problem)
            events.write("checkpoint_skipped", checkpoint=candidate.name, reason=problem)
        if candidates:
            events.write("checkpoint_none_valid", checked=len(candidates))
        return None

    def load(
        self, directory: RunPath, load_strategy: Callable[[Path], None]
    ) -> TrainerState:
        local = self._local(directory)
        state = TrainerState(**json.loads((local / "trainer.json").read_text()))
        load_strategy(local / "state")
        rng_file = local / "rng" / f"rank_{self.rank}.pt"
        # RNG streams belong to ranks; after a resize the ranks are new, so the
        # streams restart from the seed instead (the data order does not use them).
        if state.world_size == self.world_size and rng_file.is_file():
            restore_rng(torch.load(rng_file, weights_only=True))
        if local != directory:  # this rank's download: loaded, no longer needed
            shutil.rmtree(local, ignore_errors=True)
            self._fetched.clear()
        return state


def verify(directory: RunPath) -> str | None:
    """None when the checkpoint in `directory` is valid, else what is wrong with it. On
    object storage only what needs no download is checked (manifest, files, sizes); a
    resume checks every byte of the checkpoint it loads."""
    if isinstance(directory, ObjectPath):
        return manifest.sizes_problem(directory)
    return manifest.check(directory)
