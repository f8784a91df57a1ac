"""Where prepared splits are kept: arrays in memory, or shards on the run's storage.

A `ShardStore` writes each split of a file source with Ray Data (every task writes its
own shard; nothing goes through the driver), then publishes `manifest.json` last: a
folder without a manifest is an unfinished preparation and is prepared again. The
manifest carries a key of what made the data (the job's data section and seed), so
a resumed run reads the shards it trained on and a changed job prepares anew.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import math
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.data.encode import Encoding
from orchestrator.data.in_memory import InMemoryDataset
from orchestrator.data.prepared import PreparedData
from orchestrator.data.shards import ShardedSplit
from orchestrator.data.splits import Split
from orchestrator.errors import DataError
from orchestrator.run.storage import RunPath, is_remote, open_input_file, remove_tree, run_path

if TYPE_CHECKING:
    import ray.data

    from orchestrator.config.spec import JobSpec

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1


def in_memory(ds: InMemoryDataset, name: str, encoding: Encoding, expected: dict | None = None) -> Split:
    return Split(*encoding.arrays(ds.to_pandas()))


@dataclass
class ShardStore:
    root: RunPath
    key: str
    shard_bytes: int
    window: int
    streams: int

    @classmethod
    def at(cls, spec: "JobSpec", data_dir: "RunPath | None") -> ShardStore:
        """The store of `spec`'s data in `data_dir`; None: a temporary folder, removed when
        the process that made it exits (a preparation outside a run: tests, benchmarks)."""
        if data_dir is None:
            data_dir = tempfile.mkdtemp(prefix="orchestrator-data-")
            atexit.register(shutil.rmtree, data_dir, True)
        root = run_path(data_dir)
        # The source by where it resolves to: a run launched with a relative path and
        # read back with an absolute one is the same data.
        made_of = json.dumps([spec.data.model_dump(mode="json", exclude={"source"}), str(spec.data_path),
                              spec.train.seed], sort_keys=True)
        return cls(root, hashlib.sha256(made_of.encode()).hexdigest()[:16],
                   int(spec.data.shard_mb * 2**20), spec.data.shuffle_window, spec.data.streams)

    def prepared(self) -> PreparedData | None:
        """The data a previous preparation of the same job published here, if any."""
        manifest = self.root / MANIFEST
        if not manifest.exists():
            return None
        recorded = json.loads(manifest.read_text())
        if recorded.get("version") != MANIFEST_VERSION or recorded.get("key") != self.key:
            return None
        splits = {name: ShardedSplit(str(self.root / name), tuple(s["files"]), tuple(s["rows"]), self.window,
                                     self.streams)
                  for name, s in recorded["splits"].items()}
        prepared = recorded["prepared"]
        prepared["normalization"] = {c: tuple(v) for c, v in prepared["normalization"].items()}
        return PreparedData(splits["train"], splits["validation"], **prepared)

    def write(self, ds: "ray.data.Dataset", name: str, encoding: Encoding, expected: dict) -> ShardedSplit:
        """Encode `ds` and write it as shards of about `shard_bytes` under `root/name`;
        `expected[name]` is about how many rows it has."""
        folder = self.root / name
        remove_tree(folder)  # what an unfinished preparation left
        encoded = ds.map_batches(encoding, batch_format="pandas")
        # Only the training split is read as streams; validation is read in order.
        streams = self.streams if name == "train" else 1
        shards = shard_count(expected[name] * encoding.row_bytes, self.shard_bytes, streams)
        with data_errors():
            _write_parquet(encoded.repartition(shards), folder)
        files = sorted(p.name for p in folder.glob("part-*.parquet")) if folder.exists() else []
        counts = tuple(_row_count(folder / f) for f in files)
        return ShardedSplit(str(folder), tuple(files), counts, self.window, self.streams)

    def publish(self, data: PreparedData) -> PreparedData:
        from orchestrator.run.files import atomic_write_text

        prepared = {k: _plain(v) for k, v in asdict(data).items() if k not in ("train", "validation")}
        splits = {name: {"files": list(split.files), "rows": list(split.shard_rows)}
                  for name, split in (("train", data.train), ("validation", data.validation))}
        manifest = {"version": MANIFEST_VERSION, "key": self.key, "prepared": prepared, "splits": splits}
        atomic_write_text(self.root / MANIFEST, json.dumps(manifest, indent=1))
        return data


def shard_count(split_bytes: float, shard_bytes: int, streams: int) -> int:
    """Shards of about `shard_bytes`, as many for every stream (order.py): a stream of
    one shard fewer than another would leave the other's last shard out of each epoch."""
    return streams * max(1, math.ceil(split_bytes / shard_bytes / streams))


def _shard_names():
    """`part-000000-UUID.parquet`, ... in block order: the order of the split's global ids."""
    from ray.data.datasource import FilenameProvider

    class ShardNames(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{task_index:06d}-{write_uuid}.parquet"

    return ShardNames()


def _write_parquet(ds: "ray.data.Dataset", folder: RunPath) -> None:
    if is_remote(folder):
        ds.write_parquet(folder.key, filesystem=folder.filesystem, filename_provider=_shard_names())
    else:
        ds.write_parquet(str(folder), filename_provider=_shard_names())


def _row_count(path: RunPath) -> int:
    import pyarrow.parquet as pq

    with open_input_file(path) as handle:
        return pq.read_metadata(handle).num_rows


class data_errors:
    """A DataError raised in a Ray Data task reaches the user as itself, not wrapped."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if error is None or isinstance(error, DataError):
            return False
        seen, depth = error, 0
        while seen is not None and depth < 20:
            if isinstance(seen, DataError):
                raise DataError(str(seen)) from None
            seen, depth = getattr(seen, "cause", None) or seen.__cause__ or seen.__context__, depth + 1
        # Ray Data may carry the task's error only as its traceback's text.
        found = re.search(r"orchestrator\.errors\.DataError: (.+)", str(error))
        if found:
            raise DataError(found.group(1).strip()) from None
        return False


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars (label values, statistics) as Python's."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, "item") else value
