"""End to end through the CLI: the GPT example trains under hybrid tensor 2 x pipeline 2
on 4 Ray Train workers (fractional CPUs on a small machine).

Exercised by: pytest tests/test_e2e_model_parallel.py -m e2e
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.e2e
def test_gpt_hybrid_example_trains(tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "orchestrator.cli", "launch", str(ROOT / "examples" / "gpt_hybrid.yaml"),
        "--run-dir", str(run_dir),
        "--set", "train.steps=20", "--set", "train.validate_every=10", "--set", "checkpoint.every_steps=10",
        "--set", "schedule.warmup_steps=2",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["steps"] == 20
    assert summary["validation"]["val_loss"] < summary["first_validation"]["val_loss"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["world_size"] == 4
    assert 0.0 <= records[-1]["pipeline_bubble"] < 1.0
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    started = next(e for e in events if e["event"] == "started")
    assert started["dims"] == {"world_size": 4, "dp": 1, "tp": 2, "pp": 2}
    assert (run_dir / "model.safetensors").is_file()
