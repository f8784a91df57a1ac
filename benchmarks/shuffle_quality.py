"""How well the windowed shuffle of streamed data (orchestrator/data/order.py) mixes a
dataset, in the worst case: rows sorted by label before they are sharded.

For N rows of K classes, sorted by class, cut into shards of R rows, each global batch
of the first epoch is compared, for several `data.streams` x `data.shuffle_window`, with the whole dataset's class mix: the table gives the
total variation distance between a batch's class histogram and the dataset's (0: the
batch has the dataset's mix; 1: nothing in common), as the median and 95th percentile
over batches, and how many classes a batch sees. A full shuffle (`window = all`) is the
floor, which a batch's sampling noise alone reaches. The order only is computed: no
data is read.

    python benchmarks/shuffle_quality.py > benchmarks/results/shuffle_quality.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orchestrator.data.order import ShardOrder  # noqa: E402


def batch_distances(rows: int, classes: int, shard_rows: int, streams: int, window: int, batch: int,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    labels = np.arange(rows) * classes // rows  # sorted by class
    overall = np.bincount(labels, minlength=classes) / rows
    shards = [shard_rows] * (rows // shard_rows) + ([rows % shard_rows] if rows % shard_rows else [])
    order = ShardOrder(tuple(shards), window, streams)
    distances, seen = [], []
    for step in range(order.steps_per_epoch(batch)):
        counts = np.bincount(labels[order.batch_ids(seed, 0, step, batch)], minlength=classes)
        distances.append(0.5 * np.abs(counts / batch - overall).sum())
        seen.append(np.count_nonzero(counts))
    return np.array(distances), np.array(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--shard-rows", type=int, default=25_000)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    shards = -(-args.rows // args.shard_rows)
    print(f"# Shuffle quality of streamed data: {args.rows:,} rows sorted by class ({args.classes} classes), "
          f"{shards} shards of {args.shard_rows:,} rows, global batch {args.batch}\n")
    print("Command: `python benchmarks/shuffle_quality.py" + "".join(f" {a}" for a in sys.argv[1:]) + "`\n")
    print("| data.streams | data.shuffle_window (shards) | shards a batch mixes | batch distance to the "
          "dataset's mix, median | p95 | classes per batch, median |")
    print("|---|---|---|---|---|---|")
    for streams, window in ((1, 1), (1, 4), (1, 16), (4, 1), (8, 1), (8, 2), (16, 1), (1, shards)):
        distances, seen = batch_distances(args.rows, args.classes, args.shard_rows, streams, window, args.batch)
        name = f"{window} (all: a full shuffle)" if window == shards else str(window)
        print(f"| {streams} | {name} | {streams * window if window < shards else shards} "
              f"| {np.median(distances):.3f} | {np.percentile(distances, 95):.3f} | {np.median(seen):.0f} |")


if __name__ == "__main__":
    main()
