"""Data sources, each read as a Ray Dataset.

Files (parquet, csv, json lines) go through Ray Data's pyarrow readers. The
built-in sources generate or load their data locally, never from a network hub:
`synthetic` is a seeded generator, `digits` is scikit-learn's bundled 8x8 digits
images, `chars` is a character corpus made from the Python standard library's
own source files, present on every machine.
"""
from __future__ import annotations

import importlib.util
import logging
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from orchestrator.data.in_memory import InMemoryDataset
from orchestrator.errors import DataError

if TYPE_CHECKING:
    import ray.data

    from orchestrator.config.spec import JobSpec

SYNTHETIC_DEFAULTS = {"samples": 4096, "features": 16, "classes": 4, "noise": 0.5}
CHARS_DEFAULTS = {"context": 64, "max_chars": 400_000}


def read_source(spec: "JobSpec") -> "ray.data.Dataset":
    """The job's raw rows (features and label columns, or `text`): a Ray Dataset for files,
    a table in memory for the built-in sources."""
    data = spec.data
    # Built-in sources are whole tables in this process already: prepared here (in_memory.py).
    if data.source == "synthetic":
        return InMemoryDataset.from_arrow(synthetic_table(spec.train.seed, spec.resolved_task, data.options))
    if data.source == "digits":
        return InMemoryDataset.from_arrow(digits_table())
    if data.source == "chars":
        return InMemoryDataset.from_arrow(chars_table(**source_options("chars", data.options)))
    import ray.data

    configure_ray_data()
    path = str(spec.data_path)
    readers = {"parquet": ray.data.read_parquet, "csv": ray.data.read_csv, "json": ray.data.read_json}
    try:
        return readers[data.file_format](path)
    except Exception as error:  # pyarrow raises many types; all mean the same to the user
        raise DataError(f"data.source: cannot read {path!r} as {data.file_format}: {error}") from error


def configure_ray_data() -> None:
    """A reproducible row order, and no progress output of Ray Data's own."""
    from ray.data import DataContext

    context = DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def source_options(source: str, options: dict[str, Any]) -> dict[str, Any]:
    defaults = {"synthetic": SYNTHETIC_DEFAULTS, "chars": CHARS_DEFAULTS}.get(source, {})
    unknown = set(options) - set(defaults)
    if unknown:
        raise DataError(
            f"data.options: unknown key(s) {sorted(unknown)} for source {source!r}; "
            f"valid: {sorted(defaults) or 'none'}"
        )
    return {**defaults, **options}


def synthetic_table(seed: int, task: str, options: dict[str, Any]) -> pa.Table:
    """Gaussian blobs (classification) or a noisy linear target (regression)."""
    opts = source_options("synthetic", options)
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
