"""Measured pipeline bubble against the theoretical (p-1)/(m+p-1), on CPU processes (gloo).

For each schedule (GPipe, 1F1B, and interleaved 1F1B with 2 stages per worker), pipeline
degree p and micro-batch count m, p processes run the `pipeline` strategy on a model of 2p
equal blocks and report the bubble the strategy measures in training (each pipeline rank's
idle share of its schedule's wall time, averaged over ranks and steps).

Two kinds of block:
  sleep    forward sleeps t, backward 2t: stage times are exact and need no CPU, so the
           number isolates the schedule's own idle time from the machine's core count.
  compute  Linear + tanh layers doing real matrix products; with more processes than cores,
           stages that should overlap take turns on a core, which the measurement shows.

    python benchmarks/pipeline_bubble.py                  # both kinds, writes the results file
    python benchmarks/pipeline_bubble.py --kinds sleep --steps 3
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results" / "pipeline_bubble.md"
SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")
DEGREES = (2, 4)
MICROBATCHES = (4, 8, 16)
ROWS_PER_MICROBATCH = 32
SLEEP_WIDTH = 16  # sleep blocks' own layer: a parameter to train, next to no compute


def _blocks(kind: str, n: int, sleep_s: float, width: int):
    import torch
    from torch import nn

    class Sleep(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            time.sleep(sleep_s)
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            time.sleep(2 * sleep_s)
            return grad

    class SleepBlock(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(width, width)

        def forward(self, x):
            return Sleep.apply(self.fc(x))

    def compute_block():
        return nn.Sequential(*(m for _ in range(2) for m in (nn.Linear(width, width), nn.Tanh())))

    return [SleepBlock() if kind == "sleep" else compute_block() for _ in range(n)]


def _rank(rank: int, world: int, port: int, kind: str, steps: int, sleep_s: float, width: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    import strategies
    from models import SequentialModel
    from strategies.mesh import ParallelDims

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = []
    for schedule in SCHEDULES:
        for m in MICROBATCHES:
            torch.manual_seed(0)
            model = SequentialModel(_blocks(kind, 2 * world, sleep_s, width))
            spec = strategies.get_strategy("pipeline")
            options = spec.options(pp=world, schedule=schedule, microbatches=m)
            strategy = spec.build(options, ParallelDims(world_size=world, dp=1, pp=world))
            strategy.setup(
                model,
                make_optimizer=lambda params: torch.optim.SGD(params, lr=1e-4),
                make_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
                device=torch.device("cpu"),
                precision="fp32",
            )
            inputs = torch.randn(m * ROWS_PER_MICROBATCH, width)
            targets = torch.zeros(m * ROWS_PER_MICROBATCH, width)
            per_step = []
            for step in range(steps + 2):  # two warm-up steps: shape inference, first touches
                strategy.forward_backward(inputs, targets, F.mse_loss, 1.0)
                strategy.step(None)
                record = strategy.metrics()
                if step >= 2:
                    per_step.append(record)
            if rank == 0:
                ranks = [
                    sum(r[f"pipeline_bubble_rank{i}"] for r in per_step) / len(per_step) for i in range(world)
                ]
                results.append(
                    {
                        "schedule": schedule,
                        "p": world,
                        "m": m,
                        "theory": per_step[0]["pipeline_bubble_theory"],
                        "measured": sum(ranks) / len(ranks),
                        "ranks": ranks,
                    }
                )
            dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        queue.put(results)


def run(kind: str, world: int, steps: int, sleep_s: float, width: int) -> list[dict]:
    context = mp.get_context("spawn")
    queue = context.Queue()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    processes = [
        context.Process(target=_rank, args=(r, world, port, kind, steps, sleep_s, width, queue))
        for r in range(world)
    ]
    for process in processes:
        process.start()
    results = queue.get(timeout=1800)
    for process in processes:
        process.join(timeout=60)
        if process.exitcode not in (0, None):
            raise RuntimeError(f"a rank exited with {process.exitcode}")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", nargs="+", default=["sleep", "compute"], choices=["sleep", "compute"])
    parser.add_argument("--steps", type=int, default=5, help="measured steps per configuration")
    parser.add_argument("--sleep-ms", type=float, default=10.0, help="forward time of one sleep block")
    parser.add_argument("--width", type=int, default=1024, help="width of the compute blocks' layers")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    command = "python benchmarks/pipeline_bubble.py " + " ".join(sys.argv[1:])
    load_before = os.getloadavg()[0]
    sections = []
    for kind in args.kinds:
        rows = []
        for world in DEGREES:
            started = time.time()
            width = SLEEP_WIDTH if kind == "sleep" else args.width
            rows += run(kind, world, args.steps, args.sleep_ms / 1000, width)
            print(f"{kind}, p={world}: {time.time() - started:.0f} s", flush=True)
        sections.append((kind, rows))

    lines = [
        "# Pipeline bubble: measured vs theoretical",
        "",
        f"Command: `{command.strip()}` (run from the repository root; PYTHONPATH set to it)",
        "",
        f"Machine: {os.cpu_count()} CPU cores, gloo, one process per pipeline rank, 1 thread each; "
        f"{args.steps} measured steps after 2 warm-up steps; model of 2p equal blocks; "
        f"{ROWS_PER_MICROBATCH} rows per micro-batch. Load average before the run: {load_before:.1f}, "
        f"after: {os.getloadavg()[0]:.1f} (other work on the machine takes cores from the stages).",
        "",
        "Measured: each pipeline rank's idle share of its schedule's wall time (1 - computing / wall),",
        "as the `pipeline_bubble` metric reports it in training, averaged over ranks and steps.",
        "Theory: (p-1)/(m+p-1) for GPipe and 1F1B; (p-1)/(v*m+p-1) for interleaved 1F1B with v = 2",
        "stages per worker. Both assume equal stage times, backward = 2 x forward, free communication.",
    ]
    for kind, rows in sections:
        detail = (
            f"forward sleeps {args.sleep_ms:g} ms per block, backward twice that; no CPU contention"
            if kind == "sleep"
            else f"2 x (Linear {args.width} x {args.width} + tanh) per block; p = 4 puts 4 busy "
            f"processes on {os.cpu_count()} cores"
        )
        lines += [
            "",
            f"## {kind} blocks ({detail})",
            "",
            "| schedule | p | m | theory | measured | per rank |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            per_rank = ", ".join(f"{b:.3f}" for b in r["ranks"])
            lines.append(
                f"| {r['schedule']} | {r['p']} | {r['m']} | {r['theory']:.3f} | {r['measured']:.3f} | {per_rank} |"
            )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
