"""Checkpoints on object storage: written locally by each rank, uploaded, published last.

Strategies write their state to a local folder (torch.distributed.checkpoint,
DeepSpeed). For a run on object storage each rank writes into a staging folder of
its own on its own node, then uploads what it wrote straight to the checkpoint's
prefix: no node needs a shared file system. Rank 0 publishes the manifest once every
rank's upload is done, so a checkpoint is valid only when whole, without a rename.

To load, each rank downloads the checkpoint into its staging folder and the strategy
loads from there; rank 0's download is also what it checks against the manifest.

Exercised by: pytest tests/test_object_storage.py
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from torch.distributed import ProcessGroup

from orchestrator.run.storage import ObjectPath, remove_tree
from orchestrator.training import manifest
from orchestrator.training.collectives import all_gather_object, barrier


def staging_root(checkpoints: ObjectPath, rank: int) -> Path:
    """This rank's local folder for the checkpoints of one run."""
    digest = hashlib.sha1(str(checkpoints).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"orchestrator-{os.getuid()}" / "staging" / digest / f"rank_{rank}"


def begin_staging(target: ObjectPath, rank: int) -> Path:
    """A fresh local folder for what this rank writes of `target`; rank 0 removes what an
    earlier save of it left, unpublished until its manifest is written again (call on
    every rank: they wait for each other)."""
    staging = staging_root(target.parent, rank) / target.name
    shutil.rmtree(staging.parent, ignore_errors=True)  # earlier saves and downloads of this rank
    staging.mkdir(parents=True)
    if rank == 0:
        remove_tree(target)
    barrier()
    return staging


def upload_staged(staging: Path, target: ObjectPath, rank: int,
                  group: ProcessGroup | None = None) -> dict[str, dict]:
    """Upload what this rank wrote under `staging` (`upload`) and remove it from local disk."""
    try:
        return upload(staging, target, rank, group)
    finally:
        shutil.rmtree(staging.parent, ignore_errors=True)


def upload(staging: Path, target: ObjectPath, rank: int,
           group: ProcessGroup | None = None) -> dict[str, dict]:
    """Upload what this rank wrote under `staging` to `target` (call on every rank of
    `group`). A file more than one rank wrote is uploaded by the lowest of them. Returns
    every rank's uploaded files as manifest entries (name -> size, sha256)."""
    mine = {p.relative_to(staging).as_posix(): p for p in sorted(staging.rglob("*")) if p.is_file()}
    claims = all_gather_object(sorted(mine), group)
    owner: dict[str, int] = {}
    for claimant, names in enumerate(claims):
        for name in names:
            owner.setdefault(name, claimant)
    uploaded = {}
    for name, path in mine.items():
        if owner[name] == rank:
            uploaded[name] = manifest.entry(path)
            (target / name).upload(path)
    merged: dict[str, dict] = {}
    for table in all_gather_object(uploaded, group):
        merged.update(table)
    return merged


def download(source: ObjectPath, local: Path) -> Path:
    """Every object under `source` into the folder `local` (replacing what it held)."""
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    for item in source.rglob("*"):
        if item.is_file():
            item.download(local / item.relative_to(source))
    return local
