"""The GPT examples under ZeRO-3 and FSDP, launched through the CLI on an embedded Ray:
they finish, export their weights, and their validation loss falls.

Exercised by: pytest tests/test_sharded_launch_e2e.py -m e2e
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.e2e
@pytest.mark.parametrize("example", ["gpt_zero3.yaml", "gpt_fsdp.yaml"])
def test_gpt_example_trains_through_the_cli(example, tmp_path):
    run_dir = tmp_path / "run"
    overrides = ["train.steps=40", "train.validate_every=20", "checkpoint.every_steps=20"]
    command = [sys.executable, "-m", "orchestrator.cli", "launch", str(EXAMPLES / example), "--run-dir", str(run_dir)]
    for override in overrides:
        command += ["--set", override]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["status"], summary["steps"], summary["restarts"]) == ("finished", 40, 0)
    assert summary["validation"]["val_loss"] < summary["first_validation"]["val_loss"]
    assert (run_dir / "model.safetensors").is_file()
