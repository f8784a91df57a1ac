"""How big a job's prepared data will be, and what a worker holds of it, found without
Ray and without reading the rows (for `plan`): Parquet files' row counts come from
their footers; CSV and JSON files are sized by their bytes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestrator.data.encode import Encoding
from orchestrator.data.order import streams_per_rank
from orchestrator.run.storage import open_input_file

if TYPE_CHECKING:
    from orchestrator.config.spec import JobSpec

BUILTIN_ROWS = {"digits": 1797}


@dataclass(frozen=True)
class DataEstimate:
    rows: int | None  # before the validation split; None: not known without reading
    row_bytes: int
    source_bytes: int | None  # a file source's files on disk
    streamed: bool
    shard_bytes: int
    window: int
    streams: int

    @property
    def prepared_bytes(self) -> int | None:
        return None if self.rows is None else self.rows * self.row_bytes

    def held_shards(self, dp_size: int) -> int:
        """The shards a streaming worker holds at most: two shuffle windows of each of its
        streams, and the one being read."""
        return 2 * self.window * streams_per_rank(self.streams, dp_size) + 1

    def per_worker_bytes(self, dp_size: int) -> int | None:
        """What a worker holds: its shards, or for data in memory, the whole prepared split."""
        if not self.streamed:
            return self.prepared_bytes
        held = self.held_shards(dp_size) * self.shard_bytes
        return held if self.prepared_bytes is None else min(held, self.prepared_bytes)


def estimate_data(spec: "JobSpec", arguments: dict[str, int | None]) -> DataEstimate:
    row_bytes = _row_bytes(spec, arguments)
    shard_bytes, data = int(spec.data.shard_mb * 2**20), spec.data
    if not data.is_file:
        return DataEstimate(_builtin_rows(spec), row_bytes, None, False, shard_bytes, data.shuffle_window, data.streams)
    rows, size = _file_rows(spec)
    return DataEstimate(rows, row_bytes, size, True, shard_bytes, data.shuffle_window, data.streams)


def _row_bytes(spec: "JobSpec", arguments: dict[str, int | None]) -> int:
    task = spec.resolved_task
    if arguments["context"] is not None:
        return Encoding(task, context=arguments["context"]).row_bytes
    return Encoding(task, width=arguments["input_dim"] or 1).row_bytes


def _builtin_rows(spec: "JobSpec") -> int | None:
    if spec.data.source == "synthetic":
        return spec.source_options.samples
    if spec.data.source == "chars":
        options = spec.source_options
        return options.max_chars // (options.context + 1)
    return BUILTIN_ROWS.get(spec.data.source)


def _file_rows(spec: "JobSpec") -> tuple[int | None, int | None]:
    from orchestrator.errors import DataError

    try:
        files = spec.source_files
    except DataError:
        return None, None
    size = sum(f.stat().st_size for f in files.files)
    if files.format != "parquet" or "tokenize" in spec.data.prepare or "tokenize_chars" in spec.data.prepare:
        return (len(files.files) if files.format == "images" else None), size
    import pyarrow.parquet as pq

    rows = 0
    for path in files.files:
        with open_input_file(path) as handle:
            rows += pq.read_metadata(handle).num_rows
    return rows, size
