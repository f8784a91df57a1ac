"""Each epoch's sample order: a pure function of (seed, epoch), whatever the world size.

A split is a sequence of shards (a prepared split in memory is one shard). Each
epoch, the shards are put in a seeded order and cut into windows of `window`
shards; the rows of each window are shuffled together, and the windows follow one
another. With one window (every split held in memory, and any split of at most
`window` shards) that is a full shuffle of the epoch. With more, a sample's
neighbours in the order, and so in a batch, come from the `window` shards of its
window: a reader needs one window in memory at a time, not the dataset.

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

    @classmethod
    def whole(cls, num_samples: int) -> ShardOrder:
        """One shard: a full shuffle every epoch (a split in memory)."""
        return cls((int(num_samples),), 1)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"the shuffle window must be at least one shard, got {self.window}")

    @property
    def num_samples(self) -> int:
        return sum(self.shard_rows)

    @cached_property
    def shard_starts(self) -> np.ndarray:
        """The global id of each shard's first row."""
        return np.concatenate([[0], np.cumsum(self.shard_rows)[:-1]]).astype(np.int64)

    def ids(self, seed: int, epoch: int, start: int, stop: int) -> np.ndarray:
        """The global ids at positions [start, stop) of the epoch's order."""
        windows = _windows(self, seed, epoch)
        bounds = np.concatenate([[0], np.cumsum([self._rows_of(w) for w in windows])])
        parts = []
        first = int(np.searchsorted(bounds, start, side="right")) - 1
        for k in range(first, len(windows)):
            if bounds[k] >= stop:
                break
            ids = _window_ids(self, seed, epoch, k)
            parts.append(ids[max(start - bounds[k], 0) : stop - bounds[k]])
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def shards_of(self, ids: np.ndarray) -> np.ndarray:
        """The shard each global id lies in."""
        return np.searchsorted(self.shard_starts, ids, side="right") - 1

    def _rows_of(self, shards: tuple[int, ...]) -> int:
        return sum(self.shard_rows[s] for s in shards)


def windows_at(order: ShardOrder, seed: int, epoch: int, position: int) -> tuple[int, ...]:
    """The shards of the window that holds `position` of the epoch's order."""
    windows = _windows(order, seed, epoch)
    end = 0
    for shards in windows:
        end += order._rows_of(shards)
        if position < end:
            return shards
    return windows[-1]


@lru_cache(maxsize=8)
def _windows(order: ShardOrder, seed: int, epoch: int) -> tuple[tuple[int, ...], ...]:
    count = len(order.shard_rows)
    shards = np.random.default_rng([seed, epoch, count]).permutation(count) if count > 1 else [0]
    return tuple(tuple(int(s) for s in shards[i : i + order.window]) for i in range(0, count, order.window))


@lru_cache(maxsize=4)
def _window_ids(order: ShardOrder, seed: int, epoch: int, k: int) -> np.ndarray:
    """The global ids of window `k` of the epoch, shuffled."""
    windows = _windows(order, seed, epoch)
    if len(windows) == 1 and len(order.shard_rows) == 1:
        # The order a split in memory has always had: runs and checkpoints made before
        # shards existed resume onto the same samples.
        return np.random.default_rng([seed, epoch]).permutation(order.num_samples)
    ids = np.concatenate([np.arange(order.shard_starts[s], order.shard_starts[s] + order.shard_rows[s])
                          for s in windows[k]])
    return ids[np.random.default_rng([seed, epoch, k + 1]).permutation(len(ids))]
