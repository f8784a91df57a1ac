"""The ingestion pipeline: read -> clean -> split -> normalise -> encode -> store.

Files are read and prepared by Ray Data in parallel tasks, and each split is written
once as Parquet shards to the run's storage (store.py): nothing passes through the
driver but counts, statistics and the label vocabulary, all from Ray Data's
aggregations. A built-in source is a small table in this process already; it is
prepared here by the same steps (in_memory.py) and kept as arrays that Ray's object
store hands every worker. Either way, `encode` makes the rows the model reads.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from orchestrator.data import prepare
from orchestrator.data.encode import Encoding, check_columns
from orchestrator.data.in_memory import InMemoryDataset
from orchestrator.data.model_arguments import image_width
from orchestrator.data.prepared import PreparedData
from orchestrator.data.sources import read_source, tokenizer_text

if TYPE_CHECKING:
    from orchestrator.config.spec import JobSpec
    from orchestrator.run.storage import RunPath

__all__ = ["PreparedData", "prepare_data"]


def prepare_data(spec: "JobSpec", data_dir: "RunPath | None" = None) -> PreparedData:
    """Run the job's data pipeline; needs `ray.init` first for a file source. A file
    source's shards go to `data_dir` (the run's `data/`; a new temporary folder if None),
    and a run resumed there finds them prepared already."""
    from orchestrator.data import store

    ds = read_source(spec)
    if isinstance(ds, InMemoryDataset):
        return _prepare(spec, ds, store.in_memory)
    where = store.ShardStore.at(spec, data_dir)
    return where.prepared() or where.publish(_prepare(spec, ds, where.write))


def _prepare(spec: "JobSpec", ds, write) -> PreparedData:
    """The preparation steps, then each split encoded and handed to `write(ds, name, encoding)`."""
    data = spec.data
    task = spec.resolved_task
    label_values: list[Any] = []
    context, vocab = None, prepare.BYTE_VOCAB
    for step in data.prepare:
        if step == "dropna":
            ds = prepare.drop_missing(ds)
        elif step == "encode_labels":
            ds, label_values = prepare.encode_labels(ds, data.label_column)
        elif step == "tokenize_chars":
            context = spec.source_options.context
            ds = prepare.tokenize_chars(ds, context) if task == "lm" else prepare.encode_text(ds, context)
        elif step == "tokenize":
            context, tokenizer = spec.source_options.context, tokenizer_text(spec)
            vocab = prepare.vocabulary_size(tokenizer)
            ds = prepare.tokenize(ds, tokenizer, context, windows=task == "lm")
    ds = prepare.mark_validation(ds, data.validation_fraction, spec.train.seed).materialize()
    train_ds, val_ds = prepare.split(ds)
    # Shards are sized from the rows expected in each split (known once materialized,
    # without running the split): the same layout whenever the same job is prepared.
    rows = ds.count()
    expected = {"train": rows * (1 - data.validation_fraction), "validation": rows * data.validation_fraction}
    write = functools.partial(write, expected=expected)

    if task == "lm":
        encoding = Encoding(task, context=context)
        return PreparedData(write(train_ds, "train", encoding), write(val_ds, "validation", encoding), task,
                            vocab_size=vocab, context=context)

    columns = [c for c in ds.schema().names if c != prepare.SPLIT_COLUMN]
    if context is not None:  # texts, each classified
        check_columns(columns, data.label_column, [])
        encoding = Encoding(task, label=data.label_column, context=context)
        train, validation = write(train_ds, "train", encoding), write(val_ds, "validation", encoding)
        return PreparedData(train, validation, task, output_dim=_classes(ds, data.label_column, label_values),
                            vocab_size=vocab, context=context, label_values=label_values)

    features = data.feature_columns or [c for c in columns if c != data.label_column]
    check_columns(columns, data.label_column, features)
    stats = prepare.fit_normalizer(train_ds, features) if "normalize" in data.prepare else {}
    if stats:
        train_ds, val_ds = prepare.normalize(train_ds, stats), prepare.normalize(val_ds, stats)
    width = image_width(spec) if spec.source_format == "images" else len(features)
    encoding = Encoding(task, label=data.label_column, features=features, width=width)
    train, validation = write(train_ds, "train", encoding), write(val_ds, "validation", encoding)
    output_dim = 1 if task == "regression" else _classes(ds, data.label_column, label_values)
    return PreparedData(
        train, validation, task, input_dim=width, output_dim=output_dim,
        label_values=label_values, normalization=stats, feature_columns=features,
    )


def _classes(ds, label: str, label_values: list) -> int:
    """Encoded labels are 0..k-1 for the k values found; other class ids are counted."""
    return len(label_values) if label_values else prepare.class_count(ds, label)
