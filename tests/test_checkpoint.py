"""Checkpoints: atomic, verified, skipped when damaged, and resumed bit for bit, also
at another world size. Real gloo processes, the loop `orchestrator launch` runs.

Exercised by: pytest tests/test_checkpoint.py
"""
from __future__ import annotations

import json
import shutil

import pytest

from orchestrator.training.checkpoint import CheckpointManager, verify
from tests.distributed import (
    assert_bitwise_equal, final_weights, make_spec, read_metrics, train_in_processes, train_with_restarts,
)
from tests.jobs import MLP_JOB

JOB = dict(MLP_JOB, checkpoint={"every_steps": 10, "keep": 3})


@pytest.fixture(scope="module")
def uninterrupted(prepared, tmp_path_factory):
    """The 30-step job at 2 workers, run straight through."""
    spec = make_spec(JOB)
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    train_in_processes(spec, prepared(spec), 2, run_dir)
    return run_dir


def _first_state_file(checkpoint):
    return sorted((checkpoint / "state").glob("*.distcp"))[0]


def _truncate(checkpoint):
    path = _first_state_file(checkpoint)
    path.write_bytes(path.read_bytes()[:-7])


def _flip_bit(checkpoint):
    path = _first_state_file(checkpoint)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_checkpoints_are_committed_with_a_manifest(uninterrupted):
    names = [p.name for p in CheckpointManager.list_checkpoints(uninterrupted)]
    assert names == ["step_00000010", "step_00000020", "step_00000030"]
    for checkpoint in CheckpointManager.list_checkpoints(uninterrupted):
        assert verify(checkpoint) is None
        manifest = json.loads((checkpoint / "manifest.json").read_text())["files"]
        assert "trainer.json" in manifest and "rng/rank_1.pt" in manifest
    assert not list((uninterrupted / "checkpoints").glob(".partial-*"))


@pytest.mark.parametrize("damage", [_truncate, _flip_bit], ids=["truncated", "bit-flipped"])
def test_a_damaged_latest_checkpoint_is_skipped(damage, prepared, uninterrupted, tmp_path, caplog):
    spec = make_spec(JOB, train__steps=20)
    train_in_processes(spec, prepared(spec), 2, tmp_path)
    latest = CheckpointManager.list_checkpoints(tmp_path)[-1]
    damage(latest)
    assert verify(latest) is not None
    # an interrupted save leaves only a .partial directory, which is never loaded
    shutil.copytree(latest, tmp_path / "checkpoints" / ".partial-step_00000025")

    train_in_processes(make_spec(JOB), prepared(spec), 2, tmp_path)
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["checkpoint"] for e in events if e["event"] == "resumed"] == ["step_00000010"]
    assert_bitwise_equal(final_weights(tmp_path), final_weights(uninterrupted))


def test_a_killed_worker_resumes_bit_for_bit(prepared, uninterrupted, tmp_path):
    spec = make_spec(JOB, chaos__kill_worker_at_steps=[15])
    restarts = train_with_restarts(spec, prepared(spec), [2, 2], tmp_path)
    assert restarts == 1 and (tmp_path / "chaos" / "kill_worker_15").exists()
    assert_bitwise_equal(final_weights(tmp_path), final_weights(uninterrupted))


def test_resume_at_another_world_size_continues_the_same_run(prepared, uninterrupted, tmp_path):
    """Saved at 2 workers, resumed at 1: same global batch, same data order, same losses."""
    spec = make_spec(JOB, train__steps=20)
    train_in_processes(spec, prepared(spec), 2, tmp_path)
    one_worker = make_spec(JOB, scaling__workers=1)
    train_in_processes(one_worker, prepared(spec), 1, tmp_path)
    expected = {r["step"]: r["loss"] for r in read_metrics(uninterrupted)}
    resumed = [r for r in read_metrics(tmp_path) if r["world_size"] == 1]
    assert [r["step"] for r in resumed] == list(range(21, 31))
    assert resumed[0]["accumulation"] == 2 * read_metrics(tmp_path)[0]["accumulation"]
    for record in resumed:
        assert record["loss"] == pytest.approx(expected[record["step"]], rel=1e-5)


@pytest.mark.parametrize(
    "strategy,workers",
    [({"name": "zero", "stage": 2}, 2), ({"name": "hybrid", "tp": 2}, 4)],
    ids=["zero2", "hybrid-dp2-tp2"],
)
def test_a_killed_worker_resumes_bit_for_bit_under(strategy, workers, prepared, tmp_path):
    """The same guarantee for sharded and model-parallel state: the restart reloads each
    rank's shards exactly, so the weights end bitwise equal to an uninterrupted run."""
    spec = make_spec(JOB, strategy=strategy, scaling__workers=workers)
    train_in_processes(spec, prepared(spec), workers, tmp_path / "uninterrupted")
    killed = make_spec(JOB, strategy=strategy, scaling__workers=workers, chaos__kill_worker_at_steps=[15])
    assert train_with_restarts(killed, prepared(spec), [workers, workers], tmp_path / "killed") == 1
    assert_bitwise_equal(final_weights(tmp_path / "killed"), final_weights(tmp_path / "uninterrupted"))
