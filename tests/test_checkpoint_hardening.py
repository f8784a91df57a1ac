"""A checkpoint is data, never code; a malformed one is invalid, never an exception; pruning
keeps the newest valid checkpoints, in step order, whatever their names sort as.

One process, no process group: CheckpointManager with a strategy that writes a file.

Exercised by: pytest tests/test_checkpoint_hardening.py
"""
from __future__ import annotations

import json
import os
import pickle
import shutil

import pytest
import torch

from orchestrator.training import manifest
from orchestrator.training.checkpoint import CheckpointManager, TrainerState
from orchestrator.training.manifest import write_manifest


def _state(step: int) -> TrainerState:
    return TrainerState(step=step, world_size=1, dp_size=1, samples_seen=step * 4)


def _save(manager: CheckpointManager, step: int):
    def write_state(directory):
        directory.mkdir(parents=True, exist_ok=True)
        torch.save({"w": torch.full((4,), float(step))}, directory / "model.pt")

    return manager.save(_state(step), write_state)


class RunsAShellCommand:
    """Unpickling this runs `touch <marker>`: what a crafted checkpoint file would do."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture
def checkpoint(tmp_path):
    manager = CheckpointManager(tmp_path, keep=3, rank=0, world_size=1)
    return _save(manager, 4)


def test_a_pickle_that_would_run_code_is_refused_without_running_it(checkpoint, tmp_path):
    marker = tmp_path / "payload-ran"
    torch.save({"python": RunsAShellCommand(marker)}, checkpoint / "rng" / "rank_0.pt")
    write_manifest(checkpoint)  # whoever crafted the file can write a matching manifest
    problem = manifest.check(checkpoint)
    assert problem.startswith("refused: rng/rank_0.pt names") and "system" in problem, problem
    manager = CheckpointManager(tmp_path, keep=3, rank=0, world_size=1)
    assert manager.latest_valid() is None
    assert not marker.exists()


def test_distributed_checkpoint_metadata_that_would_run_code_is_refused(checkpoint, tmp_path):
    marker = tmp_path / "payload-ran"
    (checkpoint / "state" / ".metadata").write_bytes(pickle.dumps(RunsAShellCommand(marker)))
    write_manifest(checkpoint)
    assert "refused: state/.metadata names" in manifest.check(checkpoint)
    assert not marker.exists()


def test_rng_state_is_plain_tensors(checkpoint):
    state = torch.load(checkpoint / "rng" / "rank_0.pt", weights_only=True)
    assert isinstance(state["torch"], torch.Tensor) and isinstance(state["numpy"]["keys"], torch.Tensor)


def _rewrite_manifest(checkpoint, change):
    path = checkpoint / "manifest.json"
    content = json.loads(path.read_text())
    path.write_text(json.dumps(change(content)))


@pytest.mark.parametrize("change,reason", [
    (lambda m: {}, "lists no files"),
    (lambda m: {"files": {}}, "lists no files"),
    (lambda m: {"files": []}, "lists no files"),
    (lambda m: [1, 2], "lists no files"),
    (lambda m: {"files": {**m["files"], "../outside.txt": {"size": 1, "sha256": "x"}}}, "outside the checkpoint"),
    (lambda m: {"files": {**m["files"], "/etc/passwd": {"size": 1, "sha256": "x"}}}, "outside the checkpoint"),
    (lambda m: {"files": {k: {"size": str(v["size"]), "sha256": v["sha256"]} for k, v in m["files"].items()}},
     "malformed"),
    (lambda m: {"files": {k: {"sha256": v["sha256"]} for k, v in m["files"].items()}}, "malformed"),
    (lambda m: {"files": {k: None for k in m["files"]}}, "malformed"),
])
def test_a_malformed_manifest_makes_the_checkpoint_invalid(checkpoint, change, reason):
    _rewrite_manifest(checkpoint, change)
    assert reason in manifest.check(checkpoint)


def test_a_manifest_that_is_not_utf8_or_json_makes_it_invalid(checkpoint):
    (checkpoint / "manifest.json").write_bytes(b"\xff\xfe{not json")
    assert "not valid JSON" in manifest.check(checkpoint)


def test_a_file_added_after_saving_makes_it_invalid(checkpoint):
    (checkpoint / "state" / "extra.pt").write_bytes(b"added later")
    assert "extra.pt is not in the manifest" in manifest.check(checkpoint)


def test_checkpoints_are_ordered_by_step_number_not_by_name(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("step_99999999", "step_100000000", "step_00000005", "step_notanumber"):
        (root / name).mkdir(parents=True)
    assert [p.name for p in CheckpointManager.list_checkpoints(tmp_path)] == [
        "step_00000005", "step_99999999", "step_100000000"]


def test_keep_1_with_a_corrupt_newest_checkpoint_keeps_each_valid_one_it_writes(tmp_path):
    manager = CheckpointManager(tmp_path, keep=1, rank=0, world_size=1)
    _save(manager, 2)
    newest = _save(manager, 4)
    (newest / "trainer.json").write_text("{}")  # corrupt
    # A resume finds nothing valid, and says so in events.jsonl...
    resumed = CheckpointManager(tmp_path, keep=1, rank=0, world_size=1)
    assert resumed.latest_valid() is None
    events = [json.loads(line)["event"] for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events == ["checkpoint", "checkpoint", "checkpoint_skipped", "checkpoint_none_valid"]
    # ...then trains from step 0: its first save survives, the corrupt one goes.
    written = _save(resumed, 2)
    assert CheckpointManager.list_checkpoints(tmp_path) == [written]
    assert resumed.latest_valid() == written


def test_pruning_keeps_the_newest_valid_checkpoints_past_a_corrupt_one(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2, rank=0, world_size=1)
    for step in (2, 4, 6):
        _save(manager, step)
    corrupt = tmp_path / "checkpoints" / "step_00000006"
    (corrupt / "trainer.json").write_text("{}")
    resumed = CheckpointManager(tmp_path, keep=2, rank=0, world_size=1)
    assert resumed.latest_valid().name == "step_00000004"
    _save(resumed, 5)
    assert [p.name for p in CheckpointManager.list_checkpoints(tmp_path)] == ["step_00000004", "step_00000005"]


def test_a_save_removes_what_crashed_saves_left(tmp_path):
    stale = tmp_path / "checkpoints" / ".partial-step_00000003"
    (stale / "state").mkdir(parents=True)
    _save(CheckpointManager(tmp_path, keep=2, rank=0, world_size=1), 4)
    assert not stale.exists()
    assert not list((tmp_path / "checkpoints").glob(".partial-*"))
    shutil.rmtree(tmp_path / "checkpoints")
