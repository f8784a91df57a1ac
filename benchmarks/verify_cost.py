"""What `launch`'s check costs: for each example job, its full run with the check forced
on (`strategy.verify: true`), the check's time beside the whole run's, from the run's
own summary.json (one launch each, so both share the same machine at the same time).

    python benchmarks/verify_cost.py --out benchmarks/results/verify_cost.md
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def launch(job: Path, run_dir: Path) -> tuple[dict | None, str]:
    command = [sys.executable, "-m", "orchestrator.cli", "launch", str(job), "--run-dir", str(run_dir),
               "--set", "strategy.verify=true"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=1800)
    summary = run_dir / "summary.json"
    if result.returncode != 0 or not summary.is_file():
        return None, (result.stderr.strip().splitlines() or ["no output"])[0]
    return json.loads(summary.read_text()), ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--jobs", nargs="*", type=Path, default=sorted((ROOT / "examples").glob("*.yaml")))
    args = parser.parse_args()
    rows = ["| example | strategy | workers | steps | check (s) | waiting for workers (s) | reference (s) "
            "| added by the check (s) | whole run (s) | added / run |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    notes, started = [], time.time()
    for job in args.jobs:
        summary, error = launch(job, Path(tempfile.mkdtemp(prefix="verify-cost-")) / "run")
        if summary is None:
            notes.append(f"- {job.name}: not run: {error}")
            continue
        check = summary.get("verify", {})
        if "seconds" not in check:
            notes.append(f"- {job.name}: the check was skipped: {check.get('skipped', 'no verify event')}")
            continue
        added = check["seconds"] - check["workers_ready_seconds"]  # training waits for the workers too
        rows.append(f"| {job.name} | {check['layout']} | {check['workers']} | {summary['steps']} | "
                    f"{check['seconds']:.1f} | {check['workers_ready_seconds']:.1f} | {check['reference_seconds']:.1f} | "
                    f"{added:.1f} | {summary['wall_time_s']:.1f} | {added / summary['wall_time_s']:.0%} |")
        print(rows[-1], flush=True)
    minutes = (time.time() - started) / 60
    args.out.write_text("\n".join([
        "# The launch check's cost beside the whole run",
        "",
        "`launch` with `strategy.verify: true`: the check (waiting for the workers, which training does",
        "anyway; the sequential reference and its reordered twin; 3 steps of the job's own layout; the",
        "comparison), and what it adds (all but the wait), against the whole run's wall time, which",
        "includes it, Ray's start and the data preparation. One launch per example, on 2 shared CPU",
        "cores, so the numbers of a row come from the same machine state.",
        "",
        f"Command ({minutes:.0f} minutes):",
        "",
        "    python benchmarks/verify_cost.py --out benchmarks/results/verify_cost.md",
        "",
        *rows,
        "",
        *(["Not measured:", *notes, ""] if notes else []),
    ]))


if __name__ == "__main__":
    main()
