"""Checkpoint save and load time for a ~100 MB training state: local disk against an S3
endpoint (moto's server on 127.0.0.1), through the same CheckpointManager a run uses
(manifest with sha256, staging and upload on object storage; rename on local disk).

Alternating repeats (local, S3, local, S3, ...), medians and ranges:

    python benchmarks/checkpoint_storage.py --out benchmarks/results/checkpoint_storage.md
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.run.storage import ObjectPath, remove_tree  # noqa: E402
from orchestrator.training.checkpoint import CheckpointManager, TrainerState  # noqa: E402
from tests.servers import moto_s3  # noqa: E402


def state_of(megabytes: int) -> dict[str, torch.Tensor]:
    """Model-like tensors (16 of them) adding up to `megabytes` MB of float32."""
    generator = torch.Generator().manual_seed(0)
    per_tensor = megabytes * (1 << 20) // 4 // 16
    return {f"layer{i}.weight": torch.randn(per_tensor, generator=generator) for i in range(16)}


def save_and_load(run_dir, state: dict[str, torch.Tensor], step: int) -> tuple[float, float]:
    manager = CheckpointManager(run_dir, keep=1, rank=0, world_size=1)

    def save_strategy(directory: Path) -> None:
        directory.mkdir(parents=True)
        torch.save(state, directory / "model.pt")

    started = time.perf_counter()
    manager.save(TrainerState(step=step, world_size=1, dp_size=1, samples_seen=0), save_strategy)
    saved = time.perf_counter() - started
    loaded = {}
    started = time.perf_counter()
    reader = CheckpointManager(run_dir, keep=1, rank=0, world_size=1)
    reader.load(reader.latest_valid(), lambda d: loaded.update(torch.load(d / "model.pt")))
    load = time.perf_counter() - started
    assert torch.equal(loaded["layer0.weight"], state["layer0.weight"])
    return saved, load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    state = state_of(args.megabytes)
    times: dict[str, dict[str, list[float]]] = {"local disk": {"save": [], "load": []},
                                                 "S3 (moto, loopback)": {"save": [], "load": []}}
    with moto_s3("bench") as env, tempfile.TemporaryDirectory() as local:
        import os

        os.environ.update(env)
        for repeat in range(args.repeats):
            for target, run_dir in (("local disk", Path(local) / "run"), ("S3 (moto, loopback)",
                                                                           ObjectPath("s3://bench/run"))):
                remove_tree(run_dir)
                save, load = save_and_load(run_dir, state, step=repeat + 1)
                times[target]["save"].append(save)
                times[target]["load"].append(load)
                print(f"{target}: save {save:.2f} s, load {load:.2f} s", flush=True)
    size = sum(t.numel() * t.element_size() for t in state.values()) / 1e6
    rows = [f"Checkpoint of {size:.0f} MB (16 float32 tensors), save then load through CheckpointManager, "
            f"{args.repeats} alternating repeats; median (min-max).", "",
            "| storage | save (s) | load (s) | save MB/s | load MB/s |", "| --- | --- | --- | --- | --- |"]
    for target, measured in times.items():
        save, load = statistics.median(measured["save"]), statistics.median(measured["load"])
        rows.append(f"| {target} | {save:.2f} ({min(measured['save']):.2f}-{max(measured['save']):.2f}) "
                    f"| {load:.2f} ({min(measured['load']):.2f}-{max(measured['load']):.2f}) "
                    f"| {size / save:.0f} | {size / load:.0f} |")
    local, s3 = (statistics.median(times[t]["save"]) for t in times)
    rows += ["", f"S3 / local, save: {s3 / local:.2f}x; load: "
             f"{statistics.median(times['S3 (moto, loopback)']['load']) / statistics.median(times['local disk']['load']):.2f}x.",
             "", "Save on S3: the state written to a local staging folder, hashed, uploaded object by object, "
             "the manifest last. Load: every object downloaded, checked against the manifest (sha256, and "
             "the pickle check), then read. moto's server is a single Python process on this 2-core machine, "
             "so its throughput bounds these numbers; a real endpoint's depends on the network.",
             "", "Command: `python benchmarks/checkpoint_storage.py --out benchmarks/results/checkpoint_storage.md`"]
    args.out.write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
