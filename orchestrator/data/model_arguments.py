"""A source's input and output sizes, found without Ray (for `plan` and `validate`)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa
import torch

from orchestrator.data.prepare import BYTE_VOCAB
from orchestrator.data.sources import source_options

if TYPE_CHECKING:
    from orchestrator.config.spec import JobSpec


def model_arguments(spec: "JobSpec") -> dict[str, int | None]:
    """The data-derived arguments the model factory gets (as `PreparedData.model_arguments`)."""
    data = spec.data
    if spec.resolved_task == "lm":
        context = source_options("chars", data.options)["context"]
        return {"input_dim": None, "output_dim": None, "vocab_size": BYTE_VOCAB, "context": context}
    if data.source == "synthetic":
        opts = source_options("synthetic", data.options)
        classes = 1 if spec.resolved_task == "regression" else opts["classes"]
        return {"input_dim": opts["features"], "output_dim": classes, "vocab_size": None, "context": None}
    if data.source == "digits":
        return {"input_dim": 64, "output_dim": 10, "vocab_size": None, "context": None}
    table = _read_file(spec)
    label = data.label_column
    features = data.feature_columns or [c for c in table.column_names if c != label]
    labels = table.column(label).drop_null() if label in table.column_names else pa.array([0])
    classes = 1 if spec.resolved_task == "regression" else len(labels.unique())
    if "tokenize_chars" in data.prepare:  # texts, each classified
        context = source_options("chars", data.options)["context"]
        return {"input_dim": None, "output_dim": classes, "vocab_size": BYTE_VOCAB, "context": context}
    return {"input_dim": len(features), "output_dim": classes, "vocab_size": None, "context": None}


def example_input(spec: "JobSpec", arguments: dict[str, int | None], batch: int) -> torch.Tensor:
    if arguments["context"] is not None:
        return torch.zeros(batch, arguments["context"], dtype=torch.long)
    return torch.zeros(batch, arguments["input_dim"])


def _read_file(spec: "JobSpec") -> pa.Table:
    path = str(spec.data_path)
    if spec.data.file_format == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    if spec.data.file_format == "csv":
        import pyarrow.csv as pcsv

        return pcsv.read_csv(path)
    import pyarrow.json as pjson

    return pjson.read_json(path)
