"""Prepared rows as the model reads them: an `inputs` column and a `targets` column.

Rows of several values (features, token windows) become fixed-size lists, so a split
is two numpy arrays in memory and two columns in a shard, read back without parsing.
The checks that need the values themselves (numeric features, no missing values,
numeric labels) are made here, on every batch, wherever the batch is encoded.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from orchestrator.errors import DataError

INPUTS, TARGETS = "inputs", "targets"


def check_columns(columns: list[str], label: str, features: list[str]) -> None:
    if label not in columns:
        raise DataError(f"data.label_column: {label!r} is not a column; columns: {columns}")
    missing = [c for c in features if c not in columns]
    if missing:
        raise DataError(f"data.feature_columns: {missing} not in the data; columns: {columns}")


@dataclass(frozen=True)
class Encoding:
    task: str
    label: str | None = None
    features: list[str] = field(default_factory=list)  # tabular rows
    width: int | None = None  # values per input row, when a feature is an array (an image)
    context: int | None = None  # token rows: `tokens` windows (lm) or texts to classify

    def __call__(self, frame: pd.DataFrame) -> pa.Table:
        inputs, targets = self.arrays(frame)
        return pa.table({INPUTS: _column(inputs), TARGETS: _column(targets)})

    def arrays(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        if self.task == "lm":
            tokens = _stack(frame["tokens"], self.context + 1, np.int64)
            return np.ascontiguousarray(tokens[:, :-1]), np.ascontiguousarray(tokens[:, 1:])
        if self.context is not None:
            return _stack(frame["tokens"], self.context, np.int64), self._targets(frame, np.int64)
        try:
            inputs = _features(frame, self.features)
        except (TypeError, ValueError) as error:
            raise DataError(
                f"data.feature_columns: features must be numeric ({error}); "
                "drop text columns with data.feature_columns or add data.prepare steps"
            ) from error
        if np.isnan(inputs).any():
            raise DataError("data: features contain missing values; add `dropna` to data.prepare")
        target_dtype = np.float32 if self.task == "regression" else np.int64
        return np.ascontiguousarray(inputs), self._targets(frame, target_dtype)

    @property
    def row_bytes(self) -> int:
        """Bytes of one encoded row, to size shards."""
        if self.task == "lm":
            return 2 * self.context * 8
        if self.context is not None:
            return self.context * 8 + 8
        return 4 * (self.width or len(self.features)) + 8

    def _targets(self, frame: pd.DataFrame, dtype) -> np.ndarray:
        try:
            return frame[self.label].to_numpy(dtype=dtype)
        except (TypeError, ValueError) as error:
            what = "values" if dtype == np.float32 else "class ids"
            raise DataError(
                f"data.label_column: {self.label!r} values are not {self.task} {what} ({error}); "
                "add `encode_labels` to data.prepare"
            ) from error


def _features(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """The feature columns side by side, a column of arrays (an image) as its values."""
    arrays = [col for col in features if len(frame) and isinstance(frame[col].iloc[0], np.ndarray)]
    if not arrays:
        return frame[features].to_numpy(dtype=np.float32)
    parts = [np.stack([np.asarray(c, dtype=np.float32).reshape(-1) for c in frame[col]]) if col in arrays
             else frame[[col]].to_numpy(dtype=np.float32) for col in features]
    return np.concatenate(parts, axis=1)


def _stack(cells: pd.Series, width: int, dtype) -> np.ndarray:
    if len(cells) == 0:
        return np.zeros((0, width), dtype=dtype)
    return np.stack([np.asarray(cell, dtype=dtype) for cell in cells])


def _column(values: np.ndarray) -> pa.Array:
    if values.ndim == 1:
        return pa.array(values)
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
