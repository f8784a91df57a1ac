"""The job.yaml as a hand-written DDP loop under torchrun (`orchestrator bench --peers`).

    torchrun --standalone --nproc-per-node 2 benchmarks/peers/torchrun_job.py job.yaml OUT_DIR
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from job_loop import run_job  # noqa: E402


def main(job: str, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world_size))
    if world_size > 1:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if world_size > 1 else 0
    try:
        run_job(job, out, rank, world_size, DistributedDataParallel if world_size > 1 else (lambda model: model))
    finally:
        import ray

        ray.shutdown()  # rank 0's, started for the data: stopped in time, not by exit handlers
    if world_size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:3])
