"""Checkpoints owned by the orchestrator: the whole training state, written atomically.

Layout of one checkpoint, `RUN_DIR/checkpoints/step_00000050/`:
    state/          model + optimizer + schedule, written by the strategy (all ranks)
    trainer.json    step, layout and data cursor at save time
    rng/rank_N.pt   every RNG stream of rank N
    manifest.json   size and sha256 of every file above; written last

A checkpoint is built in a `.partial-*` directory and renamed into place only after
every rank has finished and the manifest is written, so a crash mid-save leaves
no directory that looks complete. Loading verifies the manifest and falls back to
the previous checkpoint, with a warning, when one is truncated or corrupt.

Exercised by: pytest tests/test_checkpoint.py
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist

from orchestrator.run.files import RunFiles, atomic_write_text
from orchestrator.training.collectives import barrier

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PREFIX = "step_"


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

    def __init__(self, run_dir: Path, keep: int, rank: int, world_size: int) -> None:
        self.root = RunFiles(run_dir).checkpoints
        self.keep = keep
        self.rank = rank
        self.world_size = world_size
        self.root.mkdir(parents=True, exist_ok=True)

    # ---- saving -------------------------------------------------------------------------
    def save(self, state: TrainerState, save_strategy: Callable[[Path], None]) -> Path:
        final = self.root / f"{PREFIX}{state.step:08d}"
        partial = self.root / f".partial-{PREFIX}{state.step:08d}"
        if self.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            (partial / "rng").mkdir(parents=True)
        barrier()
        save_strategy(partial / "state")
        torch.save(capture_rng(), partial / "rng" / f"rank_{self.rank}.pt")
        barrier()
        if self.rank == 0:
            (partial / "trainer.json").write_text(state.to_json())
            _write_manifest(partial)
            shutil.rmtree(final, ignore_errors=True)  # a re-run of the same step replaces it
            os.replace(partial, final)
            _fsync_dir(self.root)
            self._prune()
        barrier()
        return final

    def _prune(self) -> None:
        for old in self.checkpoints()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    # ---- loading ------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Committed checkpoint directories, oldest first."""
        return self.list_checkpoints(self.root.parent)

    @staticmethod
    def list_checkpoints(run_dir: Path) -> list[Path]:
        root = RunFiles(run_dir).checkpoints
        return sorted(p for p in root.glob(f"{PREFIX}*") if p.is_dir())

    def latest_valid(self) -> Path | None:
        """The newest checkpoint whose files match its manifest (checked on rank 0,
        the answer shared with every rank)."""
        choice: list[str | None] = [None]
        if self.rank == 0:
            for candidate in reversed(self.checkpoints()):
                problem = verify(candidate)
                if problem is None:
                    choice[0] = str(candidate)
                    break
                log.warning("skipping checkpoint %s: %s", candidate.name, problem)
        if dist.is_initialized() and self.world_size > 1:
            dist.broadcast_object_list(choice, src=0)
        return Path(choice[0]) if choice[0] else None

    def load(
        self, directory: Path, load_strategy: Callable[[Path], None]
    ) -> TrainerState:
        state = TrainerState(**json.loads((directory / "trainer.json").read_text()))
        load_strategy(directory / "state")
        rng_file = directory / "rng" / f"rank_{self.rank}.pt"
        # RNG streams belong to ranks; after a resize the ranks are new, so the
        # streams restart from the seed instead (the data order does not use them).
        if state.world_size == self.world_size and rng_file.is_file():
            restore_rng(torch.load(rng_file, weights_only=False))
        return state


def verify(directory: Path) -> str | None:
    """None when every file listed in the manifest is present, whole and unchanged."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (incomplete save)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError:
        return "manifest is not valid JSON"
    for name, expected in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} is truncated ({path.stat().st_size} of {expected['size']} bytes)"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    return None


def _write_manifest(directory: Path) -> None:
    files = {
        str(path.relative_to(directory)): {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }
    atomic_write_text(directory / MANIFEST, json.dumps({"files": files}, indent=1), durable=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def capture_rng() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
