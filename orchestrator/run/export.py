"""The final weights of a run, `model.safetensors`, and how to load them back.

Safetensors refuses two names on one storage, and models share weights (a decoder's
input embedding and output layer, tied). Each storage is written once, under its first
name; the other names are recorded as aliases in the file's metadata and restored by
`load_weights`, so the state dict loads into a fresh instance of the model's class:

    from orchestrator.run.export import load_weights
    model.load_state_dict(load_weights("runs/x/model.safetensors"))

Beside the weights, `model.json` says what serving needs to turn raw rows into the
model's inputs and its outputs back into labels: the model and its options, the input
columns in order, their normalisation, the label values. `Predictor` does both:

    from orchestrator.run.export import Predictor
    Predictor("runs/x").predict([{"sepal_length": 5.1, ...}])   # -> ["setosa"]

Exercised by: pytest tests/test_export.py
"""
from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from orchestrator.run.storage import ObjectPath, run_path

ALIASES_KEY = "aliases"


def write_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Write `state` (name -> tensor); names whose tensor shares another's storage are aliases."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first_of: dict[tuple, str] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()), tensor.dtype)
        if key in first_of and tensor.numel() > 0:
            aliases[name] = first_of[key]
            continue
        first_of[key] = name
        tensors[name] = tensor.contiguous().clone() if _shares_storage(tensor, tensors) else tensor.contiguous()
    with _local_copy(path, upload=True) as local:
        save_file(tensors, str(local), metadata={ALIASES_KEY: json.dumps(aliases)})


@contextlib.contextmanager
def _local_copy(path, upload: bool) -> Iterator[Path]:
    """`path` itself when local; for an object, a temporary local file: uploaded after
    the block (`upload`), or holding the object's download during it."""
    if not isinstance(path, ObjectPath):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="orchestrator-weights-") as folder:
        local = Path(folder) / path.name
        if not upload:
            path.download(local)
        yield local
        if upload:
            path.upload(local)


def _shares_storage(tensor: torch.Tensor, written: dict[str, torch.Tensor]) -> bool:
    """Another view of a written tensor's storage (not the same view): safetensors refuses it."""
    pointer = tensor.untyped_storage().data_ptr()
    return any(t.untyped_storage().data_ptr() == pointer for t in written.values())


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Every name the model had, aliases pointing at the tensor they share."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = run_path(path)
    with _local_copy(path, upload=False) as local:
        tensors = load_file(str(local))
        with safe_open(str(local), framework="pt") as handle:
            metadata = handle.metadata() or {}
    for alias, name in json.loads(metadata.get(ALIASES_KEY, "{}")).items():
        tensors[alias] = tensors[name]
    return tensors


def write_model_card(path, spec, data) -> None:
    """`model.json` for a run of `spec` on `data` (a PreparedData)."""
    from orchestrator.run.files import atomic_write_text

    card = {
        "weights": "model.safetensors",
        "model": {"name": spec.model.name, "options": spec.model.options,
                  "input_shape": spec.model.input_shape},
        "task": data.task,
        "arguments": data.model_arguments(),
        "features": data.feature_columns,
        "label_column": spec.data.label_column,
        "label_values": data.label_values,
        "normalization": {column: {"mean": mean, "std": std} for column, (mean, std) in data.normalization.items()},
    }
    atomic_write_text(path, json.dumps(card, indent=2, default=str))


class Predictor:
    """The trained model of a finished run, taking raw rows (column -> value, as in the
    training file) and giving labels (classification) or values (regression)."""

    def __init__(self, run_dir) -> None:
        from orchestrator.run.files import RunFiles, read_json

        files = RunFiles(run_dir)
        card = read_json(files.model_card)
        if card is None:
            raise FileNotFoundError(f"{files.model_card}: no model.json; the run has not finished")
        self.card = card
        self.model = self._build(card)
        self.model.load_state_dict(load_weights(files.weights))
        self.model.eval()

    @staticmethod
    def _build(card: dict):
        import models

        spec = card["model"]
        shape = spec.get("input_shape")
        return models.build_model(spec["name"], spec["options"], **card["arguments"], pretrained=None,
                                  input_shape=None if shape is None else tuple(shape))

    def inputs(self, rows: list[dict]) -> torch.Tensor:
        """Rows as the model's input tensor: the feature columns in order, normalised."""
        features, stats = self.card["features"], self.card["normalization"]
        if not features:
            raise ValueError("this model does not take tabular rows (its task is " f"{self.card['task']})")
        missing = sorted({c for row in rows for c in features if c not in row})
        if missing:
            raise ValueError(f"rows lack the model's input columns {missing}")
        values = torch.tensor([[float(row[c]) for c in features] for row in rows], dtype=torch.float32)
        for index, column in enumerate(features):
            if column in stats:
                values[:, index] = (values[:, index] - stats[column]["mean"]) / stats[column]["std"]
        return values

    @torch.no_grad()
    def predict(self, rows: list[dict]) -> list:
        outputs = self.model(self.inputs(rows))
        if self.card["task"] == "regression":
            return outputs.reshape(-1).tolist()
        classes = outputs.argmax(dim=-1).tolist()
        labels = self.card["label_values"]
        return [labels[c] for c in classes] if labels else classes
