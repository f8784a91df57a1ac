"""Runs on object storage: an S3 endpoint (moto's server on 127.0.0.1) holds the whole run.

The storage layer (ObjectPath, segment logs), checkpoints published manifest-last with a
damaged one skipped, and a launched run whose driver is SIGKILLed and which another
directory resumes to the uninterrupted run's weights, bit for bit.

Exercised by: pytest tests/test_object_storage.py
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from orchestrator.run.files import JsonlFollower, RunFiles, SegmentLog, append_jsonl, flush_logs, read_jsonl
from orchestrator.run.records import latest_per_step
from orchestrator.run.storage import ObjectPath, remove_tree, run_path
from orchestrator.training import checkpoint_transfer
from orchestrator.training.checkpoint import CheckpointManager, TrainerState
from tests.distributed import assert_bitwise_equal
from tests.servers import moto_s3

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "tests/jobs/mlp_parity.yaml"
BUCKET = "orchestrator-runs"


@pytest.fixture(scope="module")
def s3():
    with moto_s3(BUCKET) as env:
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield env
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def fresh(name: str) -> ObjectPath:
    path = ObjectPath(f"s3://{BUCKET}/{name}-{time.time_ns()}")
    remove_tree(path)
    return path


# ---- the storage layer ---------------------------------------------------------------------
def test_object_paths_read_write_list_and_remove(s3):
    root = fresh("paths")
    assert not root.exists() and list(root.iterdir()) == []
    (root / "a.json").write_text('{"x": 1}')
    (root / "d" / "e.bin").write_bytes(b"\x00" * 10)
    assert root.is_dir() and (root / "a.json").is_file() and not (root / "a.json").is_dir()
    assert json.loads((root / "a.json").read_text()) == {"x": 1}
    assert (root / "d" / "e.bin").stat().st_size == 10
    assert sorted(p.name for p in root.iterdir()) == ["a.json", "d"]
    assert [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()] == ["a.json", "d/e.bin"]
    assert [p.name for p in root.glob("*.json")] == ["a.json"]
    with pytest.raises(FileNotFoundError):
        (root / "missing").read_bytes()
    assert run_path(str(root)) == root and run_path("runs/x") == Path("runs/x")
    remove_tree(root)
    assert not root.exists()


def test_json_lines_on_object_storage_are_segments_merged_in_time_order(s3):
    log = fresh("log") / "events.jsonl"
    follower = JsonlFollower(log)
    for i in range(5):
        append_jsonl(log, {"event": "e", "i": i, "time": float(i)})
    flush_logs()
    assert [r["i"] for r in read_jsonl(log)] == [0, 1, 2, 3, 4]
    # A second writer (another process) adds its own segment; readers merge by time.
    other = SegmentLog(log)
    other.writer = "99999999999999999999-elsewhere-1"
    other.append(b'{"event": "e", "i": 2.5, "time": 2.5}\n')
    other.append(b"not json\n")
    other.flush()
    assert [r["i"] for r in read_jsonl(log)] == [0, 1, 2, 2.5, 3, 4]
    assert [r["i"] for r in follower.poll(force=True)] == [0, 1, 2, 2.5, 3, 4]
    assert follower.rejected and follower.rejected[0][0] == "not json"
    append_jsonl(log, {"event": "e", "i": 5, "time": 5.0})
    assert [r["i"] for r in follower.poll(force=True)] == [5]
    assert len(list(log.iterdir())) == 2


# ---- checkpoints ------------------------------------------------------------------------------
def _save(manager: CheckpointManager, step: int, value: float):
    def save_strategy(directory: Path) -> None:
        directory.mkdir(parents=True)
        torch.save({"w": torch.full((1000,), value)}, directory / "model.pt")

    return manager.save(TrainerState(step=step, world_size=1, dp_size=1, samples_seen=step), save_strategy)


def test_checkpoints_publish_manifest_last_prune_and_skip_a_damaged_one(s3):
    run_dir = fresh("ckpt")
    manager = CheckpointManager(run_dir, keep=2, rank=0, world_size=1)
    for step in (10, 20, 30):
        _save(manager, step, float(step))
    assert [p.name for p in manager.checkpoints()] == ["step_00000020", "step_00000030"]
    assert all(isinstance(p, ObjectPath) for p in manager.checkpoints())
    # Nothing stays on local disk once the upload is done.
    staging = checkpoint_transfer.staging_root(RunFiles(run_dir).checkpoints, 0)
    assert not staging.exists() or not any(p.is_file() for p in staging.rglob("*"))

    # Damage the newest checkpoint's weights without changing their size.
    newest = manager.checkpoints()[-1] / "state" / "model.pt"
    content = bytearray(newest.read_bytes())
    content[-20] ^= 0xFF
    newest.write_bytes(bytes(content))
    # An upload that never published its manifest is not a checkpoint either.
    (RunFiles(run_dir).checkpoints / "step_00000040" / "state" / "model.pt").write_bytes(b"half")

    reader = CheckpointManager(run_dir, keep=2, rank=0, world_size=1)
    chosen = reader.latest_valid()
    assert chosen.name == "step_00000020"
    loaded = {}
    state = reader.load(chosen, lambda d: loaded.update(torch.load(d / "model.pt")))
    assert state.step == 20 and torch.equal(loaded["w"], torch.full((1000,), 20.0))
    skipped = {e["checkpoint"]: e["reason"] for e in read_jsonl(RunFiles(run_dir).events)
               if e["event"] == "checkpoint_skipped"}
    assert skipped == {"step_00000040": "no manifest (incomplete save)",
                       "step_00000030": "state/model.pt does not match its checksum"}


# ---- a whole run ------------------------------------------------------------------------------
STEPS = ["train.steps=200", "checkpoint.every_steps=10"]


def _cli(*args: str, cwd: Path, env: dict, timeout: int = 400) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                            timeout=timeout, cwd=cwd, env={**os.environ, **env,
                                                           "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _weights(run_dir) -> dict:
    from orchestrator.run.export import load_weights

    return load_weights(RunFiles(run_dir).weights)


@pytest.mark.e2e
def test_a_run_on_s3_survives_a_killed_driver_and_resumes_bitwise_from_elsewhere(s3, tmp_path):
    reference = tmp_path / "reference"
    _cli("launch", str(JOB), "--run-dir", str(reference), *sum((["--set", s] for s in STEPS), []),
         cwd=tmp_path, env=s3)

    run_dir = fresh("killed")
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    args = [sys.executable, "-m", "orchestrator.cli", "launch", str(JOB), "--run-dir", str(run_dir)]
    driver = subprocess.Popen(args + sum((["--set", s] for s in STEPS), []), cwd=first,
                              env={**os.environ, **s3, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(CheckpointManager.list_checkpoints(run_dir)) < 3:
        assert driver.poll() is None, "the run ended early"
        assert time.monotonic() < deadline, "no checkpoints written"
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    time.sleep(2)  # the embedded Ray shares the driver's fate; let it go
    assert not (RunFiles(run_dir).weights).exists()
    assert list(first.iterdir()) == [], "the run wrote to local disk"

    # Damage the newest checkpoint: the resume must pass over it to the one before.
    checkpoints = CheckpointManager.list_checkpoints(run_dir)
    damaged = checkpoints[-1] / "trainer.json"
    damaged.write_text(damaged.read_text().replace('"step"', '"stop"'))

    status = json.loads(_cli("status", str(run_dir), "--json", cwd=second, env=s3).stdout)
    assert status["state"].startswith("interrupted") and status["step"] >= 20

    _cli("resume", str(run_dir), cwd=second, env=s3)
    events = list(read_jsonl(RunFiles(run_dir).events))
    assert any(e["event"] == "checkpoint_skipped" and e["checkpoint"] == checkpoints[-1].name for e in events)
    resumed = [e for e in events if e["event"] == "resumed"]
    assert resumed and resumed[-1]["step"] < int(checkpoints[-1].name.split("_")[1])
    steps = latest_per_step(list(read_jsonl(RunFiles(run_dir).metrics)))
    assert [r["step"] for r in steps] == list(range(1, 201))
    assert_bitwise_equal(_weights(run_dir), _weights(reference))
    assert json.loads(RunFiles(run_dir).summary.read_text())["status"] == "finished"
    assert list(second.iterdir()) == [], "the resume wrote to local disk"
    # The run's plots go to the run, on S3.
    assert "200 steps" in _cli("report", str(run_dir), cwd=second, env=s3).stdout
    assert (run_dir / "plots" / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(second.iterdir()) == []


def test_a_command_that_writes_one_line_and_exits_leaves_it_on_storage(s3):
    # A short command (`orchestrator stop s3://...`) appends one request and exits: its
    # line must be uploaded at exit while S3 still works, and the exit must not hang.
    folder = f"s3://{BUCKET}/short-command/requests.jsonl"
    code = ("from orchestrator.run.files import append_jsonl; from orchestrator.run.storage import run_path; "
            f"append_jsonl(run_path({folder!r}), {{'stop': True}})")
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **s3}, check=True, timeout=60)
    assert time.monotonic() - started < 30
    assert [r["stop"] for r in read_jsonl(run_path(folder))] == [True]
