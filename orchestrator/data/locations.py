"""Where a file source's rows are: a file, a folder of files, a glob, or a URI
(s3://, gs://, ... through `pyarrow.fs`, with the credentials run/storage.py reads).

A folder is searched recursively for files of the source's format (images sit in one
sub-folder per label); hidden files and folders (`.name`, `_name`, as Spark and Ray
write beside their output) are left out. The files are listed once, in name order,
and that order is the order of the rows.
"""
from __future__ import annotations

import glob as globbing
from dataclasses import dataclass
from pathlib import Path

from orchestrator.data.formats import SUFFIX_FORMATS
from orchestrator.errors import DataError
from orchestrator.run.storage import ObjectPath, RunPath, is_remote, is_uri


def location(source: str, base_dir: Path) -> RunPath:
    """A URI as object storage; anything else relative to job.yaml's folder."""
    return ObjectPath(source) if is_uri(source) else (base_dir / source).resolve()


def is_glob(source: str) -> bool:
    return any(c in source for c in "*?[")


def format_of(source: str, declared: str, base_dir: Path) -> str | None:
    """A file source's format: the declared one (`data.format`) unless `auto`, else its
    suffix, or (a folder) the suffix its files share; None when none is known."""
    if declared != "auto":
        return declared
    suffix = Path(source.rstrip("/")).suffix.lower()
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    found = {SUFFIX_FORMATS[Path(str(f)).suffix.lower()] for f in _listing(source, base_dir)
             if Path(str(f)).suffix.lower() in SUFFIX_FORMATS}
    return found.pop() if len(found) == 1 else None


@dataclass(frozen=True)
class SourceFiles:
    files: tuple[RunPath, ...]
    format: str

    @classmethod
    def find(cls, source: str, declared: str, base_dir: Path) -> SourceFiles:
        """The files of `data.source` (a location), in `data.format` (`declared`).
        Raises DataError: nothing there, or no file of the format."""
        file_format = format_of(source, declared, base_dir)
        if file_format is None:
            raise DataError(f"data.format: cannot tell the format of the files at {source!r}; "
                            "set data.format (parquet, csv, json, images or text)")
        suffixes = {s for s, f in SUFFIX_FORMATS.items() if f == file_format}
        listed = _listing(source, base_dir)
        files = tuple(f for f in listed if len(listed) == 1 or Path(str(f)).suffix.lower() in suffixes)
        if not files:
            raise DataError(f"data.source: no {file_format} files at {source!r} "
                            f"(looked for {', '.join(sorted(suffixes))})")
        return cls(files, file_format)

    def for_ray(self) -> tuple[list[str], object | None]:
        """Paths and the filesystem to hand a Ray Data reader."""
        if is_remote(self.files[0]):
            return [f.key for f in self.files], self.files[0].filesystem
        return [str(f) for f in self.files], None


def _listing(source: str, base_dir: Path) -> list[RunPath]:
    where = location(source, base_dir)
    if is_remote(where):
        if where.is_file():
            return [where]
        return sorted(f for f in where.rglob("*") if f.is_file() and not _hidden(f.relative_to(where).parts))
    if is_glob(source):
        pattern = str(base_dir / source)
        return sorted(Path(p) for p in globbing.glob(pattern, recursive=True) if Path(p).is_file())
    if where.is_dir():
        return sorted(f for f in where.rglob("*") if f.is_file() and not _hidden(f.relative_to(where).parts))
    return [where] if where.exists() else []


def _hidden(parts) -> bool:
    return any(part.startswith((".", "_")) for part in parts)
