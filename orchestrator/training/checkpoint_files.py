"""The files torch.distributed.checkpoint writes for this rank: paced, hashed on the way.

dcp writes a rank's shards through a `FileSystem`'s streams. Ours passes every write
through the rank's `WritePace` (write_pace.py), and hashes the bytes as they go by: the
checkpoint's manifest needs each file's size and sha256, and a digest taken on the way
costs no second read of the file on rank 0, which used to hash every rank's files
after the fact (88 ms of CPU for 100 MB) while training went on. Files are not
fsynced here but once written, outside the paced writes (`sync`).

`written` maps each file written (its final path, after dcp's rename of its metadata)
to its manifest entry.

Exercised by: pytest tests/test_write_pace.py tests/test_checkpoint.py -k background
"""
from __future__ import annotations

import hashlib
import io
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.distributed.checkpoint.filesystem import FileSystem, FileSystemWriter

from orchestrator.training import manifest
from orchestrator.training.write_pace import WritePace
from strategies.base import local_bytes
from strategies.state_tree import map_leaves


@contextmanager
def without_zip_checksums() -> Iterator[None]:
    """torch.save, which dcp writes each tensor with, skips its zip records' CRC-32 (a
    third of the CPU a save takes): the manifest's sha256 of each file covers them."""
    before = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(before)


def tensor_bytes(state: dict) -> int:
    """Bytes of the tensors in a state dict (DTensors: their local shards)."""
    total = 0

    def count(path: tuple, value):
        nonlocal total
        if isinstance(value, torch.Tensor):
            total += local_bytes(value)
        return value

    map_leaves(state, count)
    return total


def paced_writer(directory: Path, pace: WritePace) -> tuple[FileSystemWriter, "PacedFiles"]:
    """A dcp storage writer for `directory` writing through `pace`, and its files."""
    files = PacedFiles(pace)
    writer = FileSystemWriter(directory, sync_files=False)  # synced once written: PacedFiles.sync
    writer.fs = files
    return writer, files


class PacedFiles(FileSystem):
    def __init__(self, pace: WritePace) -> None:
        super().__init__()
        self.pace = pace
        self.written: dict[Path, dict[str, Any]] = {}

    @contextmanager
    def create_stream(self, path, mode: str) -> Iterator[io.IOBase]:
        if "w" not in mode:
            with super().create_stream(path, mode) as stream:
                yield stream
            return
        path = Path(path)
        with path.open(mode) as raw:
            stream = _PacedStream(raw, self.pace)
            yield stream
            raw.flush()
            self.written[path] = {"size": path.stat().st_size, "sha256": stream.digest.hexdigest()}

    def rename(self, path, new_path) -> None:
        super().rename(path, new_path)
        if Path(path) in self.written:
            self.written[Path(new_path)] = self.written.pop(Path(path))

    def sync(self) -> None:
        """fsync every file written, and their folders."""
        for path in self.written:
            manifest.fsync_path(path)
        for folder in {path.parent for path in self.written}:
            manifest.fsync_path(folder)


class _PacedStream(io.RawIOBase):
    """A file dcp writes to: each write in the slices the pace allows, hashed."""

    def __init__(self, raw: io.BufferedWriter, pace: WritePace) -> None:
        super().__init__()
        self.raw, self.pace = raw, pace
        self.digest = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            part = view[done:done + self.pace.allowance(len(view) - done)]
            self.raw.write(part)
            self.digest.update(part)
            done += len(part)
        return done

    def tell(self) -> int:
        return self.raw.tell()

    def flush(self) -> None:
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def close(self) -> None:
        # The file is closed by create_stream, which records its digest after the last
        # write; dcp's own close (after its optional fsync) leaves it to that.
        super().close()
