"""`orchestrator verify`: a layout that changes the math is caught and its tensors named;
a correct one passes. The layouts run as real gloo processes; the reference is the
loop itself under the sequential strategy, in this process.

Exercised by: pytest tests/test_verify.py
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.verify.compare import compare_runs
from orchestrator.verify.layouts import reference_spec, trimmed
from orchestrator.verify.reference import run_reference
from orchestrator.verify.runner import _facts
from tests.distributed import make_spec, train_in_processes
from tests.jobs import GPT_JOB, MLP_JOB

ROOT = Path(__file__).resolve().parent.parent
STEPS = 3


def _verify(job: dict, strategy: dict, workers: int, prepared, tmp_path):
    spec = make_spec(job)
    reference = reference_spec(spec, STEPS)
    run_reference(reference, prepared(reference), tmp_path / "reference")
    layout = trimmed(spec, STEPS, strategy, workers)
    train_in_processes(layout, prepared(layout), workers, tmp_path / "layout")
    return compare_runs(tmp_path / "reference", tmp_path / "layout", 1e-5, _facts(layout))


def test_a_correct_layout_passes(prepared, tmp_path):
    result = _verify(MLP_JOB, {"name": "tensor", "tp": 2}, 2, prepared, tmp_path)
    assert result.passed(), result
    assert result.loss_deviation < 1e-6 and result.grad_norm_deviation < 1e-5


def test_a_shared_weight_split_on_one_side_is_caught(prepared, tmp_path):
    job = {**GPT_JOB, "model": {"name": "tests.verify_models:tied_decoder", "options": {"width": 32}}}
    result = _verify(job, {"name": "tensor", "tp": 2, "plan": "model"}, 2, prepared, tmp_path)
    assert not result.passed()
    assert result.worst_parameter in ("embed.weight", "out.weight")
    assert any("shared with" in entry and "split by the tensor plan" in entry for entry in result.differing)


def test_a_plan_that_ignores_an_operation_between_its_pair_is_caught(prepared, tmp_path):
    job = {**MLP_JOB, "model": {"name": "tests.verify_models:split_across_softmax", "options": {}}}
    result = _verify(job, {"name": "tensor", "tp": 2, "plan": "model"}, 2, prepared, tmp_path)
    assert not result.passed()
    assert result.first_divergent_step == 1  # the very first loss already differs


def test_a_buffer_changed_in_forward_is_caught_by_name(prepared, tmp_path):
    job = {**MLP_JOB, "model": {"name": "tests.verify_models:unsynchronised_buffer", "options": {}}}
    result = _verify(job, {"name": "ddp"}, 2, prepared, tmp_path)
    assert result.first_divergent_step is None  # the losses agree...
    assert not result.passed()  # ...the buffer does not
    assert result.worst_parameter == "1.mean"
    assert "a buffer" in result.differing[0]


@pytest.mark.e2e
def test_verify_command_exits_2_naming_the_layout_and_tensor(tmp_path):
    job = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    job["model"] = {"name": "tests.verify_models:unsynchronised_buffer", "options": {}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    result = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "verify", str(tmp_path / "job.yaml"), "--strategies", "ddp"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "ddp: differs from the sequential reference" in result.stdout
    assert "1.mean" in result.stdout and "a buffer" in result.stdout
    assert "Traceback" not in result.stderr
