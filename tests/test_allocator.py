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
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

LIBC = """
import ctypes, json, resource, sys
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
"""

# Blocks of argv[2] MiB (twelve of 8 MiB, by default; argv[3] of them, or 96 MiB's worth)
# taken, written and freed, ten times, as a step's activations are, on the main thread or
# (argv[4] "thread") another one, as in a Ray actor: prints the minor page faults of each
# of the last five rounds, and what keep_freed_memory said.
STEPS = LIBC + """
import threading
from orchestrator.training.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
size = int(sys.argv[2]) if len(sys.argv) > 2 else 8
count = int(sys.argv[3]) if len(sys.argv) > 3 else 96 // size
faults = []
def steps():
    for step in range(10):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [libc.malloc(size << 20) for _ in range(count)]
        for block in blocks:
            libc.memset(block, 1, size << 20)
        for block in blocks:
            libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
if sys.argv[4:] == ["thread"]:
    thread = threading.Thread(target=steps)
    thread.start()
    thread.join()
else:
    steps()
print(json.dumps({"kept": kept, "faults": faults[5:]}))
"""

# A one-off spike (ten blocks of 48 MiB, as a resume's loaded state) taken and freed below
# a block still in use; prints resident memory before it, after the free, and after
# give_back_freed_memory (MB).
SPIKE = LIBC + """
from orchestrator.training.allocator import give_back_freed_memory, keep_freed_memory
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20
kept = keep_freed_memory()
before = rss()
spike = [libc.malloc(48 << 20) for _ in range(10)]
for block in spike:
    libc.memset(block, 1, 48 << 20)
live = libc.malloc(1 << 20)
libc.memset(live, 1, 1 << 20)
for block in spike:
    libc.free(block)
freed = rss()
given_back = give_back_freed_memory()
print(json.dumps({"kept": kept, "given_back": given_back, "freed": freed - before, "after": rss() - before}))
"""


