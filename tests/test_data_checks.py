"""Realistic mistakes in a job and its data, caught by `validate` before anything starts,
and by `launch` at the same point: exit 2, the key named, no traceback, no Ray.

The data checks (orchestrator/data/inspection.py) read the file's schema and first rows
with pyarrow; the cases are what a user gets wrong with their own CSV.

Exercised by: pytest tests/test_data_checks.py
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli.commands import app

ROOT = Path(__file__).resolve().parent.parent
IRIS = (ROOT / "examples/iris.csv").read_text()
JOB = (ROOT / "examples/iris_csv.yaml").read_text()

# (id, files to write beside the job {name: text}, --set overrides, the key the message names)
MISTAKES = [
    ("label-typo", {}, ["data.label_column=specie"], "data.label_column: 'specie' is not a column (did you mean 'species'?)"),
    ("feature-typo", {}, ["data.feature_columns=[sepal_length,petal_lenght]"], "did you mean 'petal_length'?"),
    ("text-feature", {}, ["data.feature_columns=[sepal_length,species]"], "data.feature_columns: ['species'] are not numbers"),
    ("text-labels-unencoded", {}, ["data.prepare=[normalize]"], "add encode_labels to data.prepare"),
    ("missing-values", {"iris.csv": IRIS.replace("5.1,3.5,1.4,0.2", "5.1,,1.4,0.2", 1)},
     ["data.prepare=[encode_labels]"], "have missing values; add dropna"),
    ("lm-on-a-table", {}, ["data.task=lm"], "data.task: lm needs text"),
    ("regression-on-text-labels", {}, ["data.task=regression"], "not numbers a regression can fit"),
    ("fractional-class-ids", {"iris.csv": "a,b,label\n1,2,0.5\n3,4,1.5\n"},
     ["data.prepare=[normalize]", "data.label_column=label"], "not class ids"),
    ("negative-class-ids", {"iris.csv": "a,b,label\n1,2,-1\n3,4,1\n"},
     ["data.prepare=[normalize]", "data.label_column=label"], "not class ids"),
    ("options-on-a-csv", {}, ["data.options={samples: 3}"], "data.options.samples: unknown option"),
    ("synthetic-option-typo", {}, ["data.source=synthetic", "data.options={sample: 300}", "data.label_column=label",
                                   "data.prepare=[normalize]"], "did you mean 'samples'?"),
    ("chars-option-typo", {}, ["data.source=chars", "data.options={contex: 32}", "data.prepare=[tokenize_chars]",
                               "model.name=gpt", "model.options={}"], "did you mean 'context'?"),
    ("digits-label-column", {}, ["data.source=digits", "data.label_column=target", "data.prepare=[normalize]"],
     "data.label_column: digits has the column 'label'"),
    ("no-such-file", {}, ["data.source=irsi.csv"], "data.source: file"),
    ("not-a-data-file", {"notes.docx": "hello"}, ["data.source=notes.docx"], "neither a built-in source"),
    ("not-a-csv", {"iris.csv": "\x00\x01\x02,\"\n\"\"x"}, [], "data.source: cannot read"),
    ("tokenize-without-text", {}, ["data.prepare=[encode_labels, tokenize_chars]"], "tokenize_chars reads a `text` column"),
    ("misspelled-key", {}, ["train.stepz=3"], "train.stepz: unknown key; did you mean 'steps'?"),
    ("misspelled-section", {}, ["optimzer.lr=0.1"], "optimzer: unknown key; did you mean 'optimizer'?"),
    ("workers-not-a-number", {}, ["scaling.workers=two"], "scaling.workers: expected a whole number or [min, max]"),
    ("optimizer-typo", {}, ["optimizer.name=adamm"], "optimizer.name: 'adamm' is not one of"),
    ("prepare-typo", {}, ["data.prepare=[normalise]"], "did you mean 'normalize'?"),
    ("strategy-key-typo", {}, ["strategy.bucket_cap=25"], "strategy.bucket_cap: unknown key; did you mean 'bucket_cap_mb'?"),
    ("model-typo", {}, ["model.name=mpl"], "model.name: unknown model 'mpl'; did you mean 'mlp'?"),
    ("batch-does-not-divide", {}, ["scaling.workers=3"], "train.global_batch_size"),
]


@pytest.fixture
def job_dir(tmp_path):
    (tmp_path / "iris.csv").write_text(IRIS)
    (tmp_path / "job.yaml").write_text(JOB)
    return tmp_path


def _args(job_dir: Path, overrides: list[str]) -> list[str]:
    return [str(job_dir / "job.yaml"), *[a for o in overrides for a in ("--set", o)]]


@pytest.mark.parametrize("files,overrides,phrase", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_validate_and_launch_refuse_the_mistake_before_anything_starts(files, overrides, phrase, job_dir):
    import ray

    for name, text in files.items():
        (job_dir / name).write_text(text)
    ray_before = ray.is_initialized()  # another test's Ray may be up in this process
    started = time.monotonic()
    checked = CliRunner().invoke(app, ["validate", *_args(job_dir, overrides)])
    took = time.monotonic() - started
    assert checked.exit_code == 2, checked.output
    assert phrase in checked.output and "Traceback" not in checked.output, checked.output
    assert took < 5, f"validate took {took:.1f} s"

    arenas = os.environ.get("MALLOC_ARENA_MAX")  # which a run on the host sets (training/allocator.py)
    launched = CliRunner().invoke(app, ["launch", *_args(job_dir, overrides), "--run-dir", str(job_dir / "run")])
    assert launched.exit_code == 2 and phrase in launched.output, launched.output
    assert ray.is_initialized() == ray_before and not (job_dir / "run").exists()
    assert os.environ.get("MALLOC_ARENA_MAX") == arenas  # the run's variables left with its Ray


def test_there_are_at_least_twenty_mistakes():
    assert len(MISTAKES) >= 20


def test_the_unchanged_job_is_valid(job_dir):
    result = CliRunner().invoke(app, ["validate", str(job_dir / "job.yaml")])
    assert result.exit_code == 0, result.output


def test_a_gpu_job_on_a_machine_without_one_is_warned_by_validate_and_refused_by_launch(job_dir):
    import ray
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    ray_before = ray.is_initialized()
    checked = CliRunner().invoke(app, ["validate", *_args(job_dir, ["scaling.use_gpu=true"])])
    assert checked.exit_code == 0 and "warning: scaling.use_gpu: true, and this machine has no GPU" in checked.output
    launched = CliRunner().invoke(app, ["launch", *_args(job_dir, ["scaling.use_gpu=true"]),
                                        "--run-dir", str(job_dir / "run")])
    assert launched.exit_code == 2 and "this machine has no GPU" in launched.output, launched.output
    assert ray.is_initialized() == ray_before and not (job_dir / "run").exists()
