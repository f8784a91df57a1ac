"""The bench's sequential reference, as its own process: `python -m
orchestrator.bench.sequential JOB RUN_DIR` prepares the job's data and trains it in this
one process, on every core (or the GPU), with no torch.distributed. It writes what a
launched run writes: metrics.jsonl, usage.jsonl, checkpoints and the weights."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def main(job: str, run_dir: str) -> None:
    import torch

    from orchestrator.config.loading import load_spec
    from orchestrator.data.pipeline import prepare_data
    from orchestrator.verify.reference import run_reference

    spec = load_spec(Path(job))
    data = prepare_data(spec, Path(run_dir) / "data")
    device = torch.device("cuda", 0) if spec.scaling.use_gpu else torch.device("cpu")
    run_reference(spec, data, Path(run_dir), threads=len(os.sched_getaffinity(0)), device=device)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m orchestrator.bench.sequential JOB RUN_DIR")
    main(*sys.argv[1:])
