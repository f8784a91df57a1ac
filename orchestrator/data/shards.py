"""A prepared split as Parquet shards on the run's storage, read a window at a time.

Preparation (pipeline.py) writes each split once, as `part-NNNNNN.parquet` files of
about `data.shard_mb` each with two columns, `inputs` and `targets` (fixed-size lists
for rows of several values), and a `manifest.json` that holds everything else: rows
per shard, shapes, label values, statistics. The driver and the workers keep only the
manifest; rows are read by the worker that trains on them.

The order (order.py) deals the shards to streams, and a data-parallel rank trains on
the rows of its own streams (when the world size divides the stream count): its reader
reads only their shards, so the storage serves each shard once an epoch. It keeps each
of its streams' current and next window, at most `2 * window` shards a stream and one
more, whatever the dataset's size: the next window is read on a background thread
while the current one trains.

Exercised by: pytest tests/test_streaming.py
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from orchestrator.data.encode import INPUTS, TARGETS
from orchestrator.data.order import ShardOrder
from orchestrator.run.storage import open_input_file, run_path

if TYPE_CHECKING:
    import pyarrow as pa

    from orchestrator.data.sampler import GlobalBatchSampler

@dataclass
class ShardedSplit:
    root: str  # the split's folder: a local path or a URI
    files: tuple[str, ...]  # shard file names, in global-id order
    shard_rows: tuple[int, ...]
    window: int
    streams: int = 1
    _reader: "ShardReader | None" = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return sum(self.shard_rows)

    def __getstate__(self) -> dict:  # travels as its manifest; each process reads for itself
        return {**self.__dict__, "_reader": None}

    @cached_property  # asked for every step (prefetch_for): made once
    def order(self) -> ShardOrder:
        return ShardOrder(self.shard_rows, self.window, self.streams)

    def take(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The rows `ids` (global ids), as fresh arrays (inputs, targets)."""
        return self.reader.take(np.asarray(ids, dtype=np.int64))

    def prefetch_for(self, sampler: "GlobalBatchSampler", step: int, dp_rank: int, dp_size: int,
                     steps: int | None = None) -> None:
        """Start reading the shards this rank's rows come from half a window after `step`
        (none past the run's `steps`), and keep as many shards as its streams' windows need."""
        streams = sampler.rank_streams(dp_rank, dp_size)
        self.reader.capacity = len(streams) * 2 * self.window + 1
        rows_per_stream_step = max(1, sampler.global_batch // self.order.stream_count)
        rows_per_shard = len(self) // max(1, len(self.files))
        ahead = step + max(1, rows_per_shard * self.window // 2 // rows_per_stream_step)
        if steps is not None and ahead >= steps:
            return
        ids = sampler.rank_batch_ids(ahead, dp_rank, dp_size)
        self.reader.prefetch(np.unique(self.order.shards_of(ids)))

    def reads(self) -> dict[str, int]:
        """What this process has read from storage so far (usage.jsonl records it)."""
        if self._reader is None:
            return {}
        return {"data_shards_read": self._reader.shards_read, "data_bytes_read": self._reader.bytes_read}

    @property
    def reader(self) -> "ShardReader":
        if self._reader is None:
            self._reader = ShardReader(self, capacity=2 * self.window * self.order.stream_count + 1)
        return self._reader

    def shard_path(self, index: int):
        return run_path(self.root) / self.files[index]


class ShardReader:
    """Shards as numpy arrays, least recently used dropped first, one read in flight."""

    def __init__(self, split: ShardedSplit, capacity: int) -> None:
        self._split = split
        self._order = split.order
        self.capacity = capacity
        self.shards_read = self.bytes_read = 0  # from storage, as arrays
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._loading: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-reader")

    def take(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if len(ids) == 0:
            raise IndexError("no rows asked for")
        shards = self._order.shards_of(ids)
        by_shard = np.argsort(shards, kind="stable")  # each shard's rows in one slice
        bounds = np.flatnonzero(np.diff(shards[by_shard])) + 1
        inputs = targets = None
        for positions in np.split(by_shard, bounds):
            shard = int(shards[positions[0]])
            shard_inputs, shard_targets = self._shard(shard)
            if inputs is None:
                inputs = np.empty((len(ids), *shard_inputs.shape[1:]), dtype=shard_inputs.dtype)
                targets = np.empty((len(ids), *shard_targets.shape[1:]), dtype=shard_targets.dtype)
            rows = ids[positions] - self._order.shard_starts[shard]
            inputs[positions], targets[positions] = shard_inputs[rows], shard_targets[rows]
        return inputs, targets

    def prefetch(self, shards) -> None:
        for shard in shards:
            self._future(int(shard))

    def _shard(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        with self._lock:
            if shard in self._cache:
                self._cache.move_to_end(shard)
                return self._cache[shard]
        return self._future(shard).result()

    def _future(self, shard: int) -> Future:
        with self._lock:
            if shard in self._cache:
                done: Future = Future()
                done.set_result(self._cache[shard])
                return done
            if shard not in self._loading:
                self._loading[shard] = self._pool.submit(self._load, shard)
            return self._loading[shard]

    def _load(self, shard: int) -> tuple[np.ndarray, np.ndarray]:
        try:
            arrays = read_shard(self._split.shard_path(shard))
        except BaseException:
            with self._lock:  # asked for again, it is read again
                self._loading.pop(shard, None)
            raise
        expected = self._split.shard_rows[shard]
        if len(arrays[0]) != expected:
            raise RuntimeError(f"{self._split.shard_path(shard)}: {len(arrays[0])} rows, the manifest "
                               f"says {expected}; the prepared data changed under the run")
        with self._lock:
            self._cache[shard] = arrays
            self._loading.pop(shard, None)
            self.shards_read += 1
            self.bytes_read += arrays[0].nbytes + arrays[1].nbytes
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return arrays


def read_shard(path) -> tuple[np.ndarray, np.ndarray]:
    """A shard's two columns as numpy arrays, read a row group at a time into arrays
    allocated once. What the reader keeps is the rows alone: reading the whole table
    and converting it kept the table's chunks and their concatenated copy in pyarrow's
    pool as well (measured: 911 MB resident for 9 shards of 64 MB, now 592 MB)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open_input_file(path) as handle:
        shard = pq.ParquetFile(handle, memory_map=False)
        rows = shard.metadata.num_rows
        columns: dict[str, np.ndarray] = {}
        start = 0
        for group in range(shard.num_row_groups):
            table = shard.read_row_group(group, columns=[INPUTS, TARGETS], use_threads=False)
            for name in (INPUTS, TARGETS):
                values = column_array(table.column(name))
                if name not in columns:
                    columns[name] = np.empty((rows, *values.shape[1:]), dtype=values.dtype)
                columns[name][start : start + len(values)] = values
            start += table.num_rows
            del table
        pa.default_memory_pool().release_unused()
    if not columns:  # a shard with no rows
        return np.zeros((0, 1), dtype=np.float32), np.zeros(0, dtype=np.int64)
    return columns[INPUTS], columns[TARGETS]


def column_array(column: "pa.ChunkedArray") -> np.ndarray:
    """A column as a numpy array (a view where it can be): (rows,) for scalars, (rows,
    width) for fixed-size lists."""
    import pyarrow as pa

    array = column.combine_chunks()
    if pa.types.is_fixed_size_list(array.type):
        width = array.type.list_size
        return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), width)
    return array.to_numpy(zero_copy_only=False)
