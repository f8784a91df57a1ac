"""Job spec validation and the CLI's handling of bad input: every error names its
key, exits with status 2 and prints no traceback.

Exercised by: pytest tests/test_spec.py
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import JobSpecError
from orchestrator.config.loading import load_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
QUICKSTART = EXAMPLES / "quickstart.yaml"

BAD_INPUTS = [
    # (id, --set overrides, the key the error must name, a phrase it must contain)
    ("unknown-key", ["train.stepz=3"], "train.stepz", "unknown key"),
    ("unknown-section", ["trainer.steps=3"], "trainer", "unknown key"),
    ("wrong-type", ["train.steps=many"], "train.steps", "valid integer"),
    ("negative", ["train.steps=-1"], "train.steps", "greater than 0"),
    ("missing-data-file", ["data.source=nowhere.parquet"], "data.source", "does not exist"),
    ("bad-file-kind", ["data.source=notes.docx"], "data.source", "neither a built-in"),
    ("batch-math", ["train.global_batch_size=48"], "train.global_batch_size", "not divisible"),
    ("batch-math-range", ["scaling.workers=[1, 3]"], "scaling.workers", "counts that fit: 1, 2"),
    ("unknown-model", ["model.name=resnet9000"], "model.name", "registered models"),
    ("unknown-strategy", ["strategy.name=magic"], "strategy.name", "ddp"),
    ("model-path-not-importing", ["model.name=no_such_pkg.models:build"], "model.name", "cannot import"),
    ("model-path-no-attribute", ["model.name=json:no_such_factory"], "model.name", "no_such_factory"),
    ("bad-model-option", ["model.options.widht=3"], "model.options.widht", "hidden"),
    ("min-above-max", ["scaling.workers=[3, 2]"], "scaling.workers", "above max"),
    ("choice", ["optimizer.name=lbfgs"], "optimizer.name", "is not one of sgd, adam, adamw"),
    ("misspelled-key", ["train.stepz=3"], "train.stepz", "did you mean 'steps'?"),
    ("misspelled-section", ["optimzer.lr=0.1"], "optimzer", "did you mean 'optimizer'?"),
    ("misspelled-value", ["optimizer.name=adamm"], "optimizer.name", "did you mean 'adam'?"),
    ("misspelled-list-value", ["data.prepare=[normalise]"], "data.prepare[0]", "did you mean 'normalize'?"),
    ("misspelled-strategy-key", ["strategy.bucket_cap=3"], "strategy.bucket_cap", "did you mean 'bucket_cap_mb'?"),
    ("misspelled-strategy", ["strategy.name=fsdb"], "strategy.name", "did you mean 'fsdp'?"),
    ("misspelled-model", ["model.name=mpl"], "model.name", "did you mean 'mlp'?"),
    ("union-in-user-terms", ["scaling.workers=abc"], "scaling.workers", "expected a whole number or [min, max]"),
    ("conflict", ["optimizer.nesterov=true"], "optimizer.nesterov", "momentum"),
    ("collective-timeout", ["failure.collective_timeout_s=0"], "failure.collective_timeout_s", "greater than 0"),
]


@pytest.mark.parametrize("overrides,key,phrase", [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_names_the_key(overrides, key, phrase):
    with pytest.raises(JobSpecError) as caught:
        load_spec(QUICKSTART, overrides)
    message = str(caught.value)
    assert f"{key}:" in message
    assert phrase in message


@pytest.mark.parametrize("overrides,key", [(c[1], c[2]) for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_cli_validate_exits_2_without_traceback(overrides, key):
    args = ["validate", str(QUICKSTART)]
    for override in overrides:
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert key in result.output
    assert "Traceback" not in result.output


def test_bad_yaml_file(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text("model: [unclosed\n")
    result = CliRunner().invoke(app, ["validate", str(job)])
    assert result.exit_code == 2 and "not valid YAML" in result.output
    # the file, the line and column, the line itself and a caret under the place
    assert f"{job}, line 2, column 1: not valid YAML:" in result.output
    assert result.output.rstrip().endswith("^")


@pytest.mark.parametrize("overrides", [
    ["train.stepz=1", "optimizer.lr=-1"],
    ["train.stepz=1", "model.options.widht=3"],  # the schema's and the model's code's
    ["train.global_batch_size=48", "model.options.widht=3"],  # the batch arithmetic's and the model's
])
def test_every_problem_reported_at_once(overrides):
    with pytest.raises(JobSpecError) as caught:
        load_spec(QUICKSTART, overrides)
    assert len(caught.value.problems) >= 2
    assert all(any(o.split("=")[0] in p for p in caught.value.problems) for o in overrides)


def test_overrides_take_precedence_and_defaults_fill_in(tmp_path):
    spec = load_spec(QUICKSTART, ["train.steps=7", "scaling.workers=[1, 2]"])
    assert spec.train.steps == 7
    assert (spec.scaling.min_workers, spec.scaling.max_workers) == (1, 2)
    assert spec.failure.max_failures == 3  # default, not in quickstart.yaml


def test_user_data_path_is_relative_to_job_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [1.0, 2.0], "label": [0, 1]}), tmp_path / "rows.parquet")
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["data"] = {"source": "rows.parquet"}
    raw["train"].update(global_batch_size=2, micro_batch_size=1)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    spec = load_spec(tmp_path / "job.yaml")
    assert spec.data_path == (tmp_path / "rows.parquet").resolve()


def _optional_package_missing(example: Path) -> str | None:
    """The optional package an example's model needs and this install lacks, if any."""
    import importlib

    module = yaml.safe_load(example.read_text())["model"]["name"].partition(":")[0]
    if "." not in module and module != "transformers":
        return None
    try:
        importlib.import_module(module)
    except Exception as error:  # a missing package, or a build that does not load here
        return f"{module}: {type(error).__name__}"
    return None


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_example_is_valid(example):
    missing = _optional_package_missing(example)
    if missing:
        pytest.skip(f"needs an optional package that does not import here ({missing})")
    load_spec(example)


def test_console_script_exit_status():
    """The installed entry point, as a user runs it (no traceback, status 2)."""
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "validate", str(QUICKSTART), "--set", "model.name=nope"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "model.name" in result.stderr and "Traceback" not in result.stderr


def test_elastic_range_skips_counts_the_layout_cannot_take():
    """tensor 2: 3 workers cannot host the layout, so the controller never uses 3; 2 and 4 fit."""
    spec = load_spec(QUICKSTART, ["strategy={name: hybrid, tp: 2}", "scaling.workers=[2, 4]",
                                  "train.micro_batch_size=16"])
    assert spec.scaling.max_workers == 4
    with pytest.raises(JobSpecError, match="counts that fit: 2, 4$"):  # 6: 3 ranks x 32 > 64
        load_spec(QUICKSTART, ["strategy={name: hybrid, tp: 2}", "scaling.workers=[2, 6]"])


def test_a_job_is_read_without_torch_and_its_model_checked_after():
    """`read_spec` checks all but the model's code without importing torch (so `launch`
    starts Ray meanwhile); `check_model` then finds what only the model's code can say."""
    script = (
        "import sys\n"
        "from orchestrator.config.loading import check_model, read_spec\n"
        "from orchestrator.errors import JobSpecError\n"
        f"spec = read_spec({str(QUICKSTART)!r}, ['model.options.widht=3'])\n"
        "assert 'torch' not in sys.modules, 'reading the job imported torch'\n"
        "try:\n"
        "    check_model(spec)\n"
        "except JobSpecError as error:\n"
        "    print(error.problems)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model.options.widht" in result.stdout
