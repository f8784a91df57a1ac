"""A worker started beside a running attempt does its imports at idle CPU priority, on a
thread of their own, and runs its attempts at normal priority (it could not raise its
priority back: unprivileged processes may only lower it)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import os, sys, threading
from orchestrator.execution.elastic import worker

seen = {}
lower = worker.run_when_idle

def lower_and_look():
    lower()
    seen["policy"], seen["thread"] = os.sched_getscheduler(0), threading.current_thread().name

worker.run_when_idle = lower_and_look
assert "orchestrator.training.loop" not in sys.modules
worker.import_training(at_idle_priority=%s)
print(seen.get("policy") == os.SCHED_IDLE, seen.get("thread", "MainThread") != "MainThread",
      os.sched_getscheduler(0) == os.SCHED_OTHER, "orchestrator.training.loop" in sys.modules,
      "torch._dynamo" in sys.modules)
"""


def _probe(at_idle_priority: bool) -> list[str]:
    result = subprocess.run([sys.executable, "-c", PROBE % at_idle_priority], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's SCHED_IDLE")
def test_a_worker_beside_training_imports_at_idle_priority_and_trains_at_normal():
    assert _probe(True) == ["True", "True", "True", "True", "True"]


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux's SCHED_IDLE")
def test_a_worker_at_launch_imports_at_normal_priority():
    assert _probe(False) == ["False", "False", "True", "True", "True"]
