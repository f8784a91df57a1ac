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


@pytest.mark.parametrize(
    "strategy, options",
    [("ddp", []), ("fsdp", ["train.compile=true", "train.activation_checkpointing=selective"])],
    ids=["ddp", "fsdp-compiled-recomputed"],
)
def test_quickstart_on_gpus_in_bf16(tmp_path, strategy, options):
    workers = min(2, torch.cuda.device_count())
    args = [sys.executable, "-m", "orchestrator.cli", "launch", str(ROOT / "examples/quickstart.yaml"),
            "--run-dir", str(tmp_path), "--set", "scaling.use_gpu=true", "--set", f"scaling.workers={workers}",
            "--set", "scaling.spares=0", "--set", "train.precision=bf16", "--set", f"strategy.name={strategy}"]
    for option in options:
        args += ["--set", option]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["validation"]["val_accuracy"] >= 0.9
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    if "H100" in torch.cuda.get_device_name() or "H200" in torch.cuda.get_device_name():
        assert 0 < records[-1]["mfu"] < 1, records[-1]  # the device's peak is known
