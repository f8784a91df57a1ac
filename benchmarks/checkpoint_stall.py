"""How long training stalls for a checkpoint: background saves against in-line ones.

One DDP job, `orchestrator launch` on the embedded Ray, five times per repeat: with
`checkpoint.async_save: true` and `writer: process` (each rank's state copied into
shared memory while the next step computes, and written by a process of the rank's
own), with `writer: thread` (handed over at the step and written by a thread of the
training process, in the turns each step lends it where training takes every core:
`pace: auto`), the same with `pace: free` (as fast as it goes, at idle priority), with
`async_save: false` (written before the next step), and with no checkpoints but the
end's: the control, whose steps show what training costs without saves. MLP
1024-2048-2048-1024-10 (8.4M parameters), AdamW: 100.7 MB of training state
(parameters and both moments); global batch 256 (or --batch), a checkpoint every 20 steps; at 2
workers and at 1. By default every core of the machine trains: a worker gets the cores
divided by the workers as torch threads (execution/resources.py), so 1 worker on 2 cores
trains with 2 threads, and the background write takes CPU from the step. `--threads 1`
sets `scaling.threads_per_worker`: 1 worker then leaves a core to the writer, as a GPU
host's spare cores do. Repeats alternate the modes.

Times are intervals between consecutive steps' ends (the wall-clock time each metrics
record keeps), so whatever runs between steps is in them:
- median step: every interval after the first SETTLED steps, but those holding a
  checkpoint and the last;
- checkpoint step: the interval holding a save's call (from the end of step 40 to the
  end of step 41, ...); the end-of-run save is left out (the run waits for it), and so is
  the first (step 20), which falls in the SETTLED steps;
- the next steps: the AFTER intervals after it, while a background write runs;
- save: from the save's start to its publication (events.jsonl, `save_s`);
- mean step: every interval after the first SETTLED steps but the last, checkpoints
  and all: what the run's throughput pays for its saves, against the control's.

Why SETTLED: this MLP's gradients pass through subnormal floats around steps 9-21 of
the run, which makes its backward 10-30x slower on a CPU (the control shows it; with
`torch.set_flush_denormal(True)` the steps stay at their median). Every mode pays the
same there, and it would swamp what the saves cost.

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
SETTLED = 25  # steps left out of every statistic (see above)
AFTER = 3
EVERY = 20
NONE = "no checkpoints"  # the control: only the end's save, which the run waits for
FEATURES, HIDDEN, CLASSES = 1024, [2048, 2048, 1024], 10
# checkpoint: settings of each mode
MODES = {
    "process writer": {"async_save": True, "writer": "process"},
    "thread writer": {"async_save": True, "writer": "thread"},
    "free thread writer": {"async_save": True, "writer": "thread", "pace": "free"},
    "in line": {"async_save": False},
    NONE: {"every_steps": 0},
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
    saved_at = [s for s in range(EVERY, steps, EVERY) if s + 1 > SETTLED]
    holding = {s + 1 for s in saved_at}
    after = {s + 1 + k for s in saved_at for k in range(1, AFTER + 1)}
    plain = [t for s, t in interval.items() if s > SETTLED and s not in holding and s < steps]
    return {
        "median_ms": 1000 * statistics.median(plain),
        "mean_ms": 1000 * statistics.mean(t for s, t in interval.items() if s > SETTLED and s < steps),
        "checkpoint_ms": [1000 * interval[s] for s in sorted(holding)],
        "after_ms": statistics.median(1000 * interval[s] for s in sorted(after) if s < steps),
        "save_s": [e["save_s"] for e in events if e["event"] == "checkpoint" and e["step"] in saved_at],
    }


def render(args, runs: dict[tuple[int, str], list[dict]]) -> str:
    lines = [
        "# Checkpoint stall: background saves against in-line ones",
        "",
        f"DDP, MLP 1024-2048-2048-1024-10, AdamW: {state_megabytes():.1f} MB of training state; "
        f"workers of {_threads(args.threads)}, global batch {args.batch}, a checkpoint every {EVERY} steps, {args.steps} steps; "
        f"{args.repeats} alternating repeats. Machine: {os.cpu_count()} cores. Ratios are to the "
        f"median step of the same run; the last two columns to the same repeat's run with {NONE} "
        "(its own row shows how the steps at the checkpoints' places vary with none).",
        "",
        "    " + shlex.join(["python", "benchmarks/checkpoint_stall.py", *sys.argv[1:]]),
        "",
        "| workers | mode | median step (ms) | checkpoint steps (ms, median) | ratio | worst ratio | "
        f"next {AFTER} steps (ms) | save to published (s) | checkpoint step / {NONE}'s median | "
        f"mean step / {NONE}'s |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (workers, mode), measured in runs.items():
        control = runs.get((workers, NONE), [])
        median = statistics.median(m["median_ms"] for m in measured)
        held = [t for m in measured for t in m["checkpoint_ms"]]
        ratios = [t / m["median_ms"] for m in measured for t in m["checkpoint_ms"]]
        after = statistics.median(m["after_ms"] for m in measured)
        saves = [s for m in measured for s in m["save_s"]]
        save = f"{statistics.median(saves):.2f}" if saves else "-"
        # repeat by repeat: the control ran beside each run, in the same rotation
        to_control = [t / c["median_ms"] for m, c in zip(measured, control) for t in m["checkpoint_ms"]]
        mean_ratio = [m["mean_ms"] / c["mean_ms"] for m, c in zip(measured, control)]
        lines.append(f"| {workers} | {mode} | {median:.1f} | {statistics.median(held):.1f} | "
                     f"{statistics.median(ratios):.3f} | {max(ratios):.3f} | {after:.1f} | {save} | "
                     f"{_median(to_control)} | {_median(mean_ratio)} |")
    return "\n".join(lines) + "\n"


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.3f}" if values else "-"


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
    parser.add_argument("--modes", default=",".join(MODES), help="which of: " + ", ".join(MODES))
    parser.add_argument("--out", type=Path, default=None, help="default: results/checkpoint_stall_bBATCH.md")
    args = parser.parse_args()
    unknown = set(args.modes.split(",")) - set(MODES)
    if unknown:
        parser.error(f"--modes: unknown {sorted(unknown)}; choose from {list(MODES)}")
    configurations = [(int(w), mode) for w in args.workers.split(",") for mode in MODES
                      if mode in args.modes.split(",")]
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
