"""The ingestion pipeline: read -> clean -> split -> normalise -> arrays in Ray's object store.

Ray Data does the reading and the transforms in parallel tasks before the
workers reserve their CPUs. The prepared splits are put once into the object
store; every worker maps them without copying and reads only its own rows of
each global batch (see `orchestrator.data.sampler`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.data import prepare
from orchestrator.data.sources import read_source, source_options
from orchestrator.errors import DataError

if TYPE_CHECKING:
    import ray.data

    from orchestrator.config.spec import JobSpec


@dataclass
class Split:
    inputs: np.ndarray  # float32 (N, features) or int64 (N, context) token ids
    targets: np.ndarray  # int64 (N,) class ids, float32 (N,) values, or int64 (N, context)

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class PreparedData:
    train: Split
    validation: Split
    task: str
    input_dim: int | None = None
    output_dim: int | None = None
    vocab_size: int | None = None
    context: int | None = None
    label_values: list[Any] = field(default_factory=list)
    normalization: dict[str, tuple[float, float]] = field(default_factory=dict)
    feature_columns: list[str] = field(default_factory=list)  # the model's inputs, in order

    def model_arguments(self) -> dict[str, int | None]:
        """The data-derived arguments a model factory may take."""
        return {
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "vocab_size": self.vocab_size,
            "context": self.context,
        }

    def describe(self) -> str:
        return (
            f"{len(self.train)} training and {len(self.validation)} validation samples, "
            f"task {self.task}"
        )


def prepare_data(spec: "JobSpec") -> PreparedData:
    """Run the job's data pipeline on Ray Data; needs `ray.init` first."""
    data = spec.data
    task = spec.resolved_task
    ds = read_source(spec)
    label_values: list[Any] = []
    context = None
    for step in data.prepare:
        if step == "dropna":
            ds = prepare.drop_missing(ds)
        elif step == "encode_labels":
            ds, label_values = prepare.encode_labels(ds, data.label_column)
        elif step == "tokenize_chars":
            context = source_options("chars", data.options)["context"]
            ds = prepare.tokenize_chars(ds, context) if task == "lm" else prepare.encode_text(ds, context)
    ds = prepare.mark_validation(ds, data.validation_fraction, spec.train.seed).materialize()
    train_ds, val_ds = prepare.split(ds)

    if task == "lm":
        train, validation = _token_split(train_ds), _token_split(val_ds)
        return PreparedData(train, validation, task, vocab_size=prepare.BYTE_VOCAB, context=context)

    if context is not None:  # texts, each classified
        train = _text_split(train_ds, data.label_column)
        validation = _text_split(val_ds, data.label_column)
        return PreparedData(train, validation, task, output_dim=_classes(train, validation),
                            vocab_size=prepare.BYTE_VOCAB, context=context, label_values=label_values)

    features = _feature_columns(spec, ds)
    stats = prepare.fit_normalizer(train_ds, features) if "normalize" in data.prepare else {}
    if stats:
        train_ds, val_ds = prepare.normalize(train_ds, stats), prepare.normalize(val_ds, stats)
    train = _tabular_split(train_ds, features, data.label_column, task)
    validation = _tabular_split(val_ds, features, data.label_column, task)
    output_dim = 1 if task == "regression" else _classes(train, validation)
    return PreparedData(
        train, validation, task, input_dim=len(features), output_dim=output_dim,
        label_values=label_values, normalization=stats, feature_columns=features,
    )


def _feature_columns(spec: "JobSpec", ds: "ray.data.Dataset") -> list[str]:
    columns = [c for c in ds.schema().names if c != prepare.SPLIT_COLUMN]
    label = spec.data.label_column
    if label not in columns:
        raise DataError(f"data.label_column: {label!r} is not a column; columns: {columns}")
    features = spec.data.feature_columns or [c for c in columns if c != label]
    missing = [c for c in features if c not in columns]
    if missing:
        raise DataError(f"data.feature_columns: {missing} not in the data; columns: {columns}")
    return features


def _tabular_split(ds: "ray.data.Dataset", features: list[str], label: str, task: str) -> Split:
    frame = ds.to_pandas()
    try:
        inputs = frame[features].to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise DataError(
            f"data.feature_columns: features must be numeric ({error}); "
            "drop text columns with data.feature_columns or add data.prepare steps"
        ) from error
    if np.isnan(inputs).any():
        raise DataError("data: features contain missing values; add `dropna` to data.prepare")
    target_dtype = np.float32 if task == "regression" else np.int64
    try:
        targets = frame[label].to_numpy(dtype=target_dtype)
    except (TypeError, ValueError) as error:
        raise DataError(
            f"data.label_column: {label!r} values are not {task} targets ({error}); "
            "add `encode_labels` to data.prepare"
        ) from error
    return Split(np.ascontiguousarray(inputs), targets)


def _classes(train: Split, validation: Split) -> int:
    return int(max(train.targets.max(initial=0), validation.targets.max(initial=0)) + 1)


def _text_split(ds: "ray.data.Dataset", label: str) -> Split:
    frame = ds.to_pandas()
    if label not in frame.columns:
        raise DataError(f"data.label_column: {label!r} is not a column; columns: {list(frame.columns)}")
    tokens = np.stack(frame["tokens"].to_list()) if len(frame) else np.zeros((0, 1), dtype=np.int64)
    try:
        targets = frame[label].to_numpy(dtype=np.int64)
    except (TypeError, ValueError) as error:
        raise DataError(
            f"data.label_column: {label!r} values are not class ids ({error}); add `encode_labels` to data.prepare"
        ) from error
    return Split(np.ascontiguousarray(tokens), targets)


def _token_split(ds: "ray.data.Dataset") -> Split:
    frame = ds.to_pandas()
    tokens = np.stack(frame["tokens"].to_list()) if len(frame) else np.zeros((0, 2), dtype=np.int64)
    return Split(np.ascontiguousarray(tokens[:, :-1]), np.ascontiguousarray(tokens[:, 1:]))
