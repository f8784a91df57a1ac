"""Each epoch's sample order: a pure function of (seed, epoch), whatever the world size.

A split is a sequence of shards (a prepared split in memory is one shard). Each epoch
the shards are put in a seeded order and dealt, a run of them each, to `streams`
streams. A stream cuts its shards into windows of `window` shards and shuffles the rows
of each window together; its windows follow one another. A global batch takes the next
`global_batch / streams` samples of every stream, stream after stream.

Why streams: a data-parallel rank trains on a contiguous share of each global batch,
so when the world size divides the stream count a rank's rows all come from its own
streams, and it reads only those streams' shards: the storage serves the dataset once
an epoch, not once per rank. The streams are fixed by the job, not by the world size,
so a resized run still follows the same order.

With one stream and one window (every split held in memory, and any split of at most
`window` shards) the order is a full shuffle of the epoch. With more, a batch mixes
the current window of every stream: `streams * window` shards, and a reader holds its
streams' current and next windows, not the dataset.

Global sample ids number the rows shard after shard, in the split's own shard order;
the audit and the sampler speak of those ids.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np


@dataclass(frozen=True)
class ShardOrder:
    shard_rows: tuple[int, ...]
    window: int = 1
    streams: int = 1

    @classmethod
    def whole(cls, num_samples: int) -> ShardOrder:
        """One shard: a full shuffle every epoch (a split in memory)."""
        return cls((int(num_samples),))

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"the shuffle window must be at least one shard, got {self.window}")
        if self.streams < 1:
            raise ValueError(f"a split is read as at least one stream, got {self.streams}")

    @property
    def num_samples(self) -> int:
        return sum(self.shard_rows)

    @property
    def stream_count(self) -> int:
        """The streams this split has: no more than it has shards."""
        return min(self.streams, len(self.shard_rows))

    @cached_property
    def shard_starts(self) -> np.ndarray:
        """The global id of each shard's first row."""
        return np.concatenate([[0], np.cumsum(self.shard_rows)[:-1]]).astype(np.int64)

    def stream_edges(self, global_batch: int) -> np.ndarray:
        """Where each stream's samples lie in a global batch: stream p's at [edges[p], edges[p+1])."""
        return global_batch * np.arange(self.stream_count + 1) // self.stream_count

    def steps_per_epoch(self, global_batch: int) -> int:
        """Global batches an epoch holds. With several streams, what the shortest stream
        any epoch can deal allows (its shards are the smallest), so the count does not
        change from epoch to epoch."""
        streams = self.stream_count
        if streams == 1:
            return self.num_samples // global_batch
        shortest = sum(sorted(self.shard_rows)[: len(self.shard_rows) // streams])
        return shortest // -(-global_batch // streams)

    def batch_ids(self, seed: int, epoch: int, batch: int, global_batch: int,
                  lo: int = 0, hi: int | None = None) -> np.ndarray:
        """The global ids at positions [lo, hi) of the epoch's global batch `batch`."""
        hi = global_batch if hi is None else hi
        edges = self.stream_edges(global_batch)
        parts = []
        for stream in self.streams_between(global_batch, lo, hi):
            first, last = max(lo, edges[stream]), min(hi, edges[stream + 1])
            start = batch * (edges[stream + 1] - edges[stream]) + first - edges[stream]
            parts.append(_stream_ids(self, seed, epoch, stream, int(start), int(start + last - first)))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def streams_between(self, global_batch: int, lo: int, hi: int) -> range:
        """The streams whose samples lie at positions [lo, hi) of a global batch."""
        edges = self.stream_edges(global_batch)
        first = int(np.searchsorted(edges, lo, side="right")) - 1
        last = int(np.searchsorted(edges, hi, side="left"))
        return range(max(first, 0), min(last, self.stream_count))

    def shards_of(self, ids: np.ndarray) -> np.ndarray:
        """The shard each global id lies in."""
        return np.searchsorted(self.shard_starts, ids, side="right") - 1

    def _rows_of(self, shards: tuple[int, ...]) -> int:
        return sum(self.shard_rows[s] for s in shards)


def streams_per_rank(streams: int, dp_size: int) -> int:
    """The most streams one of `dp_size` ranks trains on: streams / dp_size when that
    divides, else its share straddles its neighbours' streams as well."""
    batch = streams * dp_size  # any global batch lays the edges out alike
    return max(len(ShardOrder((1,) * streams, 1, streams).streams_between(batch, r * streams, (r + 1) * streams))
               for r in range(dp_size))


@lru_cache(maxsize=8)
def _epoch_shards(order: ShardOrder, seed: int, epoch: int) -> np.ndarray:
    count = len(order.shard_rows)
    return np.random.default_rng([seed, epoch, count]).permutation(count) if count > 1 else np.zeros(1, int)


@lru_cache(maxsize=64)
def _stream_windows(order: ShardOrder, seed: int, epoch: int, stream: int) -> tuple[tuple[int, ...], ...]:
    """The windows of shards stream `stream` reads in the epoch, in order."""
    shards = np.array_split(_epoch_shards(order, seed, epoch), order.stream_count)[stream]
    return tuple(tuple(int(s) for s in shards[i : i + order.window]) for i in range(0, len(shards), order.window))


@lru_cache(maxsize=64)
def _stream_bounds(order: ShardOrder, seed: int, epoch: int, stream: int) -> np.ndarray:
    """Where each of the stream's windows starts in the stream, and where the last ends."""
    windows = _stream_windows(order, seed, epoch, stream)
    return np.concatenate([[0], np.cumsum([order._rows_of(w) for w in windows])])


def _stream_ids(order: ShardOrder, seed: int, epoch: int, stream: int, start: int, stop: int) -> np.ndarray:
    """The global ids at positions [start, stop) of one stream's order."""
    bounds = _stream_bounds(order, seed, epoch, stream)
    parts = []
    first = int(np.searchsorted(bounds, start, side="right")) - 1
    for k in range(first, len(bounds) - 1):
        if bounds[k] >= stop:
            break
        ids = _window_ids(order, seed, epoch, stream, k)
        parts.append(ids[max(start - bounds[k], 0) : stop - bounds[k]])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# Two windows (the current and the next) of each of a rank's streams are asked for
# around a window's end; at the default 8 streams that is 16 entries.
@lru_cache(maxsize=24)
def _window_ids(order: ShardOrder, seed: int, epoch: int, stream: int, k: int) -> np.ndarray:
    """The global ids of window `k` of a stream in the epoch, shuffled."""
    if len(order.shard_rows) == 1:
        # The order a split in memory has always had: runs and checkpoints made before
        # shards existed resume onto the same samples.
        return np.random.default_rng([seed, epoch]).permutation(order.num_samples)
    window = _stream_windows(order, seed, epoch, stream)[k]
    ids = np.concatenate([np.arange(order.shard_starts[s], order.shard_starts[s] + order.shard_rows[s])
                          for s in window])
    # One stream keeps the seeds the order had before it had streams.
    mix = [seed, epoch, k + 1] if order.stream_count == 1 else [seed, epoch, order.stream_count, stream, k + 1]
    return ids[np.random.default_rng(mix).permutation(len(ids))]
