"""Page faults and step time of the workers of a real launch, against another checkout.

`orchestrator launch benchmarks/jobs/gpt2_logits.yaml` (a transformers GPT-2 from a
config, DDP on 2 CPU workers of the embedded Ray; `--job` another) from this checkout and
from `--against` (e.g. `git worktree add /tmp/before REV`), alternately. For each launch:
each worker's minor page faults (`/proc/PID/stat`) per step between steps 12 and 32
(`--window`), and the mean step time over the same steps, from metrics.jsonl.
allocator_faults.py measures the same in one process; this shows it holds in the workers
Ray starts.

    python benchmarks/allocator_faults_in_a_job.py --against /tmp/before --repeats 2
    python benchmarks/allocator_faults_in_a_job.py --against /tmp/before \
        --job benchmarks/jobs/gpt2_large_vocab.yaml --out benchmarks/results/allocator_faults_large_vocab.md
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from alternation import alternate
ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "benchmarks" / "jobs" / "gpt2_logits.yaml"
RESULTS = ROOT / "benchmarks" / "results" / "allocator_faults_in_a_job.md"


def stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command's name: state, ppid, ... (proc(5), from field 3)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def minor_faults(pid: int) -> int:
    return int(stat_fields(pid)[7])


def descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        pid = int(stat_fields(pid)[1])
        if pid == ancestor:
            return True
    return False


def train_workers(launch_pid: int) -> list[int]:
    """The processes of this launch's worker actors (Ray names them after the actor class;
    the embedded Ray's raylet, their parent, is the launch's child), not another run's."""
    found = subprocess.run(["pgrep", "-f", "ray::TrainWorker"], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split() if descends_from(int(pid), launch_pid)]


def measure(checkout: Path, args) -> dict:
    """One launch from `checkout` (its code first on the path: the command runs there)."""
    sets = [arg for override in args.overrides for arg in ("--set", override)]
    with tempfile.TemporaryDirectory(prefix="faults-") as scratch:
        metrics = Path(scratch) / "run" / "metrics.jsonl"
        launch = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "launch", str(args.job.resolve()),
                                   "--run-dir", str(metrics.parent), *sets], cwd=checkout, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)
        marks = []
        for step in args.window:
            while launch.poll() is None and (not metrics.exists() or len(metrics.read_text().splitlines()) < step):
                time.sleep(0.05)
            record = json.loads(metrics.read_text().splitlines()[step - 1]) if launch.poll() is None else None
            marks.append((record, {pid: minor_faults(pid) for pid in train_workers(launch.pid)}))
        error = launch.communicate()[1]
        if launch.returncode != 0 or any(record is None for record, _ in marks):
            raise RuntimeError(f"launch from {checkout} failed:\n{error[-3000:]}")
    (first, before), (last, after) = marks
    steps = last["step"] - first["step"]
    # The spare worker (started once the attempt runs) hardly steps; the two busiest are the ranks.
    per_step = sorted(((after[pid] - before[pid]) / steps for pid in after if pid in before), reverse=True)[:2]
    return {"faults_per_step": per_step, "step_ms": 1000 * (last["time"] - first["time"]) / steps}


def render(args, runs: dict[str, list[dict]]) -> str:
    job = args.job.resolve().relative_to(ROOT) if args.job.resolve().is_relative_to(ROOT) else args.job
    lines = [
        "# Page faults in the workers of a real launch",
        "",
        f"`orchestrator launch {job}` (the job file says what it is), steps "
        f"{args.window[0]}-{args.window[1]}; {args.repeats} alternating launches of each checkout (each "
        "launch in brackets).",
        "",
        "    " + shlex.join(["python", "benchmarks/allocator_faults_in_a_job.py", *sys.argv[1:]]),
        "",
        "| checkout | faults / step, each rank | step (ms) |",
        "| --- | --- | ---: |",
    ]
    for name, each in runs.items():
        faults = "; ".join(", ".join(f"{f:,.0f}" for f in r["faults_per_step"]) for r in each)
        steps = ", ".join(f"{r['step_ms']:.0f}" for r in each)
        lines.append(f"| {name} | {faults} | {statistics.median(r['step_ms'] for r in each):.0f} ({steps}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", type=Path, required=True, help="another checkout to launch from")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--job", type=Path, default=JOB)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a job override, as launch's")
    parser.add_argument("--window", type=lambda text: tuple(int(s) for s in text.split(",")), default=(12, 32),
                        help="the steps measured between: FROM,TO")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    checkouts = {"this checkout": ROOT, f"--against ({args.against.name})": args.against}
    runs = alternate(tuple(checkouts), args.repeats, lambda name: measure(checkouts[name], args), "checkout")
    report = render(args, runs)
    args.out.write_text(report)
    print(report)


if __name__ == "__main__":
    main()
