"""`train.flush_denormal` makes a worker's CPU arithmetic treat subnormal floats as zero,
and leaves PyTorch's default (kept) without it. Each case runs in a fresh interpreter:
the setting is per process.

Exercised by: pytest tests/test_flush_denormal.py
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.distributed import make_spec
from tests.jobs import MLP_JOB

SUBNORMAL_TIMES_ONE = """
import pickle, sys, torch
from orchestrator.training.context import configure_runtime
configure_runtime(pickle.loads(bytes.fromhex(sys.argv[1])), 1)
print((torch.tensor([1e-39], dtype=torch.float32) * 1.0).item())
"""


@pytest.mark.parametrize("flush, expected", [(True, 0.0), (False, 1e-39)])
def test_subnormal_floats_are_flushed_only_when_asked(flush, expected):
    import pickle

    spec = make_spec(MLP_JOB, train__flush_denormal=flush)
    result = subprocess.run([sys.executable, "-c", SUBNORMAL_TIMES_ONE, pickle.dumps(spec).hex()],
                            capture_output=True, text=True, check=True)
    assert float(result.stdout.strip()) == pytest.approx(expected, rel=1e-3, abs=0.0)