def run_script(script: str, *args: str, **environ: str) -> dict:
    env = {name: value for name, value in os.environ.items()
           if not (name.startswith("MALLOC_") or name == "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", script, *args], env={**env, **environ},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def run_steps(*args: str, **environ: str) -> dict:
    return run_script(STEPS, *args, **environ)


def test_freed_memory_is_kept_for_the_next_step():
    default = run_steps("default")
    kept = run_steps("keep")
    assert kept["kept"] is True
    # By default every round maps 96 MiB afresh: about 24,000 faults of 4 KiB each.
    assert min(default["faults"]) > 10_000
    assert max(kept["faults"]) < 100


def test_blocks_above_the_mmap_ceiling_are_kept_too():
    """A language model's logits: above 32 MiB, glibc maps a block afresh each time by default."""
    default = run_steps("default", "48")
    kept = run_steps("keep", "48")
    assert min(default["faults"]) > 10_000  # 2 x 48 MiB a round, mapped and unmapped
    assert max(kept["faults"]) < 100


def test_a_step_freeing_more_than_a_gigabyte_keeps_it():
    """GPT-2's logits and their gradient at vocabulary 50,257, and the rest of its step."""
    kept = run_steps("keep", "400", "3")
    assert max(kept["faults"]) < 100  # 1.2 GB freed at the heap's top each round, not trimmed


def test_a_thread_keeps_blocks_larger_than_its_arena_with_one_arena():
    """A Ray actor trains on a thread of its pool. A thread's own arena maps any block over
    its 64 MiB heaps afresh, whatever mallopt says; with one arena (which a process must
    be started with) it allocates from the main heap, as the main thread does."""
    from orchestrator.training.allocator import AT_PROCESS_START

    own_arena = run_steps("keep", "96", "1", "thread")
    one_arena = run_steps("keep", "96", "1", "thread", **AT_PROCESS_START)
    assert own_arena["kept"] is one_arena["kept"] is True
    assert min(own_arena["faults"]) > 10_000  # 96 MiB mapped and unmapped every round
    assert max(one_arena["faults"]) < 100


def test_a_run_on_the_host_starts_its_ray_processes_with_one_arena(monkeypatch):
    from orchestrator.config.loading import read_spec
    from orchestrator.execution.ray_runtime import worker_env

    for name in [n for n in os.environ if n.startswith("MALLOC_") or n == "GLIBC_TUNABLES"]:
        monkeypatch.delenv(name)
    job = str(Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml")
    assert worker_env(read_spec(job, []), "/tmp/run")["MALLOC_ARENA_MAX"] == "1"
    assert "MALLOC_ARENA_MAX" not in worker_env(read_spec(job, ["scaling.use_gpu=true"]), "/tmp/run")
    # The user's own settings, in the job or the driver's environment, are theirs alone.
    chosen = worker_env(read_spec(job, ['scaling.env={"MALLOC_ARENA_MAX": "4"}']), "/tmp/run")
    assert chosen["MALLOC_ARENA_MAX"] == "4"
    trim = worker_env(read_spec(job, ['scaling.env={"MALLOC_TRIM_THRESHOLD_": "0"}']), "/tmp/run")
    assert "MALLOC_ARENA_MAX" not in trim
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")
    assert "MALLOC_ARENA_MAX" not in worker_env(read_spec(job, []), "/tmp/run")


def test_the_workers_of_an_embedded_launch_start_with_the_runs_variables(tmp_path):
    """The one arena and `scaling.env`, inherited from the driver by every process of the
    embedded Ray (execution/ray_runtime.py)."""
    root = Path(__file__).resolve().parents[1]
    seen = tmp_path / "seen"
    seen.mkdir()
    sets = ["model.name=tests.environment_models:records_environment",
            f'model.options={{folder: "{seen}", names: [MALLOC_ARENA_MAX, A_VARIABLE_OF_THE_JOB]}}',
            'scaling.env={"A_VARIABLE_OF_THE_JOB": "its value"}', "train.steps=2", "scaling.spares=0"]
    env = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "launch", "examples/quickstart.yaml",
                             "--run-dir", str(tmp_path / "run"), *[a for s in sets for a in ("--set", s)]],
                            cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    workers = [json.loads(f.read_text()) for f in seen.iterdir()]
    assert len(workers) >= 2  # both ranks (and the driver's check of the model)
    assert all(w == {"MALLOC_ARENA_MAX": "1", "A_VARIABLE_OF_THE_JOB": "its value"} for w in workers)


def test_a_one_off_spike_is_given_back():
    spike = run_script(SPIKE)
    assert spike["kept"] is True and spike["given_back"] is True
    assert spike["freed"] > 400  # with no mmap, freed below a live block, it stays resident
    assert spike["after"] < 50


def test_malloc_settings_the_user_chose_are_kept():
    chosen = run_steps("keep", MALLOC_TRIM_THRESHOLD_="0")
    assert chosen["kept"] is False
    assert min(chosen["faults"]) > 10_000
    assert run_steps("keep", MALLOC_ARENA_MAX="4")["kept"] is False
    assert run_steps("keep", MALLOC_ARENA_MAX="1")["kept"] is True  # what a run sets itself


def test_the_settings_as_environment_variables_have_the_same_effect():
    """The form benchmarks/step_tax.py gives the peers: glibc reads it at start-up."""
    from orchestrator.training.allocator import as_environment

    assert max(run_steps("default", **as_environment())["faults"]) < 100


# configure_runtime, as a worker calls it, for the quickstart job: prints whether the
# malloc settings are in force afterwards.
CONFIGURED = """
import json, sys
from orchestrator.config.loading import read_spec
from orchestrator.training import allocator
from orchestrator.training.context import configure_runtime
spec = read_spec(sys.argv[1], sys.argv[2:])
configure_runtime(spec, 1)
print(json.dumps({"applied": allocator._applied}))
"""


def test_only_workers_that_train_on_the_host_take_the_settings():
    """A GPU worker's step allocates on the device; what it frees on the host (a model built
    there, then moved) goes back to the kernel as glibc would have it."""
    job = str(Path(__file__).resolve().parents[1] / "examples" / "quickstart.yaml")
    assert run_script(CONFIGURED, job)["applied"] is True
    assert run_script(CONFIGURED, job, "scaling.use_gpu=true")["applied"] is False
