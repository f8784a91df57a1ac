"""Where a run lives: a local folder, or a prefix on object storage (s3://, gs://, abfs://).

A run's location is a `pathlib.Path` for a local folder and an `ObjectPath` for a URI.
`ObjectPath` speaks the part of pathlib the run's modules use (`/`, `name`, `exists`,
`read_bytes`, `write_text`, `iterdir`, `glob`, `rglob`, `stat`, `unlink`), over
`pyarrow.fs`, so the code that reads and writes a run is the same for both.
`run_path` turns what a user typed (a folder or a URI) into one of them.

What object storage lacks, and what is done instead:
- no rename: an object appears whole when its upload completes, so a whole-file write
  is one PUT; a checkpoint is published by writing its manifest last
  (training/checkpoint_store.py);
- no append: a JSON-lines file is a folder of segments, one per writing process,
  each rewritten whole at most every FLUSH_S seconds (`SegmentLog`; run/files.py);
- no locks or pids: driver liveness is the heartbeat's age (run/control.py).

Credentials and endpoints are the standard ones: `AWS_*` variables (including
`AWS_ENDPOINT_URL` for an S3-compatible server) for s3://, application-default
credentials for gs://, `AZURE_*` for abfs://. Ray workers of a run on object storage
get the driver's variables of this kind (execution/ray_runtime.py `storage_env`).
"""
from __future__ import annotations

import fnmatch
import os
import shutil
import threading
from pathlib import Path, PurePosixPath
from typing import Iterator, NamedTuple, Union

SCHEMES = ("s3", "gs", "gcs", "abfs", "az", "hdfs")
# Variables a worker needs to reach the same object storage as the driver.
CREDENTIAL_PREFIXES = ("AWS_", "GOOGLE_", "GCS_", "AZURE_", "ARROW_S3_")


class ObjectStat(NamedTuple):
    st_size: int
    st_mtime_ns: int


