"""A source's input and output sizes, found without Ray (for `plan` and `validate`).

A file source is not read whole: its column names come from the first rows, its
classes from the label column alone (or, for images, the sub-folder names), read file
by file.
"""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import torch

from orchestrator.data.prepare import BYTE_VOCAB, vocabulary_size

if TYPE_CHECKING:
    from orchestrator.config.spec import JobSpec


def model_arguments(spec: "JobSpec") -> dict[str, int | None]:
    """The data-derived arguments the model factory gets (as `PreparedData.model_arguments`)."""
    data = spec.data
    arguments = {"input_dim": None, "output_dim": None, "vocab_size": None, "context": None}
    if {"tokenize", "tokenize_chars"} & set(data.prepare) or data.source == "chars":
        arguments["context"] = spec.source_options.context
        arguments["vocab_size"] = _vocabulary(spec)
        if spec.resolved_task != "lm":
            arguments["output_dim"] = _class_count(spec)
        return arguments
    if data.source == "synthetic":
        options = spec.source_options
        classes = 1 if spec.resolved_task == "regression" else options.classes
        return {**arguments, "input_dim": options.features, "output_dim": classes}
    if data.source == "digits":
        return {**arguments, "input_dim": 64, "output_dim": 10}
    if spec.source_format == "images":
        return {**arguments, "input_dim": image_width(spec), "output_dim": _class_count(spec)}
    from orchestrator.data.inspection import read_sample

    sample, _ = read_sample(spec)
    columns = sample.column_names if sample is not None else []
    features = data.feature_columns or [c for c in columns if c != data.label_column]
    classes = 1 if spec.resolved_task == "regression" else _class_count(spec)
    return {**arguments, "input_dim": len(features), "output_dim": classes}


def image_width(spec: "JobSpec") -> int:
    """Values in one image row: height x width x channels."""
    options = spec.source_options
    return options.size[0] * options.size[1] * (3 if options.mode == "RGB" else 1)


def example_input(spec: "JobSpec", arguments: dict[str, int | None], batch: int) -> torch.Tensor:
    if arguments["context"] is not None:
        return torch.zeros(batch, arguments["context"], dtype=torch.long)
    return torch.zeros(batch, arguments["input_dim"])


def _vocabulary(spec: "JobSpec") -> int:
    if "tokenize" in spec.data.prepare:
        from orchestrator.data.sources import tokenizer_text

        return vocabulary_size(tokenizer_text(spec))
    return BYTE_VOCAB


def _class_count(spec: "JobSpec") -> int:
    """Distinct labels (or, encoded, the largest id + 1), reading the label column only."""
    files = spec.source_files
    if files.format == "images":
        return max(1, len({PurePosixPath(str(f)).parent.name for f in files.files}))
    values = set()
    for batch in _label_batches(spec, files):
        values.update(v for v in batch.to_pylist() if v is not None)
    if not values:
        return 1
    if "encode_labels" in spec.data.prepare or not all(isinstance(v, (int, float)) for v in values):
        return len(values)
    return int(max(values)) + 1


def _label_batches(spec: "JobSpec", files):
    import pyarrow.dataset as pads

    paths, filesystem = files.for_ray()
    kind = {"json": pads.JsonFileFormat(), "csv": pads.CsvFileFormat()}.get(files.format, files.format)
    dataset = pads.dataset(paths, format=kind, filesystem=filesystem)
    if spec.data.label_column not in dataset.schema.names:
        return
    for batch in dataset.to_batches(columns=[spec.data.label_column]):
        yield batch.column(0)
