"""A hand-written DDP loop as torchrun runs it: the peer the orchestrator's per-step time
is measured against (benchmarks/step_tax.py).

    torchrun --standalone --nproc-per-node 2 benchmarks/peers/torchrun_ddp.py --steps 200 --out run.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import build_model, train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--global-batch", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = DistributedDataParallel(build_model())
    train(model, rank, world_size, args.steps, args.global_batch, args.out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
