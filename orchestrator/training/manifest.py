"""A checkpoint's manifest: what it holds, so a damaged or altered one is never loaded.

`manifest.json` names every file of the checkpoint with its size and sha256, and is
written last. A checkpoint is valid when its manifest is well formed, names only
files inside the checkpoint, names every file there (but what a load derives from
it, see DERIVED), each file matches, and no pickle in it names code (safe_pickle).
Anything else, however malformed, makes it invalid: a reason, never an exception.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

from orchestrator.run.files import atomic_write_text
from orchestrator.training.safe_pickle import find_unsafe

MANIFEST = "manifest.json"
# Written into a checkpoint after it was saved, by a load at another data-parallel size
# (DeepSpeed's universal format, strategies/zero_checkpoint.py), and rebuilt if missing.
DERIVED = ("state/zero_universal/", "state/.zero_universal.partial/")


def write_manifest(directory: Path, hashed: dict[str, dict[str, Any]] | None = None) -> None:
    """fsync every file and folder of `directory`, then write its manifest durably.
    `hashed`: entries of files their writers hashed as they wrote and fsynced (by name
    in `directory`), taken as they are where the file still has their size."""
    hashed = hashed or {}
    files = {}
    for path in sorted(directory.rglob("*")):
        name = path.relative_to(directory).as_posix()
        if path.is_file() and name != MANIFEST:
            known = hashed.get(name)
            if known is not None and known["size"] == path.stat().st_size:
                files[name] = known
                continue
            fsync_path(path)
            files[name] = entry(path)
        elif path.is_dir():
            fsync_path(path)
    fsync_path(directory)
    publish(directory, files)


def entry(path: Path) -> dict[str, Any]:
    """A local file's line in a manifest."""
    return {"size": path.stat().st_size, "sha256": sha256(path)}


def publish(directory, files: dict[str, dict[str, Any]]) -> None:
    """Write the manifest of `directory` (a folder or an object storage prefix) listing
    `files`: the step that makes a checkpoint valid, so it comes after every file."""
    atomic_write_text(directory / MANIFEST, json.dumps({"files": files}, indent=1), durable=True)


def sizes_problem(directory) -> str | None:
    """The checks that need no file read: the manifest, and every file it lists present
    at its size (for listing checkpoints on object storage without downloading them)."""
    manifest, problem = _read(directory / MANIFEST)
    if problem is not None:
        return problem
    sizes = {p.relative_to(directory).as_posix(): p.stat().st_size for p in directory.rglob("*") if p.is_file()}
    for name, expected in manifest.items():
        if name not in sizes:
            return f"{name} is missing"
        if sizes[name] != expected["size"]:
            return f"{name} is truncated ({sizes[name]} of {expected['size']} bytes)"
    return None


def check(directory: Path) -> str | None:
    """None when the checkpoint in `directory` is valid, else what is wrong with it."""
    manifest, problem = _read(directory / MANIFEST)
    if problem is not None:
        return problem
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    present = {name for name in present if name != MANIFEST and not name.startswith(DERIVED)}
    unlisted = sorted(present - set(manifest))
    if unlisted:
        return f"{unlisted[0]} is not in the manifest (added after saving)"
    for name, expected in manifest.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"]:
            return f"{name} is truncated ({path.stat().st_size} of {expected['size']} bytes)"
        if sha256(path) != expected["sha256"]:
            return f"{name} does not match its checksum"
    unsafe = find_unsafe(directory)
    return f"refused: {unsafe}" if unsafe else None


def _read(path: Path) -> tuple[dict[str, dict[str, Any]], str | None]:
    """The manifest's file table, or why there is none that can be trusted."""
    try:
        content = json.loads(path.read_bytes().decode("utf-8"))
    except (FileNotFoundError, IsADirectoryError):
        return {}, "no manifest (incomplete save)"
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return {}, f"manifest is not valid JSON ({type(error).__name__})"
    files = content.get("files") if isinstance(content, dict) else None
    if not isinstance(files, dict) or not files:
        return {}, "manifest lists no files"
    for name, entry in files.items():
        if not _inside(name):
            return {}, f"manifest names {name!r}, outside the checkpoint"
        if not (isinstance(entry, dict) and type(entry.get("size")) is int and isinstance(entry.get("sha256"), str)):
            return {}, f"manifest entry for {name!r} is malformed"
    return files, None


def _inside(name: str) -> bool:
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts and "\\" not in name \
        and path.parts[0] != MANIFEST


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entries to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
