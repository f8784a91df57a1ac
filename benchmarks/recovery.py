"""Recovery time after a worker failure and after a node loss: the elastic controller
against Ray Train's own restart path (`scaling.backend: ray_train`), in one run.

Recovery time = the moment of the fault -> the first training step completed after it.
A worker fault is a SIGKILL of one worker process (chaos.kill_worker_at_steps; the
moment is the fault marker's write time). A node fault removes one of two worker nodes
of a local `ray.cluster_utils.Cluster` (the moment is just before `remove_node`).

    python benchmarks/recovery.py --repeats 2 --out benchmarks/results/recovery.md
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOB = ROOT / "tests/jobs/mlp_parity.yaml"


def records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def first_step_after(run_dir: Path, moment: float) -> float:
    """Seconds from `moment` to the first step of the first attempt started after it
    (a step of the failed attempt may still land just after the fault)."""
    starts = [e["time"] for e in events(run_dir) if e["event"] == "started" and e["time"] > moment]
    if not starts:
        raise RuntimeError(f"training never restarted after the fault in {run_dir}")
    later = [r["time"] for r in records(run_dir) if r["time"] > min(starts)]
    if not later:
        raise RuntimeError(f"no step completed after the fault in {run_dir}")
    return min(later) - moment


def command(run_dir: Path, overrides: list[str], address: str | None = None) -> list[str]:
    args = [sys.executable, "-m", "orchestrator.cli", "launch", str(JOB), "--run-dir", str(run_dir)]
    for override in overrides:
        args += ["--set", override]
    if address:
        args += ["--address", address]
    return args


def worker_fault(backend: str, scratch: Path) -> float:
    run_dir = scratch / f"worker-{backend}"
    overrides = ["train.steps=300", "checkpoint.every_steps=20", "chaos.kill_worker_at_steps=[50]",
                 f"scaling.backend={backend}"]
    subprocess.run(command(run_dir, overrides), cwd=ROOT, check=True, capture_output=True, timeout=600)
    killed_at = (run_dir / "chaos" / "kill_worker_50").stat().st_mtime
    return first_step_after(run_dir, killed_at)


def node_fault(backend: str, scratch: Path) -> float:
    from ray.cluster_utils import Cluster

    run_dir = scratch / f"node-{backend}"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        nodes = [cluster.add_node(num_cpus=1, resources={"trainer": 1}) for _ in range(2)]
        cluster.wait_for_nodes()
        overrides = ["train.steps=4000", "checkpoint.every_steps=20", "scaling.workers=[1,2]",
                     "scaling.spares=0", "scaling.cpus_per_worker=1", "scaling.worker_resources={trainer: 1}",
                     f"scaling.backend={backend}"]
        driver = subprocess.Popen(command(run_dir, overrides, cluster.address), cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not any(r["step"] >= 30 for r in records(run_dir)):
            if driver.poll() is not None:
                raise RuntimeError(f"{backend} run ended before the fault")
            time.sleep(0.05)
        removed_at = time.time()
        cluster.remove_node(nodes[1])
        deadline = time.time() + 300
        while True:
            try:
                recovery = first_step_after(run_dir, removed_at)
                break
            except RuntimeError:
                if time.time() > deadline or driver.poll() is not None:
                    raise RuntimeError(f"{backend} did not resume after the node loss") from None
                time.sleep(0.05)
        driver.kill()
        driver.wait()
        return recovery
    finally:
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/recovery.md")
    args = parser.parse_args()

    results: dict[tuple[str, str], list[float]] = {}
    for repeat in range(args.repeats):
        for fault, measure in (("worker SIGKILL", worker_fault), ("node removed", node_fault)):
            for backend in ("elastic", "ray_train"):
                scratch = Path(tempfile.mkdtemp(prefix="recovery-"))
                try:
                    seconds = measure(backend, scratch)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
                results.setdefault((fault, backend), []).append(seconds)
                print(f"repeat {repeat + 1}: {fault:15} {backend:9} {seconds:6.2f} s", flush=True)

    lines = [
        "# Recovery time: fault -> first training step completed after it",
        "",
        f"Command: `python benchmarks/recovery.py --repeats {args.repeats}`",
        f"Machine: {os.cpu_count()} cores, CPU only, gloo; job tests/jobs/mlp_parity.yaml, 2 workers.",
        "",
        "| fault | elastic controller (s) | Ray Train restart path (s) | ratio |",
        "| --- | --- | --- | --- |",
    ]
    for fault in ("worker SIGKILL", "node removed"):
        elastic, ray_train = results[(fault, "elastic")], results[(fault, "ray_train")]
        ratio = statistics.median(ray_train) / statistics.median(elastic)
        lines.append(
            f"| {fault} | {' / '.join(f'{x:.2f}' for x in elastic)} | "
            f"{' / '.join(f'{x:.2f}' for x in ray_train)} | {ratio:.0f}x |"
        )
    lines += [
        "",
        "Each cell lists every repeat. The elastic controller keeps surviving worker processes,",
        "replaces a killed worker with a warm spare, and on a lost node restarts the survivors at",
        "the smaller size at once; Ray Train tears the whole group down and starts it again, and",
        "after a node loss retries the old size until its worker-group start times out.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
