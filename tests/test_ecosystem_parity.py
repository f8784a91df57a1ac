"""Models from the ecosystem under every strategy, against the 1-worker run of the same
job: per-step losses within 1e-5 relative over 10 steps, and the final validation loss;
or refused by validate, naming the strategy and why.

The default tier runs a case for each model not trained by tests/test_export.py; `-m slow` runs the whole matrix.

Exercised by: pytest tests/test_ecosystem_parity.py -m "slow or not slow"
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from orchestrator.errors import JobSpecError  # noqa: E402
from tests.distributed import make_spec, train_in_processes  # noqa: E402
from tests.ecosystem import (  # noqa: E402
    BERT, GPT2, IMAGE_JOB, LLAMA, LM_JOB, TEXT_JOB, TORCHVISION_JOB, write_text_classes,
)

RELATIVE_TOLERANCE = 1e-5
STRATEGIES = {
    "ddp": ({"name": "ddp"}, 2),
    "zero1": ({"name": "zero", "stage": 1}, 2),
    "zero2": ({"name": "zero", "stage": 2}, 2),
    "zero3": ({"name": "zero", "stage": 3}, 2),
    "fsdp": ({"name": "fsdp"}, 2),
    "tensor-auto": ({"name": "tensor", "tp": 2, "plan": "auto"}, 2),
    "hybrid-dp2-tp2": ({"name": "hybrid", "tp": 2, "plan": "auto"}, 4),
}
JOBS = {
    "llama": {**LM_JOB, "model": LLAMA},
    "gpt2": {**LM_JOB, "model": GPT2},
    "bert": TEXT_JOB,
    "resnet": IMAGE_JOB,
    "torchvision": TORCHVISION_JOB,
}
# Skipped where torchvision does not import (PyPI's build needs the torch it was built for).
NEEDS = {"torchvision": "torchvision"}
# Refused by validate: the reason is in the message.
REFUSED = {
    ("gpt2", "tensor-auto"): "Conv1D",
    ("gpt2", "hybrid-dp2-tp2"): "Conv1D",
}
# BatchNorm's running statistics, used in evaluation, are updated by each rank from its own
# micro-batches: no data-parallel layout reproduces the sequential run's sequence of
# updates, so only the training losses (batch statistics) are compared for these models.
RUNNING_STATISTICS = {"resnet", "torchvision"}
# tests/test_export.py already runs GPT-2 under zero3 and Llama under tensor auto by default.
# One fsdp transformer (llama's layouts are in test_hf_pipeline.py and test_export.py), a
# zero CNN, and torchvision where it imports.
DEFAULT_TIER = {("bert", "fsdp"), ("resnet", "zero2"), ("torchvision", "fsdp")}


def _cases():
    for model in JOBS:
        for strategy in STRATEGIES:
            if (model, strategy) in REFUSED:
                continue
            marks = () if (model, strategy) in DEFAULT_TIER else (pytest.mark.slow,)
            if model in NEEDS and not _imports(NEEDS[model]):
                marks += (pytest.mark.skip(reason=f"{NEEDS[model]} does not import here"),)
            yield pytest.param(model, strategy, id=f"{model}-{strategy}", marks=marks)


def _imports(module: str) -> bool:
    try:
        __import__(module)
    except Exception:  # not installed, or built for another torch
        return False
    return True


def _spec(model: str, strategy: dict, workers: int, base_dir):
    return make_spec(JOBS[model], base_dir, strategy=strategy, scaling__workers=workers)


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("texts")
    write_text_classes(folder / "texts.jsonl")
    return folder


_references: dict[str, list[dict]] = {}


def _reference(model: str, prepared, text_dir, tmp_root) -> list[dict]:
    if model not in _references:
        spec = _spec(model, {"name": "ddp"}, 1, text_dir)
        _references[model] = train_in_processes(spec, prepared(spec), 1, tmp_root / f"reference-{model}")
    return _references[model]


@pytest.mark.parametrize("model,strategy", list(_cases()))
def test_ecosystem_model_matches_one_worker(model, strategy, prepared, text_dir, tmp_path_factory):
    options, workers = STRATEGIES[strategy]
    expected = _reference(model, prepared, text_dir, tmp_path_factory.getbasetemp())
    spec = _spec(model, options, workers, text_dir)
    records = train_in_processes(spec, prepared(spec), workers, tmp_path_factory.mktemp(f"{model}-{strategy}"))
    assert len(records) == len(expected) == JOBS[model]["train"]["steps"]
    for step, (got, want) in enumerate(zip(records, expected), start=1):
        assert got["loss"] == pytest.approx(want["loss"], rel=RELATIVE_TOLERANCE), f"step {step}"
    if model in RUNNING_STATISTICS:
        return
    assert records[-1]["val_loss"] == pytest.approx(expected[-1]["val_loss"], rel=RELATIVE_TOLERANCE, abs=1e-6)


@pytest.mark.parametrize("model,strategy", sorted(REFUSED), ids=[f"{m}-{s}" for m, s in sorted(REFUSED)])
def test_layouts_that_cannot_split_the_model_are_refused(model, strategy, text_dir):
    options, workers = STRATEGIES[strategy]
    with pytest.raises(JobSpecError) as caught:
        make_spec(JOBS[model], text_dir, strategy=options, scaling__workers=workers)
    message = str(caught.value)
    assert "strategy." in message and REFUSED[(model, strategy)] in message
    assert "ddp, zero or fsdp" in message


def test_texts_become_token_ids_and_classes(prepared, text_dir):
    spec = _spec("bert", {"name": "ddp"}, 1, text_dir)
    data = prepared(spec)
    assert data.context == 24 and data.vocab_size == 256 and data.output_dim == 3
    inputs, targets = data.train.take(np.arange(len(data.train)))
    assert inputs.shape[1] == 24 and inputs.dtype.kind == "i"
    assert set(targets.tolist()) == {0, 1, 2}
    assert json.dumps(sorted(data.label_values)) == json.dumps(["code", "number", "word"])
