"""Training on a dataset bigger than the memory budget: a folder of Parquet files
(several GB) prepared into shards and streamed to 2 workers for an epoch.

Generates `--gib` GiB of Parquet (64 float32 features and an int64 label per row, in
`--files` files; random values, so the files are as big as the data), launches an MLP
job on it with `orchestrator launch` (embedded Ray, 2 workers), and reports:

- the driver's peak resident memory (VmHWM of the `orchestrator launch` process,
  read from /proc while it runs) and each worker's (`peak_rss_bytes` in usage.jsonl);
- how long the preparation took (launch to the first step) and the prepared size;
- what each worker read of the prepared shards (`data_shards_read`, `data_bytes_read`
  in usage.jsonl): with the streams divided between the ranks, each about half;
- the time each step waited for data (`step_data_s`) as a share of the step's time,
  over the steps after the first STEADY_FROM, and the worst step's wait.

    python benchmarks/streaming_ingest.py --gib 3.5          # the committed result (4 GiB on disk)
    python benchmarks/streaming_ingest.py --gib 0.3          # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks/results/streaming_ingest.md"
FEATURES = 64
STEADY_FROM = 10


def generate(folder: Path, gib: float, files: int) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows_per_file = int(gib * 2**30 / (FEATURES * 4 + 8) / files)
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=0.5, size=(10, FEATURES)).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        label = rng.integers(0, 10, rows_per_file)
        x = centers[label] + rng.standard_normal((rows_per_file, FEATURES), dtype=np.float32)
        table = pa.table({**{f"f{i}": x[:, i] for i in range(FEATURES)}, "label": label})
        pq.write_table(table, folder / f"part-{index:03d}.parquet", compression="none")
        print(f"wrote file {index + 1}/{files}", flush=True)
    return rows_per_file * files


def job(folder: Path, batch: int, steps: int) -> dict:
    return {
        "name": "streaming-ingest",
        "model": {"name": "mlp", "options": {"hidden": [512, 512]}},
        "data": {"source": str(folder), "prepare": ["normalize"], "validation_fraction": 0.01},
        "optimizer": {"name": "adamw", "lr": 0.001},
        "train": {"steps": steps, "global_batch_size": batch, "micro_batch_size": batch // 2,
                  "validate_every": 0},
        "strategy": {"name": "ddp"},
        "scaling": {"workers": 2, "spares": 0},
        "checkpoint": {"every_steps": 0},
    }


def peak_rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run(folder: Path, scratch: Path, rows: int, batch: int) -> dict:
    import yaml

    steps = int(rows * 0.99) // batch  # an epoch of the training split
    (scratch / "job.yaml").write_text(yaml.safe_dump(job(folder, batch, steps)))
    run_dir = scratch / "run"
    started = time.time()
    driver = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "launch", str(scratch / "job.yaml"),
                               "--run-dir", str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    driver_peak = 0
    while driver.poll() is None:
        driver_peak = max(driver_peak, peak_rss(driver.pid))
        time.sleep(0.5)
    output = driver.stdout.read()
    if driver.returncode != 0:
        raise RuntimeError(f"launch failed:\n{output[-4000:]}")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    usage = [json.loads(line) for line in (run_dir / "usage.jsonl").read_text().splitlines()]
    steady = [m for m in metrics if m["step"] > STEADY_FROM]
    shards = json.loads((run_dir / "data/manifest.json").read_text())["splits"]["train"]
    prepared = sum(f.stat().st_size for f in (run_dir / "data").rglob("*.parquet"))
    return {
        "rows": rows, "steps": steps, "shards": len(shards["files"]),
        "prepared_gib": prepared / 2**30,
        "driver_peak_gib": driver_peak / 2**30,
        "worker_peak_gib": [u["peak_rss_bytes"] / 2**30 for u in usage],
        "worker_read": [(u.get("data_shards_read", 0), u.get("data_bytes_read", 0) / 2**30) for u in usage],
        "to_first_step_s": metrics[0]["time"] - started,
        "wall_s": time.time() - started,
        "step_ms": 1000 * statistics.median(m["step_time_s"] for m in steady),
        "data_share": sum(m["step_data_s"] for m in steady) / sum(m["step_time_s"] for m in steady),
        "worst_wait_ms": 1000 * max(m["step_data_s"] for m in steady),
    }


def render(args, on_disk: float, result: dict) -> str:
    workers = ", ".join(f"{g:.2f}" for g in result["worker_peak_gib"])
    read = ", ".join(f"{n} shards, {g:.2f} GiB" for n, g in result["worker_read"])
    return "\n".join([
        "# Streaming a dataset bigger than the memory budget",
        "",
        f"{result['rows']:,} rows ({FEATURES} float32 features and a label) in {args.files} Parquet files, "
        f"{on_disk:.2f} GiB on disk; prepared into {result['shards']} training shards "
        f"({result['prepared_gib']:.2f} GiB), then an epoch ({result['steps']} steps, global batch "
        f"{args.batch}) of an MLP (64-512-512-10) at 2 workers (DDP) on the embedded Ray. Machine: {os.cpu_count()} cores.",
        "",
        "    " + shlex.join(["python", "benchmarks/streaming_ingest.py", *sys.argv[1:]]),
        "",
        "| measure | value |",
        "| --- | ---: |",
        f"| driver peak RSS (GiB) | {result['driver_peak_gib']:.2f} |",
        f"| worker peak RSS (GiB) | {workers} |",
        f"| read by each worker from the {result['shards']} shards | {read} |",
        f"| launch to step 1 (s): reading and preparing | {result['to_first_step_s']:.0f} |",
        f"| whole run (s) | {result['wall_s']:.0f} |",
        f"| step time after step {STEADY_FROM}, median (ms) | {result['step_ms']:.1f} |",
        f"| data wait, share of step time after step {STEADY_FROM} | {100 * result['data_share']:.2f} % |",
        f"| longest data wait of a step (ms) | {result['worst_wait_ms']:.0f} |",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=3.5, help="GiB of values (the files are larger)")
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--data", type=Path, help="Where to generate the files (default: a temporary folder).")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="streaming-ingest-") as scratch:
        folder = args.data or Path(scratch) / "source"
        rows = generate(folder, args.gib, args.files)
        on_disk = sum(f.stat().st_size for f in folder.glob("*.parquet")) / 2**30
        result = run(folder, Path(scratch), rows, args.batch)
    print(json.dumps(result), flush=True)
    report = render(args, on_disk, result)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
