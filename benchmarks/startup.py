"""From `orchestrator launch` to the end of the first step, for the quickstart, by phase.

Runs `orchestrator launch examples/quickstart.yaml` (embedded Ray) REPEATS times and
reports the median of each phase, from the wall-clock times the run writes:
- to attempt: from starting the command to the controller starting attempt 1 (Python and
  imports, the job's checks, Ray, the data, the workers);
- to started: to rank 0 starting to train (process group, model, strategy, resume);
- to step 1: to the end of the first step.

The hand-written peers' start-up, for a job of the same shape, is in step_tax.md.
With `--against DIR` (another checkout, e.g. `git worktree add /tmp/before REV`) both
are measured, alternately, and the table has a column each.

    python benchmarks/startup.py                # 5 repeats
    python benchmarks/startup.py --against /tmp/before --repeats 6
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

from alternation import alternate
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "startup.md"
PHASES = ("to attempt", "to started", "to step 1")


def measure(checkout: Path = ROOT) -> dict[str, float]:
    """One launch of the quickstart from `checkout` (its code first on the path)."""
    with tempfile.TemporaryDirectory(prefix="startup-") as scratch:
        run_dir = Path(scratch) / "run"
        command = [sys.executable, "-m", "orchestrator.cli", "launch", "examples/quickstart.yaml",
                   "--run-dir", str(run_dir), "--set", "train.steps=20"]
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        started = time.time()
        result = subprocess.run(command, cwd=checkout, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"launch failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")
        events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
        first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    attempt = next(e["time"] for e in events if e["event"] == "attempt")
    training = next(e["time"] for e in events if e["event"] == "started")
    return {"to attempt": attempt - started, "to started": training - started, "to step 1": first["time"] - started}


def render(args, runs: dict[str, list[dict[str, float]]]) -> str:
    lines = [
        "# Launch to first step: the quickstart",
        "",
        f"`orchestrator launch examples/quickstart.yaml` on the embedded Ray (2 workers and a spare); "
        f"seconds from starting the command, median of {args.repeats} (each run in brackets"
        + (", the checkouts alternating" if len(runs) > 1 else "") + f"). Machine: {os.cpu_count()} cores.",
        "",
        "    " + shlex.join(["python", "benchmarks/startup.py", *sys.argv[1:]]),
        "",
        "| phase | " + " | ".join(runs) + " |",
        "| --- |" + " ---: |" * len(runs),
    ]
    for phase in PHASES:
        cells = []
        for measured in runs.values():
            each = ", ".join(f"{r[phase]:.1f}" for r in measured)
            cells.append(f"{statistics.median(r[phase] for r in measured):.1f} ({each})")
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--against", type=Path, default=None, help="another checkout, measured alternately")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    checkouts = {"this checkout": ROOT}
    if args.against is not None:
        checkouts["--against"] = args.against.resolve()
    runs = alternate(list(checkouts), args.repeats, lambda name: measure(checkouts[name]), "checkout")
    report = render(args, runs)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
