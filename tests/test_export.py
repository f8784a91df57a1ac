"""The exported `model.safetensors` loads back into a fresh instance of the model's class,
shared weights included, and a sharded run exports the same weights as one worker.

Exercised by: pytest tests/test_export.py
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

from orchestrator.run.export import load_weights, write_weights  # noqa: E402
from tests.distributed import make_spec, train_in_processes  # noqa: E402
from tests.ecosystem import GPT2, LLAMA, LM_JOB  # noqa: E402


def _gpt2(vocab_size: int = 256):
    import transformers

    config = transformers.GPT2Config(vocab_size=vocab_size, **GPT2["options"])
    return transformers.GPT2LMHeadModel(config)


def test_tied_weights_are_written_once_and_restored(tmp_path):
    torch.manual_seed(0)
    model = _gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    write_weights(tmp_path / "model.safetensors", model.state_dict())
    loaded = load_weights(tmp_path / "model.safetensors")
    assert loaded.keys() == model.state_dict().keys()
    fresh = _gpt2()
    fresh.load_state_dict(loaded)
    assert fresh.lm_head.weight is fresh.transformer.wte.weight  # still tied
    tokens = torch.randint(0, 256, (2, 12))
    assert torch.equal(fresh(tokens).logits, model(tokens).logits)


def _export(job_model, strategy, workers, prepared, tmp_path):
    spec = make_spec(LM_JOB, model=job_model, strategy=strategy, scaling__workers=workers, train__steps=3)
    train_in_processes(spec, prepared(spec), workers, tmp_path)
    return load_weights(tmp_path / "model.safetensors")


@pytest.mark.parametrize(
    "job_model,strategy,workers",
    [
        (GPT2, {"name": "fsdp"}, 2),
        # slow; gpt2-fsdp keeps a sharded export of the same model in the default tier
        pytest.param(GPT2, {"name": "zero", "stage": 3}, 2, marks=pytest.mark.slow),
        (LLAMA, {"name": "tensor", "tp": 2, "plan": "auto"}, 2),
    ],
    ids=["gpt2-fsdp", "gpt2-zero3", "llama-tensor-auto"],
)
def test_sharded_export_matches_one_worker_and_loads_back(job_model, strategy, workers, prepared, tmp_path):
    reference = _export(job_model, {"name": "ddp"}, 1, prepared, tmp_path / "one")
    sharded = _export(job_model, strategy, workers, prepared, tmp_path / "sharded")
    assert sharded.keys() == reference.keys()
    # Absolute slack: a key bias has no effect on attention, so its gradient is rounding
    # noise that Adam scales up to steps of ~1e-6; every other weight agrees far closer.
    for name in reference:
        torch.testing.assert_close(sharded[name], reference[name], rtol=1e-5, atol=1e-5, msg=name)
    import transformers

    cls = getattr(transformers, job_model["name"].split(":")[1])
    fresh = cls(cls.config_class(vocab_size=256, **job_model["options"]))
    fresh.load_state_dict(sharded)
    one = cls(cls.config_class(vocab_size=256, **job_model["options"]))
    one.load_state_dict(reference)
    tokens = torch.randint(0, 256, (2, 12))
    torch.testing.assert_close(fresh(tokens).logits, one(tokens).logits, rtol=1e-5, atol=1e-5)


def test_training_starts_from_a_local_pretrained_directory(tmp_path):
    """`model.pretrained` loads a `save_pretrained` directory (nothing is downloaded);
    `model.options` still override its config."""
    import transformers

    from orchestrator.training.model import build_job_model

    torch.manual_seed(5)
    saved = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=256, **LLAMA["options"]))
    saved.save_pretrained(tmp_path / "llama")
    job = {**LM_JOB, "model": {"name": LLAMA["name"], "pretrained": "llama", "options": {"rms_norm_eps": 1e-5}}}
    spec = make_spec(job, tmp_path)
    torch.manual_seed(6)  # other random weights, were they drawn
    model = build_job_model(spec, {"input_dim": None, "output_dim": None, "vocab_size": 256, "context": 16})
    assert model.config.rms_norm_eps == 1e-5
    for name, tensor in saved.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    bad = {**job, "model": {**job["model"], "pretrained": "nowhere"}}
    with pytest.raises(Exception, match="model.pretrained"):
        make_spec(bad, tmp_path)


@pytest.mark.e2e
def test_a_model_trained_on_a_users_csv_predicts_labels_from_raw_rows(tmp_path):
    """examples/iris_csv.yaml: text labels encoded, features normalised; model.json carries
    both, so the raw rows of the file go in and species names come out."""
    import csv
    import subprocess
    import sys

    from orchestrator.run.export import Predictor

    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "launch", str(root / "examples/iris_csv.yaml"),
                             "--run-dir", str(tmp_path / "run")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = list(csv.DictReader(open(root / "examples/iris.csv")))
    predictor = Predictor(tmp_path / "run")
    assert predictor.card["label_values"] == ["setosa", "versicolor", "virginica"]
    assert set(predictor.card["normalization"]) == {"sepal_length", "sepal_width", "petal_length", "petal_width"}
    predicted = predictor.predict(rows)
    accuracy = sum(p == row["species"] for p, row in zip(predicted, rows)) / len(rows)
    assert accuracy > 0.9, accuracy
    with pytest.raises(ValueError, match="petal_width"):
        predictor.predict([{k: v for k, v in rows[0].items() if k != "petal_width"}])
