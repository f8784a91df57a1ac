"""How long training stalls for a checkpoint: background saves against in-line ones.

One DDP job, `orchestrator launch` on the embedded Ray, three times per repeat: with
`checkpoint.async_save: true` and `writer: process` (each rank's state copied into
shared memory while the next step computes, and written by a process of the rank's
own), with `writer: thread` (copied at the step, written by a thread of the training
process), and with `async_save: false` (written before the next step). MLP
1024-2048-2048-1024-10 (8.4M parameters), AdamW: 100.7 MB of training state
(parameters and both moments); global batch 256 (or --batch), a checkpoint every 20 steps; at 2
workers and at 1. By default every core of the machine trains: a worker gets the cores
divided by the workers as torch threads (execution/resources.py), so 1 worker on 2 cores
trains with 2 threads, and the background write takes CPU from the step. `--threads 1`
sets `scaling.threads_per_worker`: 1 worker then leaves a core to the writer, as a GPU
host's spare cores do. Repeats alternate the modes.

Times are intervals between consecutive steps' ends (the wall-clock time each metrics
record keeps), so whatever runs between steps is in them:
- median step: every interval after the first WARMUP steps, but those holding a
  checkpoint and the last;
- checkpoint step: the interval holding a save's call (from the end of step 20 to the
  end of step 21, ...); the end-of-run save is left out (the run waits for it);
- the next steps: the AFTER intervals after it, while a background write runs;
- save: from the save's start to its publication (events.jsonl, `save_s`).

    python benchmarks/checkpoint_stall.py                 # 3 repeats, 100 steps, batch 256
    python benchmarks/checkpoint_stall.py --batch 1024    # longer steps, the same state
    python benchmarks/checkpoint_stall.py --repeats 1     # a quick look
    python benchmarks/checkpoint_stall.py --workers 1 --threads 1   # a core left to the writer
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

from alternation import rotated
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WARMUP = 5
AFTER = 3
EVERY = 20
FEATURES, HIDDEN, CLASSES = 1024, [2048, 2048, 1024], 10
# checkpoint: settings of each mode
MODES = {
    "process writer": {"async_save": True, "writer": "process"},
    "thread writer": {"async_save": True, "writer": "thread"},
    "in line": {"async_save": False},
}


def state_megabytes() -> float:
    widths = [FEATURES, *HIDDEN, CLASSES]
    parameters = sum(a * b + b for a, b in zip(widths, widths[1:]))
    return 3 * 4 * parameters / 1e6  # fp32 weights and AdamW's two moments


def job_yaml(steps: int, mode: dict, workers: int, batch: int, threads: int | None = None) -> str:
    return json.dumps({
        "name": "checkpoint-stall",
        "model": {"name": "mlp", "options": {"hidden": HIDDEN}},
        "data": {"source": "synthetic", "options": {"samples": 4096, "features": FEATURES,
                                                    "classes": CLASSES}},
        "optimizer": {"name": "adamw", "lr": 0.001},
        "train": {"steps": steps, "seed": 0, "global_batch_size": batch, "micro_batch_size": batch // workers},
        "strategy": {"name": "ddp"},
        "scaling": {"workers": workers, "threads_per_worker": threads},
        "checkpoint": {"every_steps": EVERY, "keep": 2, **mode},
    })  # JSON is YAML


def measure(steps: int, mode: dict, workers: int, batch: int, threads: int | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="stall-") as scratch:
        work = Path(scratch)
        (work / "job.yaml").write_text(job_yaml(steps, mode, workers, batch, threads))
        command = [sys.executable, "-m", "orchestrator.cli", "launch", str(work / "job.yaml"),
                   "--run-dir", str(work / "run")]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        if result.returncode != 0:
            raise RuntimeError(f"launch failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        records = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines()]
        events = [json.loads(line) for line in (work / "run" / "events.jsonl").read_text().splitlines()]
    ends = {r["step"]: r["time"] for r in records}
    interval = {s: ends[s] - ends[s - 1] for s in range(2, steps + 1)}  # step s: end of s-1 to end of s
    saved_at = [s for s in range(EVERY, steps, EVERY)]
    holding = {s + 1 for s in saved_at}
    after = {s + 1 + k for s in saved_at for k in range(1, AFTER + 1)}
    plain = [t for s, t in interval.items() if s > WARMUP and s not in holding and s < steps]
    return {
        "median_ms": 1000 * statistics.median(plain),
        "checkpoint_ms": [1000 * interval[s] for s in sorted(holding)],
        "after_ms": statistics.median(1000 * interval[s] for s in sorted(after) if s < steps),
        "save_s": [e["save_s"] for e in events if e["event"] == "checkpoint"][:-1],
    }


def render(args, runs: dict[tuple[int, str], list[dict]]) -> str:
    lines = [
        "# Checkpoint stall: background saves against in-line ones",
        "",
        f"DDP, MLP 1024-2048-2048-1024-10, AdamW: {state_megabytes():.1f} MB of training state; "
        f"workers of {_threads(args.threads)}, global batch {args.batch}, a checkpoint every {EVERY} steps, {args.steps} steps; "
        f"{args.repeats} alternating repeats. Machine: {os.cpu_count()} cores. Ratios are to the "
        "median step of the same run.",
        "",
        "    " + shlex.join(["python", "benchmarks/checkpoint_stall.py", *sys.argv[1:]]),
        "",
        "| workers | mode | median step (ms) | checkpoint steps (ms, median) | ratio | worst ratio | "
        f"next {AFTER} steps (ms) | save to published (s) |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (workers, mode), measured in runs.items():
        median = statistics.median(m["median_ms"] for m in measured)
        held = [t for m in measured for t in m["checkpoint_ms"]]
        ratios = [t / m["median_ms"] for m in measured for t in m["checkpoint_ms"]]
        after = statistics.median(m["after_ms"] for m in measured)
        save = statistics.median(s for m in measured for s in m["save_s"])
        lines.append(f"| {workers} | {mode} | {median:.1f} | {statistics.median(held):.1f} | "
                     f"{statistics.median(ratios):.3f} | {max(ratios):.3f} | {after:.1f} | {save:.2f} |")
    return "\n".join(lines) + "\n"


def _threads(threads: int | None) -> str:
    if threads is None:
        return "the cores divided by the workers as threads"
    return f"{threads} thread" + ("s" if threads > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--workers", default="2,1")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="scaling.threads_per_worker")
    parser.add_argument("--out", type=Path, default=None, help="default: results/checkpoint_stall_bBATCH.md")
    args = parser.parse_args()
    configurations = [(int(w), mode) for w in args.workers.split(",") for mode in MODES]
    runs: dict[tuple[int, str], list[dict]] = {c: [] for c in configurations}
    for repeat in range(args.repeats):
        for workers, mode in rotated(configurations, repeat):
            numbers = measure(args.steps, MODES[mode], workers, args.batch, args.threads)
            runs[(workers, mode)].append(numbers)
            print(json.dumps({"repeat": repeat, "workers": workers, "mode": mode, **numbers}), flush=True)
    report = render(args, runs)
    (args.out or RESULTS / f"checkpoint_stall_b{args.batch}.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
