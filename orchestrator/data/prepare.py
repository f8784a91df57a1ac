"""Preparation steps over Ray Datasets (or a table in memory: in_memory.py), and the
train/validation split.

The split is decided per row from a seeded hash of the row's content, so it is
the same whatever Ray's block layout and wherever the row sits in the file.
Normalisation statistics come from the training split only.
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from orchestrator.data.in_memory import InMemoryDataset
from orchestrator.errors import DataError

if TYPE_CHECKING:
    import ray.data

SPLIT_COLUMN = "__validation"
BYTE_VOCAB = 256  # characters are tokenised as UTF-8 bytes: no vocabulary to fit or ship


def drop_missing(ds: "ray.data.Dataset") -> "ray.data.Dataset":
    """Drop rows with a null or a NaN anywhere. Arrow-backed pandas columns treat a
    float NaN as a value, not as missing, so NaNs are looked for separately."""

    def keep_complete(df: pd.DataFrame) -> pd.DataFrame:
        missing = df.isna().to_numpy().any(axis=1)
        for column in df.columns:
            if pd.api.types.is_float_dtype(df[column].dtype):
                missing |= np.isnan(df[column].to_numpy(dtype=np.float64, na_value=np.nan))
        return df[~missing]

    return ds.map_batches(keep_complete, batch_format="pandas")


def encode_labels(ds: "ray.data.Dataset", label: str) -> tuple["ray.data.Dataset", list]:
    """Map label values to 0..k-1 in sorted order; returns the values in id order."""
    values = sorted(ds.unique(label))
    ids = {value: i for i, value in enumerate(values)}

    def encode(df: pd.DataFrame) -> pd.DataFrame:
        df[label] = df[label].map(ids).astype(np.int64)
        return df

    return ds.map_batches(encode, batch_format="pandas"), values


def tokenize_chars(ds: "ray.data.Dataset", context: int) -> "ray.data.Dataset":
    """Cut each `text` row into non-overlapping windows of context+1 byte ids."""
    width = context + 1

    def windows(row: dict) -> list[dict]:
        ids = np.frombuffer(row["text"].encode("utf-8"), dtype=np.uint8).astype(np.int64)
        usable = len(ids) // width * width
        return [{"tokens": w} for w in ids[:usable].reshape(-1, width)]

    return ds.flat_map(windows)


def encode_text(ds: "ray.data.Dataset", context: int) -> "ray.data.Dataset":
    """Turn each row's `text` into its first `context` byte ids, padded with 0 (for
    classifying texts; the other columns, the label among them, stay)."""

    def encode(df: pd.DataFrame) -> pd.DataFrame:
        rows = []
        for text in df.pop("text"):
            ids = np.frombuffer(str(text).encode("utf-8"), dtype=np.uint8)[:context].astype(np.int64)
            rows.append(np.pad(ids, (0, context - len(ids))))
        df["tokens"] = rows
        return df

    return ds.map_batches(encode, batch_format="pandas")


def tokenize(ds: "ray.data.Dataset", tokenizer_json: str, context: int, windows: bool) -> "ray.data.Dataset":
    """Turn each row's `text` into token ids with a tokenizer (the text of its tokenizer.json,
    which travels to the tasks): cut into windows of context+1 ids for task lm, or the
    first `context` ids, padded with 0, to classify texts."""
    width = context + 1

    def encode(df: pd.DataFrame) -> pd.DataFrame:
        encoded = _tokenizer(tokenizer_json).encode_batch([str(text) for text in df["text"]])
        if windows:
            rows = []
            for item in encoded:
                ids = np.asarray(item.ids, dtype=np.int64)
                rows += list(ids[: len(ids) // width * width].reshape(-1, width))
            return pd.DataFrame({"tokens": rows})
        df = df.drop(columns=["text"])
        df["tokens"] = [np.pad(np.asarray(item.ids[:context], dtype=np.int64), (0, context - min(len(item.ids), context)))
                        for item in encoded]
        return df

    return ds.map_batches(encode, batch_format="pandas")


def vocabulary_size(tokenizer_json: str) -> int:
    return _tokenizer(tokenizer_json).get_vocab_size()


@lru_cache(maxsize=2)
def _tokenizer(tokenizer_json: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json)


def mark_validation(ds: "ray.data.Dataset", fraction: float, seed: int) -> "ray.data.Dataset":
    """Add a boolean column: the row belongs to the validation split."""

    def mark(df: pd.DataFrame) -> pd.DataFrame:
        content = pd.util.hash_pandas_object(_hashable(df), index=False).to_numpy()
        # hash_key only reaches text columns, so the seed is mixed in afterwards.
        mixed = pd.util.hash_array(content ^ np.uint64(seed % 2**64))
        df[SPLIT_COLUMN] = (mixed % 1_000_003) / 1_000_003 < fraction
        return df

    return ds.map_batches(mark, batch_format="pandas")


def split(ds: "ray.data.Dataset") -> tuple["ray.data.Dataset", "ray.data.Dataset"]:
    def keep(validation: bool):
        return lambda df: df[df[SPLIT_COLUMN] == validation].drop(columns=[SPLIT_COLUMN])

    return (
        ds.map_batches(keep(False), batch_format="pandas"),
        ds.map_batches(keep(True), batch_format="pandas"),
    )


def fit_normalizer(train: "ray.data.Dataset", columns: list[str]) -> dict[str, tuple[float, float]]:
    """Per-column mean and standard deviation over the training split (Ray Data's
    aggregations, or pandas' for a table in memory)."""
    moments = _mean_and_std(train, columns)
    result = {}
    for column in columns:
        mean, std = moments[column]
        if mean is None:
            raise DataError("data: the training split is empty; lower data.validation_fraction")
        result[column] = (float(mean), float(std) if std and std > 1e-12 else 1.0)
    return result


def _mean_and_std(ds, columns: list[str]) -> dict[str, tuple[float | None, float | None]]:
    if isinstance(ds, InMemoryDataset):
        return ds.mean_and_std(columns)
    from ray.data.aggregate import Mean, Std

    stats = ds.aggregate(*[Mean(c) for c in columns], *[Std(c, ddof=0) for c in columns])
    return {c: (stats[f"mean({c})"], stats[f"std({c})"]) for c in columns}


def class_count(ds, label: str) -> int:
    """Classes in `label` (class ids 0..k-1): the largest id plus one, by Ray Data's
    aggregation (or pandas' for a table in memory)."""
    largest = ds.max(label)
    try:
        return 1 if largest is None else int(largest) + 1
    except (TypeError, ValueError):
        raise DataError(f"data.label_column: {label!r} values are not class ids ({largest!r}); "
                        "add `encode_labels` to data.prepare") from None


def normalize(ds: "ray.data.Dataset", stats: dict[str, tuple[float, float]]) -> "ray.data.Dataset":
    def apply(df: pd.DataFrame) -> pd.DataFrame:
        for column, (mean, std) in stats.items():
            df[column] = ((df[column] - mean) / std).astype(np.float32)
        return df

    return ds.map_batches(apply, batch_format="pandas")


def _hashable(df: pd.DataFrame) -> pd.DataFrame:
    # Array cells (token windows) are not hashable by pandas; hash their bytes instead.
    return df.apply(lambda col: col.map(_cell_bytes) if col.dtype == object else col)


def _cell_bytes(cell):
    return cell.tobytes() if isinstance(cell, np.ndarray) else cell

