"""Data sources, each read as a Ray Dataset (or, built in, a table in this process).

Files go through Ray Data's readers: tables (parquet, csv, json lines) through pyarrow,
images through `read_images` (resized, scaled to [0, 1], labelled by their sub-folder's
name), text files as one `text` row each. The
built-in sources generate or load their data locally, never from a network hub:
`synthetic` is a seeded generator, `digits` is scikit-learn's bundled 8x8 digits
images, `chars` is a character corpus made from the Python standard library's
own source files, present on every machine.
"""
from __future__ import annotations

import importlib.util
import logging
import sysconfig
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from orchestrator.data.formats import SyntheticOptions
from orchestrator.data.in_memory import InMemoryDataset
from orchestrator.errors import DataError

if TYPE_CHECKING:
    import ray.data

    from orchestrator.config.spec import JobSpec

def read_source(spec: "JobSpec") -> "ray.data.Dataset":
    """The job's raw rows (features and label columns, an `image` and its `label`, or
    `text`): a Ray Dataset for files, a table in memory for the built-in sources."""
    data = spec.data
    # Built-in sources are whole tables in this process already: prepared here (in_memory.py).
    if data.source == "synthetic":
        return InMemoryDataset.from_arrow(synthetic_table(spec.train.seed, spec.resolved_task, data.options))
    if data.source == "digits":
        return InMemoryDataset.from_arrow(digits_table())
    if data.source == "chars":
        options = spec.source_options
        return InMemoryDataset.from_arrow(chars_table(options.context, options.max_chars))
    import ray.data

    configure_ray_data()
    files = spec.source_files
    paths, filesystem = files.for_ray()
    try:
        if files.format == "images":
            return _read_images(paths, filesystem, spec.source_options)
        if files.format == "text":
            return ray.data.read_binary_files(paths, filesystem=filesystem).map_batches(
                _decode_texts, batch_format="pandas")
        readers = {"parquet": ray.data.read_parquet, "csv": ray.data.read_csv, "json": ray.data.read_json}
        return readers[files.format](paths, filesystem=filesystem)
    except Exception as error:  # pyarrow raises many types; all mean the same to the user
        raise DataError(f"data.source: cannot read {data.source!r} as {files.format}: {error}") from error


def _read_images(paths: list[str], filesystem, options) -> "ray.data.Dataset":
    import ray.data

    def label_and_scale(df: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame({
            "image": [np.asarray(image, dtype=np.float32).reshape(-1) / 255.0 for image in df["image"]],
            "label": [PurePosixPath(path).parent.name for path in df["path"]],
        })

    images = ray.data.read_images(paths, filesystem=filesystem, size=tuple(options.size), mode=options.mode,
                                  include_paths=True)
    return images.map_batches(label_and_scale, batch_format="pandas")


def _decode_texts(df: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"text": [bytes(b).decode("utf-8", errors="replace") for b in df["bytes"]]})


def tokenizer_text(spec: "JobSpec") -> str:
    """The job's tokenizer.json (data.options.tokenizer, relative to job.yaml), as text."""
    name = spec.source_options.tokenizer
    if name is None:
        raise DataError("data.options.tokenizer: the tokenize step needs a tokenizer.json; "
                        "give its path, or use tokenize_chars (UTF-8 bytes)")
    path = spec.base_dir / name
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise DataError(f"data.options.tokenizer: cannot read {str(path)!r}: {error.strerror or error}") from None


def configure_ray_data() -> None:
    """A reproducible row order, and no progress output of Ray Data's own."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def synthetic_table(seed: int, task: str, options: dict[str, Any]) -> pa.Table:
    """Gaussian blobs (classification) or a noisy linear target (regression)."""
    opts = SyntheticOptions(**options).model_dump()
    rng = np.random.default_rng(seed)
    n, f = int(opts["samples"]), int(opts["features"])
    if task == "regression":
        x = rng.normal(size=(n, f)).astype(np.float32)
        w = rng.normal(size=f).astype(np.float32)
        y = (x @ w + opts["noise"] * rng.normal(size=n)).astype(np.float32)
    else:
        centers = rng.normal(scale=2.0, size=(int(opts["classes"]), f))
        y = rng.integers(0, int(opts["classes"]), size=n)
        x = (centers[y] + opts["noise"] * rng.normal(size=(n, f))).astype(np.float32)
    columns = {f"f{i}": x[:, i] for i in range(f)}
    columns["label"] = y
    return pa.table(columns)


def digits_table() -> pa.Table:
    """scikit-learn's bundled 8x8 digits (the file `load_digits` reads), read straight from
    the installed package: importing scikit-learn costs a second and is not needed."""
    found = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if found is None or not found.submodule_search_locations:
        raise DataError("data.source: digits reads scikit-learn's bundled copy; pip install scikit-learn")
    path = Path(list(found.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    rows = np.loadtxt(path, delimiter=",", dtype=np.float64)  # 64 pixels, then the label
    columns = {f"pixel_{i}": rows[:, i].astype(np.float32) for i in range(rows.shape[1] - 1)}
    columns["label"] = rows[:, -1].astype(np.int64)
    return pa.table(columns)


def stdlib_source_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in stdlib.glob("*.py") if p.is_file())


def chars_table(context: int, max_chars: int) -> pa.Table:
    """One row per standard-library source file, in name order, up to `max_chars` in all."""
    texts, total = [], 0
    for path in stdlib_source_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text[: max_chars - total])
        total += len(texts[-1])
        if total >= max_chars:
            break
    if total < 2 * (context + 1):
        raise DataError("data.source: chars found too little standard-library source text")
    return pa.table({"text": texts})
