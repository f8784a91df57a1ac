"""What `validate`, `plan` and `launch` check about the data before anything starts.

The pipeline (pipeline.py) finds a missing column or a text label only once Ray is up
and Ray Data has read the data. Here the file's schema and its first SAMPLE_ROWS rows
are read with pyarrow alone, in well under a second, and every problem the pipeline
would raise is named with its key and the fix: columns, types, label encoding, missing
values, the task, the source's options.

Exercised by: pytest tests/test_data_checks.py
"""
from __future__ import annotations

import difflib
import io
from typing import TYPE_CHECKING

import pyarrow as pa

from orchestrator.data.locations import SourceFiles
from orchestrator.errors import DataError
from orchestrator.run.storage import open_input_file

if TYPE_CHECKING:
    from orchestrator.config.spec import JobSpec

SAMPLE_ROWS = 1000
SAMPLE_BYTES = 1 << 16  # of a text file


def data_problems(spec: "JobSpec") -> list[str]:
    """Every problem with the job's data that the pipeline would meet, each one line.
    (`data.options` were checked when the job loaded.)"""
    data = spec.data
    task = spec.resolved_task
    text = bool({"tokenize_chars", "tokenize"} & set(data.prepare))
    problems = []
    if task == "lm" and data.source != "chars" and not text:
        problems.append("data.task: lm needs text: data.source: chars, or files with a `text` column and "
                        "data.prepare: [tokenize_chars] or [tokenize]")
    if "tokenize" in data.prepare and spec.source_options.tokenizer is None:
        problems.append("data.options.tokenizer: the tokenize step needs a tokenizer.json; give its path, "
                        "or use tokenize_chars (UTF-8 bytes)")
    if not data.is_file:
        if data.source != "chars" and data.label_column != "label":
            problems.append(f"data.label_column: {data.source} has the column 'label', not {data.label_column!r}")
        return problems
    try:
        files = spec.source_files
    except DataError as error:
        return problems + [str(error)]
    if files.format == "images":
        return problems + _image_problems(spec)
    sample, problem = read_sample(spec, files)
    if problem is not None:
        return problems + [problem]
    if text:
        return problems + _text_problems(spec, sample, task)
    return problems + _tabular_problems(spec, sample, task)


def read_sample(spec: "JobSpec", files: SourceFiles | None = None) -> tuple[pa.Table | None, str | None]:
    """The first SAMPLE_ROWS rows of a file source's first file, or why they cannot be read."""
    try:
        files = files or spec.source_files
        first, kind = files.files[0], files.format
        with open_input_file(first) as handle:
            return _head(handle, kind), None
    except DataError as error:
        return None, str(error)
    except (OSError, pa.ArrowException) as error:
        return None, f"data.source: cannot read {spec.data.source!r} as {spec.source_format}: {error}"


def _head(handle, kind: str) -> pa.Table:
    """The first SAMPLE_ROWS rows of an open file (a text file's first SAMPLE_BYTES)."""
    if kind == "text":
        return pa.table({"text": [handle.read(SAMPLE_BYTES).decode("utf-8", errors="replace")]})
    if kind == "parquet":
        import pyarrow.parquet as pq

        head = next(pq.ParquetFile(handle).iter_batches(batch_size=SAMPLE_ROWS), None)
        return pa.Table.from_batches([head]) if head is not None else pa.table({})
    if kind == "csv":
        import pyarrow.csv as pcsv

        reader = pcsv.open_csv(handle)
        rows, batches = 0, []
        for batch in reader:
            batches.append(batch)
            rows += batch.num_rows
            if rows >= SAMPLE_ROWS:
                break
        return pa.Table.from_batches(batches, schema=reader.schema).slice(0, SAMPLE_ROWS)
    import pyarrow.json as pjson

    return pjson.read_json(io.BytesIO(_first_lines(handle, SAMPLE_ROWS)))


