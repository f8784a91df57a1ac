"""What subnormal floats cost a CPU run, with and without `train.flush_denormal`.

The checkpoint-stall job (checkpoint_stall.py: MLP 1024-2048-2048-1024-10, AdamW, batch
256, no checkpoints but the end's) trained by `orchestrator launch` on the embedded Ray,
1 worker of 1 thread, 60 steps, with `train.flush_denormal` off and on; repeats alternate.
Around its steps 9-21 the gradients of this model pass through subnormal floats, which
x86 CPUs compute in microcode, many times slower. Reported per setting: the median step,
the slowest step, and the time of steps 2-30 (intervals between consecutive steps' ends).

    python benchmarks/denormal_steps.py               # 3 repeats
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
from pathlib import Path

import checkpoint_stall
from alternation import rotated

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
STEPS = 60


def measure(flush: bool) -> dict:
    job = json.loads(checkpoint_stall.job_yaml(STEPS, {"every_steps": 0}, 1, 256, threads=1))
    job["train"]["flush_denormal"] = flush
    with tempfile.TemporaryDirectory(prefix="denormal-") as scratch:
        work = Path(scratch)
        (work / "job.yaml").write_text(json.dumps(job))
        subprocess.run([sys.executable, "-m", "orchestrator.cli", "launch", str(work / "job.yaml"),
                        "--run-dir", str(work / "run")], cwd=ROOT, capture_output=True, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        ends = {r["step"]: r["time"] for r in map(json.loads, (work / "run" / "metrics.jsonl").read_text().splitlines())}
    interval = [ends[s] - ends[s - 1] for s in range(2, STEPS)]
    return {"median_ms": 1000 * statistics.median(interval), "worst_ms": 1000 * max(interval),
            "steps_2_30_s": sum(interval[:29])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS / "denormal_steps.md")
    args = parser.parse_args()
    runs: dict[bool, list[dict]] = {False: [], True: []}
    for repeat in range(args.repeats):
        for flush in rotated([False, True], repeat):
            runs[flush].append(measure(flush))
            print(json.dumps({"repeat": repeat, "flush_denormal": flush, **runs[flush][-1]}), flush=True)
    lines = ["# Subnormal floats in a CPU run", "",
             f"The checkpoint-stall MLP, no checkpoints, 1 worker of 1 thread, {STEPS} steps; "
             f"{args.repeats} alternating repeats, medians. Machine: {os.cpu_count()} cores.", "",
             "    " + shlex.join(["python", "benchmarks/denormal_steps.py", *sys.argv[1:]]), "",
             "| train.flush_denormal | median step (ms) | slowest step (ms) | steps 2-30 (s) |",
             "| --- | ---: | ---: | ---: |"]
    for flush, measured in runs.items():
        med = {key: statistics.median(m[key] for m in measured) for key in measured[0]}
        lines.append(f"| {str(flush).lower()} | {med['median_ms']:.1f} | {med['worst_ms']:.0f} | {med['steps_2_30_s']:.2f} |")
    report = "\n".join(lines) + "\n"
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
