"""A hand-written DDP loop under Ray Train's TorchTrainer: the other peer the
orchestrator's per-step time is measured against (benchmarks/step_tax.py).

    python benchmarks/peers/ray_train_ddp.py --workers 2 --steps 200 --out run.json
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def train_loop(config: dict) -> None:
    import torch
    import ray.train
    import ray.train.torch

    sys.path.insert(0, config["here"])
    from common import build_model, train

    torch.set_num_threads(1)
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(0)
    model = ray.train.torch.prepare_model(build_model())
    train(model, rank, world_size, config["steps"], config["global_batch"], Path(config["out"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--global-batch", type=int, default=256)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    cpus = (os.cpu_count() or 2) / args.workers  # the machine's cores, shared evenly
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"steps": args.steps, "global_batch": args.global_batch,
                           "out": str(args.out.resolve()), "here": str(HERE)},
        scaling_config=ScalingConfig(num_workers=args.workers, resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(storage_path=str(args.out.resolve().parent / "ray_train_storage")),
    )
    trainer.fit()
    ray.shutdown()


if __name__ == "__main__":
    main()
