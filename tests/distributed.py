"""Run the real training loop in real processes joined by gloo, without Ray.

The strategy matrix needs many short multi-process runs; starting them as plain
processes takes a second or two where a Ray Train worker group takes ten. The
loop, strategies and checkpoints are the same code `orchestrator launch` runs;
the launcher path itself is covered by the end-to-end tests.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import pickle
import queue as queue_module
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from orchestrator.data.pipeline import PreparedData
from orchestrator.config.loading import spec_from_dict
from orchestrator.config.spec import JobSpec

PROCESS_TIMEOUT_S = 240


class WorkerKilled(RuntimeError):
    """A worker process died without reporting (SIGKILL, as chaos does)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(fn, rank, world_size, port, queue, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        # Pickled here with the plain pickler: the queue's own would send tensors as
        # shared-memory handles, which the parent cannot open once this rank has exited.
        queue.put((rank, "ok", pickle.dumps(fn(rank, world_size, *args))))
    except BaseException:  # report every failure to the parent, which raises it
        queue.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_processes(fn: Callable[..., Any], world_size: int, *args: Any) -> list[Any]:
    """Call `fn(rank, world_size, *args)` in `world_size` fresh processes; return each
    rank's result. Raises RuntimeError with the worker traceback if any rank fails."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    processes = [
        context.Process(target=_entry, args=(fn, rank, world_size, port, queue, args))
        for rank in range(world_size)
    ]
    for process in processes:
        process.start()
    results: dict[int, Any] = {}
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    try:
        while len(results) < world_size:
            try:
                rank, status, value = queue.get(timeout=0.2)
            except queue_module.Empty:
                killed = [r for r, p in enumerate(processes) if p.exitcode not in (None, 0) and r not in results]
                if killed:
                    raise WorkerKilled(f"rank {killed[0]} died with exit code {processes[killed[0]].exitcode}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"workers did not finish in {PROCESS_TIMEOUT_S} s")
                continue
            if status == "error":
                raise RuntimeError(_failures(rank, value, queue))
            results[rank] = pickle.loads(value)
    finally:
        for process in processes:
            process.join(timeout=0 if results.keys() != set(range(world_size)) else 10)
            if process.is_alive():
                process.kill()
                process.join()
    return [results[rank] for rank in range(world_size)]


def _failures(rank: int, error: str, queue, grace_s: float = 5.0) -> str:
    """The first failure reported, then those of the ranks that fail in the next few
    seconds: the first to report is often a rank that lost its peer, the cause is in
    the peer's report."""
    reports = [(rank, error)]
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            other, status, value = queue.get(timeout=0.2)
        except queue_module.Empty:
            continue
        if status == "error":
            reports.append((other, value))
    return "\n".join(f"rank {r} failed:\n{text}" for r, text in reports)


def _train_rank(rank: int, world_size: int, spec: JobSpec, data: PreparedData, run_dir: str) -> None:
    import torch

    from orchestrator.training.context import WorkerContext
    from orchestrator.training.loop import train

    context = WorkerContext(
        spec=spec, run_dir=Path(run_dir), data=data, rank=rank, world_size=world_size,
        device=torch.device("cpu"),
    )
    train(context)


def train_in_processes(spec: JobSpec, data: PreparedData, world_size: int, run_dir: Path) -> list[dict]:
    """Train `spec` at `world_size` and return its per-step metrics records."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run_processes(_train_rank, world_size, spec, data, str(run_dir))
    return read_metrics(run_dir)


def train_with_restarts(spec: JobSpec, data: PreparedData, world_sizes: list[int], run_dir: Path) -> int:
    """Train like the controller does: whenever a worker dies, start every rank again
    (from the newest valid checkpoint), at the next world size in `world_sizes`.
    Returns the number of restarts."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for restarts, world_size in enumerate(world_sizes):
        try:
            run_processes(_train_rank, world_size, spec, data, str(run_dir))
            return restarts
        except (WorkerKilled, RuntimeError):  # a rank was killed, or saw its peer go
            if restarts == len(world_sizes) - 1:
                raise
    raise AssertionError("unreachable")


def final_weights(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "model.safetensors"))


def assert_bitwise_equal(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs"


def read_metrics(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.jsonl") as handle:
        return [json.loads(line) for line in handle]


def make_spec(raw: dict[str, Any], base_dir: Path = Path("."), unchecked_data: bool = False,
              **overrides: Any) -> JobSpec:
    """A spec from a dict, with `section.key` overrides given as keyword arguments
    written `section__key=value`. `unchecked_data`: skip the checks of the data and
    model made before anything starts (to reach the pipeline's own errors)."""
    merged = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split("__")
        node = merged
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return spec_from_dict(merged, base_dir=base_dir, recorded=unchecked_data)


def assert_each_sample_once(run_dir: Path, records: list[dict], sampler, steps: int) -> None:
    """Every sample of each complete epoch was trained on exactly once, counted from the
    ids the ranks recorded (train.audit_samples): for each step, what the ranks of the
    last attempt that ran it, at the world size its metrics record has, trained on."""
    from collections import defaultdict

    from orchestrator.run.files import read_jsonl

    trained = {}  # (step, dp_rank) -> ids, from the last attempt that ran the step
    for path in sorted((run_dir / "samples").glob("rank*.jsonl")):
        for record in read_jsonl(path):
            key = (record["step"], record["dp_rank"])
            if key not in trained or record["attempt"] >= trained[key]["attempt"]:
                trained[key] = record
    world_sizes = {r["step"]: r["world_size"] for r in records}
    per_step = defaultdict(list)
    for (step, _), record in trained.items():
        if record["world_size"] == world_sizes.get(step):
            per_step[step] += record["ids"]
    epochs = steps // sampler.steps_per_epoch
    assert epochs >= 1, "not one complete epoch to audit"
    for epoch in range(epochs):
        span = range(epoch * sampler.steps_per_epoch + 1, (epoch + 1) * sampler.steps_per_epoch + 1)
        used = [i for s in span for i in per_step[s]]
        assert len(used) == len(set(used)) == sampler.steps_per_epoch * sampler.global_batch, f"epoch {epoch}"
