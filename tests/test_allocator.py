"""A training process keeps the memory a step frees, so the next step does not fault it
back in page by page; settings a user gave glibc themselves are left alone.

Each case runs in a fresh interpreter, since malloc's settings are per process.

Exercised by: pytest tests/test_allocator.py
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

# Twelve 8 MiB blocks taken, written and freed, ten times, as a step's activations are:
# prints the minor page faults of each of the last five rounds, and what keep_freed_memory said.
STEPS = """
import ctypes, json, resource, sys
from orchestrator.training.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
faults = []
for step in range(10):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(8 << 20) for _ in range(12)]
    for block in blocks:
        libc.memset(block, 1, 8 << 20)
    for block in blocks:
        libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": faults[5:]}))
"""


def run_steps(mode: str, **environ: str) -> dict:
    env = {name: value for name, value in os.environ.items()
           if not (name.startswith("MALLOC_") or name == "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", STEPS, mode], env={**env, **environ},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def test_freed_memory_is_kept_for_the_next_step():
    default = run_steps("default")
    kept = run_steps("keep")
    assert kept["kept"] is True
    # By default every round maps 96 MiB afresh: about 24,000 faults of 4 KiB each.
    assert min(default["faults"]) > 10_000
    assert max(kept["faults"]) < 100


def test_malloc_settings_the_user_chose_are_kept():
    chosen = run_steps("keep", MALLOC_TRIM_THRESHOLD_="0")
    assert chosen["kept"] is False
    assert min(chosen["faults"]) > 10_000


def test_the_settings_as_environment_variables_have_the_same_effect():
    """The form benchmarks/step_tax.py gives the peers: glibc reads it at start-up."""
    from orchestrator.training.allocator import as_environment

    assert max(run_steps("default", **as_environment())["faults"]) < 100
