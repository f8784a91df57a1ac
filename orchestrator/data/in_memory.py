"""The part of Ray Data's `Dataset` the pipeline uses, over one table in this process.

Built-in sources (synthetic, digits, chars) make their whole table in the driver's
memory before anything else happens. Handing it to Ray Data then only adds Ray Data's
start and a task per operator: seconds, for a table of a few thousand rows, on the path
from `launch` to the first step. Such a table is prepared here instead, by the same
steps (prepare.py), which see the same calls and pandas batches either way; files are
read and prepared by Ray Data.

Exercised by: pytest tests/test_data.py -k in_memory
"""
from __future__ import annotations

from typing import Any, Callable

import pandas as pd
import pyarrow as pa


class InMemoryDataset:
    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame.reset_index(drop=True)

    @classmethod
    def from_arrow(cls, table: pa.Table) -> InMemoryDataset:
        return cls(table.to_pandas())

    def map_batches(self, fn: Callable[[pd.DataFrame], pd.DataFrame], batch_format: str = "pandas") -> InMemoryDataset:
        if batch_format != "pandas":
            raise ValueError(f"only pandas batches are supported here, not {batch_format!r}")
        return InMemoryDataset(fn(self._frame.copy()))  # one batch: the whole table

    def flat_map(self, fn: Callable[[dict], list[dict]]) -> InMemoryDataset:
        rows = [out for row in self._frame.to_dict("records") for out in fn(row)]
        return InMemoryDataset(pd.DataFrame(rows))

    def unique(self, column: str) -> list[Any]:
        return list(self._frame[column].dropna().unique())

    def materialize(self) -> InMemoryDataset:
        return self

    def schema(self) -> pa.Schema:
        return pa.Schema.from_pandas(self._frame, preserve_index=False)

    def mean_and_std(self, columns: list[str]) -> dict[str, tuple[float | None, float | None]]:
        """Per column, the mean and the population standard deviation (None and None for
        an empty table): what prepare.fit_normalizer asks Ray Data's aggregations for."""
        values = self._frame[columns].astype("float64")
        if values.empty:
            return {c: (None, None) for c in columns}
        return {c: (float(values[c].mean()), float(values[c].std(ddof=0))) for c in columns}

    def count(self) -> int:
        return len(self._frame)

    def max(self, column: str) -> Any:
        values = self._frame[column].dropna()
        return None if values.empty else values.max()

    def to_pandas(self) -> pd.DataFrame:
        return self._frame.copy()