class ObjectPath:
    """An object, or a prefix of objects, named by URI: `s3://bucket/runs/x/metrics.jsonl`."""

    def __init__(self, uri: str) -> None:
        scheme, _, rest = str(uri).partition("://")
        if not rest or scheme not in SCHEMES:
            raise ValueError(f"{uri!r} is not an object storage URI ({', '.join(s + '://' for s in SCHEMES)})")
        self.scheme = scheme
        self.key = "/".join(part for part in rest.split("/") if part)  # bucket/key, no empty parts
        self._listed = None  # the FileInfo a listing returned for it: no second request to stat it

    # ---- naming ------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"{self.scheme}://{self.key}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __reduce__(self):  # travels to Ray workers as its URI; each process opens its own client
        return ObjectPath, (str(self),)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __lt__(self, other: "ObjectPath") -> bool:
        return str(self) < str(other)

    def __truediv__(self, part: str) -> "ObjectPath":
        return ObjectPath(f"{self}/{part}")

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1]

    @property
    def parent(self) -> "ObjectPath":
        head = self.key.rsplit("/", 1)[0] if "/" in self.key else self.key
        return ObjectPath(f"{self.scheme}://{head}")

    def with_name(self, name: str) -> "ObjectPath":
        return self.parent / name

    def relative_to(self, other: "ObjectPath") -> PurePosixPath:
        prefix = other.key + "/"
        if not self.key.startswith(prefix):
            raise ValueError(f"{self} is not inside {other}")
        return PurePosixPath(self.key[len(prefix):])

    def as_posix(self) -> str:
        return str(self)

    def resolve(self) -> "ObjectPath":
        return self

    # ---- reading -----------------------------------------------------------------------
    @property
    def filesystem(self):
        return _filesystem(self.scheme, self.key.split("/", 1)[0])

    def _info(self):
        return self._listed if self._listed is not None else self.filesystem.get_file_info(self.key)

    def exists(self) -> bool:
        from pyarrow.fs import FileType

        return self._info().type != FileType.NotFound

    def is_file(self) -> bool:
        from pyarrow.fs import FileType

        return self._info().type == FileType.File

    def is_dir(self) -> bool:
        from pyarrow.fs import FileType

        return self._info().type == FileType.Directory

    def stat(self) -> ObjectStat:
        info = self._info()
        if info.size is None:
            raise FileNotFoundError(str(self))
        return ObjectStat(info.size, info.mtime_ns or 0)

    def read_bytes(self) -> bytes:
        with self.filesystem.open_input_stream(self.key) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def chunks(self, size: int = 1 << 20) -> Iterator[bytes]:
        with self.filesystem.open_input_stream(self.key) as stream:
            while chunk := stream.read(size):
                yield chunk

    def iterdir(self) -> Iterator["ObjectPath"]:
        yield from self._select(recursive=False)

    def glob(self, pattern: str) -> Iterator["ObjectPath"]:
        """Direct children whose name matches `pattern` (no `/` or `**` in it)."""
        return (child for child in self.iterdir() if fnmatch.fnmatchcase(child.name, pattern))

    def rglob(self, pattern: str) -> Iterator["ObjectPath"]:
        return (child for child in self._select(recursive=True) if fnmatch.fnmatchcase(child.name, pattern))

    def _select(self, recursive: bool) -> Iterator["ObjectPath"]:
        from pyarrow.fs import FileSelector

        selector = FileSelector(self.key, allow_not_found=True, recursive=recursive)
        for info in self.filesystem.get_file_info(selector):
            child = ObjectPath(f"{self.scheme}://{info.path}")
            child._listed = info
            yield child

    # ---- writing -----------------------------------------------------------------------
    def write_bytes(self, data: bytes) -> None:
        """One upload: readers see the old object or the new one, never part of it."""
        with self.filesystem.open_output_stream(self.key) as stream:
            stream.write(data)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def upload(self, local: Path) -> None:
        with open(local, "rb") as source, self.filesystem.open_output_stream(self.key) as stream:
            shutil.copyfileobj(source, stream, 1 << 22)

    def download(self, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        with self.filesystem.open_input_stream(self.key) as stream, open(local, "wb") as target:
            shutil.copyfileobj(stream, target, 1 << 22)

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.filesystem.delete_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to do: a prefix exists once an object is written under it."""


RunPath = Union[Path, ObjectPath]


def is_uri(value: str | os.PathLike) -> bool:
    return isinstance(value, str) and "://" in value


def run_path(value: str | os.PathLike | ObjectPath) -> RunPath:
    """A run's location from what the user gave: a URI is object storage, anything else a folder."""
    if isinstance(value, ObjectPath):
        return value
    if is_uri(value):
        return ObjectPath(value)
    return Path(value)


def is_remote(path: RunPath) -> bool:
    return isinstance(path, ObjectPath)


def remove_tree(path: RunPath) -> None:
    """Remove a folder or a prefix and everything under it; nothing there is not an error."""
    if isinstance(path, ObjectPath):
        from pyarrow.fs import FileType

        fs = path.filesystem
        if fs.get_file_info(path.key).type == FileType.NotFound:
            return
        fs.delete_dir_contents(path.key, missing_dir_ok=True)
        try:
            fs.delete_dir(path.key)
        except (FileNotFoundError, OSError):  # a prefix with no marker object has nothing left
            pass
    else:
        shutil.rmtree(path, ignore_errors=True)


def open_input_file(path: RunPath):
    """A seekable pyarrow file for reading, local or on object storage (a pyarrow reader,
    such as `pq.ParquetFile` or `pcsv.open_csv`, takes it as is)."""
    if isinstance(path, ObjectPath):
        return path.filesystem.open_input_file(path.key)
    import pyarrow as pa

    return pa.OSFile(str(path), "rb")


def storage_env() -> dict[str, str]:
    """The variables of this process that say how to reach object storage, for workers."""
    return {k: v for k, v in os.environ.items() if k.startswith(CREDENTIAL_PREFIXES)}


_FILESYSTEMS: dict[tuple[str, str, int, str], object] = {}
_LOCK = threading.Lock()


def _filesystem(scheme: str, bucket: str):
    """One client per scheme and bucket per process (forked processes open their own)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or ""
    key = (scheme, bucket, os.getpid(), endpoint)
    with _LOCK:
        if key not in _FILESYSTEMS:
            _FILESYSTEMS[key] = _open_filesystem(scheme, bucket)
        return _FILESYSTEMS[key]


def _open_filesystem(scheme: str, bucket: str):
    from pyarrow import fs

    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        options = {}
        if endpoint:
            scheme_part, _, host = endpoint.partition("://")
            options = {"endpoint_override": host or scheme_part, "scheme": scheme_part if host else "https"}
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            options["region"] = region
        if endpoint or region:
            return fs.S3FileSystem(**options)
    filesystem, _ = fs.FileSystem.from_uri(f"{scheme}://{bucket}")
    return filesystem
