"""`orchestrator verify`: a layout that changes the math is caught and its tensors named;
a correct one passes. The layouts run as real gloo processes; the reference is the
loop itself under the sequential strategy, in this process.

Exercised by: pytest tests/test_verify.py
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.run.records import EventLog
from orchestrator.verify.check import Reference
from orchestrator.verify.preflight import check_reason, launch_check
from orchestrator.verify.reference import run_reference
from tests.distributed import make_spec, train_in_processes
from tests.jobs import ADAMW, GPT_JOB, MLP_JOB

ROOT = Path(__file__).resolve().parent.parent
STEPS = 3


def _verify(job: dict, strategy: dict, workers: int, prepared, tmp_path):
    reference = Reference(make_spec(job), STEPS, tmp_path, rtol=1e-5)
    reference.run(lambda spec, run_dir: run_reference(spec, prepared(spec), run_dir))
    check = reference.check(strategy["name"], strategy, workers,
                            lambda spec, run_dir: train_in_processes(spec, prepared(spec), workers, run_dir))
    assert check.refused is None and check.error is None, check
    return check.comparison


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


def test_a_tensor_that_only_rounding_noise_moves_is_held_to_that_noise(prepared, tmp_path):
    """Adam turns the rounding noise of a gradient that is mathematically zero into whole
    steps, in any layout and in a reordered sequential run alike: no failure for that."""
    job = {**MLP_JOB, "model": {"name": "tests.verify_models:zero_gradient_shift", "options": {}},
           "optimizer": ADAMW}
    result = _verify(job, {"name": "ddp"}, 2, prepared, tmp_path)
    assert result.passed(), result
    assert result.noisy == ["3.shift"] and result.worst_parameter != "3.shift"


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


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_launch_checks_a_model_it_has_not_seen_under_a_layout_that_changes_the_math():
    user = {**MLP_JOB, "model": {"name": "tests.user_models:linear_stack", "options": {"width": 32}}}
    assert check_reason(make_spec({**user, "strategy": {"name": "fsdp"}})) is not None
    assert check_reason(make_spec({**user, "strategy": {"name": "zero", "stage": 3}})) is not None
    assert check_reason(make_spec({**user, "strategy": {"name": "tensor", "tp": 2, "plan": "auto"}})) is not None
    # Layouts that compute as one process does, and the built-in models the suite proves:
    assert check_reason(make_spec({**user, "strategy": {"name": "ddp"}})) is None
    assert check_reason(make_spec({**user, "strategy": {"name": "zero", "stage": 2}})) is None
    assert check_reason(make_spec({**MLP_JOB, "strategy": {"name": "fsdp"}})) is None
    # strategy.verify decides when it is set:
    assert check_reason(make_spec({**user, "strategy": {"name": "fsdp", "verify": False}})) is None
    assert check_reason(make_spec({**MLP_JOB, "strategy": {"name": "ddp", "verify": True}})) is not None


def test_a_resumed_run_does_not_repeat_a_check_that_passed(tmp_path):
    spec = make_spec({**MLP_JOB, "strategy": {"name": "ddp", "verify": True}})
    assert launch_check(spec, tmp_path, print) is not None
    EventLog(tmp_path).write("verify", layout="ddp", passed=True)
    assert launch_check(spec, tmp_path, print) is None


@pytest.mark.e2e
def test_launch_stops_before_step_1_when_the_layout_changes_the_math(tmp_path):
    job = {**GPT_JOB, "model": {"name": "tests.verify_models:tied_decoder", "options": {"width": 32}},
           "strategy": {"name": "tensor", "tp": 2, "plan": "model"}, "train": {**GPT_JOB["train"], "steps": 5}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    run_dir = tmp_path / "run"
    result = _cli("launch", str(tmp_path / "job.yaml"), "--run-dir", str(run_dir))
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "verify: FAIL" in result.stdout
    assert "nothing was trained" in result.stderr and "first divergent step" in result.stderr
    assert "shared with" in result.stderr and "split by the tensor plan" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (run_dir / "metrics.jsonl").exists()  # not one training step
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["verify"]["passed"] is False
    assert summary["verify"]["worst_parameter"] in ("embed.weight", "out.weight")
    assert (run_dir / "verify" / "reference").is_dir()  # kept, to look into


@pytest.mark.e2e
def test_launch_checks_then_trains_on_the_same_workers(tmp_path):
    job = {**MLP_JOB, "model": {"name": "tests.user_models:linear_stack", "options": {"width": 32}},
           "strategy": {"name": "fsdp"}, "train": {**MLP_JOB["train"], "steps": 6}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    run_dir = tmp_path / "run"
    result = _cli("launch", str(tmp_path / "job.yaml"), "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "verify: pass" in result.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 6
    assert summary["verify"]["passed"] and summary["verify"]["loss_deviation"] < 1e-5
    assert not (run_dir / "verify").exists()  # a passed check leaves nothing behind


def test_verify_options_make_the_check_a_smaller_instance_of_the_model(tmp_path):
    job = {**GPT_JOB, "strategy": {"name": "fsdp", "verify_options": {"depth": 1}}}
    reference = Reference(make_spec(job), STEPS, tmp_path)
    assert reference.spec.model.options["depth"] == 1
    whole = Reference(make_spec({**job, "strategy": {"name": "fsdp"}}), STEPS, tmp_path)
    assert sum(p.numel() for p in reference.meta_model.parameters()) < \
        sum(p.numel() for p in whole.meta_model.parameters())


class _TinyWorkers:
    """Workers with too little memory for the whole model: the check must not run."""

    def world_size(self) -> int:
        return 2

    def memory_bytes(self) -> dict:
        return {"device": 1024, "host": 2048}

    def run_alone(self, spec, run_dir, on_host=False) -> None:
        raise AssertionError("the reference must not run")

    run_together = run_alone


def test_a_model_too_large_for_one_worker_skips_the_check_loudly(tmp_path):
    from orchestrator.verify.preflight import LaunchCheck

    spec = make_spec({**GPT_JOB, "strategy": {"name": "fsdp", "verify": True}})
    said = []
    LaunchCheck(spec, tmp_path, "strategy.verify: true", said.append)(_TinyWorkers())
    assert any("SKIPPED" in line and "strategy.verify_options" in line for line in said)
    [event] = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert event["event"] == "verify" and not event["passed"] and "skipped" in event