def _first_lines(handle, count: int) -> bytes:
    """The first `count` lines of a file (pyarrow's files have no readline)."""
    head = b""
    while head.count(b"\n") < count:
        chunk = handle.read(1 << 20)
        if not chunk:
            return head
        head += chunk
    return b"".join(head.splitlines(keepends=True)[:count])


def _image_problems(spec: "JobSpec") -> list[str]:
    data, problems = spec.data, []
    if spec.resolved_task != "classification":
        problems.append(f"data.task: images are classified by their sub-folder's name, not for {spec.resolved_task}")
    if "encode_labels" not in data.prepare:
        problems.append("data.prepare: images are labelled by their sub-folder's name (text); add encode_labels")
    if "normalize" in data.prepare:
        problems.append("data.prepare: images are scaled to [0, 1] as they are read; leave out normalize")
    if data.label_column != "label" or data.feature_columns:
        problems.append("data.label_column, data.feature_columns: images have the columns image and label")
    return problems


def _tabular_problems(spec: "JobSpec", sample: pa.Table, task: str) -> list[str]:
    data = spec.data
    columns = sample.column_names
    problems = []
    if data.label_column not in columns:
        problems.append(f"data.label_column: {data.label_column!r} is not a column{_close(data.label_column, columns)}; "
                        f"columns: {columns}")
    if data.label_column not in columns and not data.feature_columns:
        return problems  # the default features (all but the label) are unknown until it is named
    features = data.feature_columns or [c for c in columns if c != data.label_column]
    missing = [c for c in features if c not in columns]
    for column in missing:
        problems.append(f"data.feature_columns: {column!r} is not a column{_close(column, columns)}; columns: {columns}")
    present = [c for c in features if c in columns]
    text_features = [c for c in present if not _numeric(sample.schema.field(c).type)]
    if text_features:
        problems.append(f"data.feature_columns: {text_features} are not numbers; leave them out "
                        "(list the numeric columns in data.feature_columns)")
    if "dropna" not in data.prepare:
        with_gaps = [c for c in present + ([data.label_column] if data.label_column in columns else [])
                     if _has_gaps(sample.column(c))]
        if with_gaps:
            problems.append(f"data: columns {with_gaps} have missing values; add dropna to data.prepare")
    if data.label_column in columns:
        problems += _label_problems(spec, sample.column(data.label_column), task)
    return problems


def _label_problems(spec: "JobSpec", labels: pa.ChunkedArray, task: str) -> list[str]:
    key = f"data.label_column: {spec.data.label_column!r}"
    encoded = "encode_labels" in spec.data.prepare
    if task == "regression":
        if not _numeric(labels.type):
            return [f"{key} holds {labels.type} values, not numbers a regression can fit; choose a numeric "
                    "column, or data.task: classification"]
        return []
    if encoded:
        return []
    if not _numeric(labels.type):
        return [f"{key} holds text labels ({labels.type}); add encode_labels to data.prepare"]
    values = [v for v in labels.to_pylist() if v is not None]
    if any(float(v) != int(v) or v < 0 for v in values):
        return [f"{key} holds values that are not class ids (0, 1, ...); add encode_labels to data.prepare, "
                "or data.task: regression"]
    return []


def _text_problems(spec: "JobSpec", sample: pa.Table, task: str) -> list[str]:
    columns = sample.column_names
    problems = []
    if "text" not in columns:
        problems.append(f"data.prepare: tokenize_chars reads a `text` column; columns: {columns}")
    if task != "lm":
        label = spec.data.label_column
        if label not in columns:
            problems.append(f"data.label_column: {label!r} is not a column{_close(label, columns)}; columns: {columns}")
        else:
            problems += _label_problems(spec, sample.column(label), task)
    return problems


def _has_gaps(column: pa.ChunkedArray) -> bool:
    """Missing values: nulls, or NaN in a float column (what pandas writes for missing)."""
    import pyarrow.compute as pc

    if column.null_count:
        return True
    return pa.types.is_floating(column.type) and pc.any(pc.is_nan(column)).as_py() is True


def _numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _close(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
