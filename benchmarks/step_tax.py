"""The orchestrator's per-step time and start-up against hand-written peers, side by side.

The same DDP job three ways: `orchestrator launch` (embedded Ray, the elastic backend), a
hand-written loop under torchrun, and a hand-written loop under Ray Train's TorchTrainer
(benchmarks/peers/). MLP 256-1024-1024-10, AdamW, synthetic data, 2 workers of one
thread each. Repeats alternate the three (each repeat starts with the next one), and
every number is the median over the repeats.

- step time: the median interval between consecutive steps' ends, after the first
  --warmup steps (default 10) and without the last (which validates and checkpoints). Measured from
  the wall-clock time each loop records when a step is done, so whatever a loop does
  between steps (records, control, collectives of its own) is in it.
- launch to first step: from starting the command to the end of step 1.

    python benchmarks/step_tax.py                           # batches 256 and 2048, 3 repeats
    python benchmarks/step_tax.py --batches 256 --repeats 1 --steps 60   # a quick look
    python benchmarks/step_tax.py --steps 400 --warmup 150
    python benchmarks/step_tax.py --set scaling.spares=0     # the orchestrator's job changed
    python benchmarks/step_tax.py --peers-keep-freed-memory  # the peers with the workers' malloc settings

By default the orchestrator's job keeps a warm spare (`scaling.spares: 1`), which starts
once the first attempt runs, at idle priority, and on 2 cores is still importing during
the timed steps (about 9 % of a core at batch 2048).
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

from alternation import rotated
ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"
RESULTS = ROOT / "benchmarks" / "results" / "step_tax.md"
WORKERS = 2
RUNNERS = ("orchestrator", "torchrun", "ray_train")


def job_yaml(steps: int, global_batch: int) -> str:
    sys.path.insert(0, str(PEERS))
    from common import CLASSES, FEATURES, HIDDEN, LR, SAMPLES

    return json.dumps({
        "name": "step-tax",
        "model": {"name": "mlp", "options": {"hidden": [HIDDEN, HIDDEN]}},
        "data": {"source": "synthetic", "options": {"samples": SAMPLES, "features": FEATURES,
                                                    "classes": CLASSES}},
        "optimizer": {"name": "adamw", "lr": LR},
        "train": {"steps": steps, "seed": 0, "global_batch_size": global_batch,
                  "micro_batch_size": global_batch // WORKERS},
        "strategy": {"name": "ddp"},
        "scaling": {"workers": WORKERS},
        "checkpoint": {"every_steps": 0},
    })  # JSON is YAML


def command(runner: str, work: Path, steps: int, global_batch: int, overrides: tuple[str, ...] = ()) -> list[str]:
    python = sys.executable
    out = str(work / "peer.json")
    if runner == "orchestrator":
        job = work / "job.yaml"
        job.write_text(job_yaml(steps, global_batch))
        sets = [arg for override in overrides for arg in ("--set", override)]
        return [python, "-m", "orchestrator.cli", "launch", str(job), "--run-dir", str(work / "run"), *sets]
    if runner == "torchrun":
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORKERS}",
                str(PEERS / "torchrun_ddp.py"), "--steps", str(steps), "--global-batch", str(global_batch),
                "--out", out]
    return [python, str(PEERS / "ray_train_ddp.py"), "--workers", str(WORKERS), "--steps", str(steps),
            "--global-batch", str(global_batch), "--out", out]


def step_ends(runner: str, work: Path) -> list[float]:
    if runner == "orchestrator":
        lines = (work / "run" / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["time"] for line in lines]
    return json.loads((work / "peer.json").read_text())["step_ends"]


def measure(runner: str, steps: int, global_batch: int, warmup: int = 10, overrides: tuple[str, ...] = (),
            peer_env: dict[str, str] | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(peer_env if runner != "orchestrator" and peer_env else {})}
    with tempfile.TemporaryDirectory(prefix=f"tax-{runner}-") as scratch:
        work = Path(scratch)
        started = time.time()
        result = subprocess.run(command(runner, work, steps, global_batch, overrides), cwd=ROOT,
                                capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"{runner} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        ends = step_ends(runner, work)
    intervals = [b - a for a, b in zip(ends, ends[1:])][warmup:-1]
    return {"step_ms": 1000 * statistics.median(intervals), "first_step_s": ends[0] - started}


def render(args, table: dict) -> str:
    lines = [
        "# Per-step time and start-up against hand-written loops",
        "",
        f"DDP, MLP 256-1024-1024-10, AdamW, {WORKERS} workers of one thread, {args.steps} steps, "
        f"timed after the first {args.warmup}; "
        f"median of {args.repeats} alternating repeats (each repeat's value in brackets). "
        f"Machine: {os.cpu_count()} cores."
        + (f" The orchestrator's job with {', '.join(args.overrides)}." if args.overrides else "")
        + (" The peers run with the orchestrator's malloc settings (glibc keeps freed memory)."
           if args.peers_keep_freed_memory else ""),
        "",
        "    " + shlex.join(["python", "benchmarks/step_tax.py", *sys.argv[1:]]),
        "",
        "| global batch | runner | step (ms) | vs torchrun | vs Ray Train | launch to first step (s) |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for batch, runs in table.items():
        median = {r: statistics.median(m["step_ms"] for m in runs[r]) for r in runs}
        for runner in RUNNERS:
            each = ", ".join(f"{m['step_ms']:.1f}" for m in runs[runner])
            first = statistics.median(m["first_step_s"] for m in runs[runner])
            lines.append(
                f"| {batch} | {runner} | {median[runner]:.1f} ({each}) | "
                f"{median[runner] / median['torchrun']:.3f} | {median[runner] / median['ray_train']:.3f} | "
                f"{first:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="256,2048")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=10, help="steps left out at the start")
    parser.add_argument("--runners", default=",".join(RUNNERS))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="KEY=VALUE for the orchestrator's job (repeatable)")
    parser.add_argument("--peers-keep-freed-memory", action="store_true",
                        help="run the peers with the malloc settings every orchestrator worker sets itself")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from orchestrator.training.allocator import as_environment

    peer_env = as_environment() if args.peers_keep_freed_memory else None
    runners = args.runners.split(",")
    table: dict[int, dict[str, list[dict]]] = {}
    for batch in (int(b) for b in args.batches.split(",")):
        table[batch] = {r: [] for r in runners}
        for repeat in range(args.repeats):
            for runner in rotated(runners, repeat):
                numbers = measure(runner, args.steps, batch, args.warmup, tuple(args.overrides), peer_env)
                table[batch][runner].append(numbers)
                print(json.dumps({"batch": batch, "repeat": repeat, "runner": runner, **numbers}), flush=True)
    if set(runners) == set(RUNNERS):
        report = render(args, table)
        args.out.write_text(report)
        print(report)


if __name__ == "__main__":
    main()
