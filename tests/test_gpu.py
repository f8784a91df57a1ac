"""The GPU path: NCCL between workers, one GPU each, bf16 autocast. Opt-in by marker;
skipped cleanly on machines without CUDA.

Exercised by: pytest -m gpu tests/test_gpu.py
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("strategy", ["ddp"])
def test_quickstart_on_gpus_in_bf16(tmp_path, strategy):
    workers = min(2, torch.cuda.device_count())
    args = [sys.executable, "-m", "orchestrator.cli", "launch", str(ROOT / "examples/quickstart.yaml"),
            "--run-dir", str(tmp_path), "--set", "scaling.use_gpu=true", "--set", f"scaling.workers={workers}",
            "--set", "scaling.spares=0", "--set", "train.precision=bf16", "--set", f"strategy.name={strategy}"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["validation"]["val_accuracy"] >= 0.9
