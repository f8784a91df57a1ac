"""The job.yaml as a hand-written DDP loop under Ray Train's TorchTrainer
(`orchestrator bench --peers`).

    python benchmarks/peers/ray_train_job.py job.yaml OUT_DIR --workers 2
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def train_loop(config: dict) -> None:
    import torch
    import ray.train
    import ray.train.torch

    sys.path.insert(0, config["here"])
    from job_loop import run_job

    context = ray.train.get_context()
    torch.set_num_threads(config["threads"])
    run_job(config["job"], config["out"], context.get_world_rank(), context.get_world_size(),
            ray.train.torch.prepare_model)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("job")
    parser.add_argument("out", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    cpus = len(os.sched_getaffinity(0))
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"job": str(Path(args.job).resolve()), "out": str(args.out.resolve()),
                           "here": str(HERE), "threads": max(1, cpus // args.workers)},
        scaling_config=ScalingConfig(num_workers=args.workers, resources_per_worker={"CPU": cpus / args.workers}),
        run_config=RunConfig(storage_path=str(args.out.resolve() / "ray_train_storage")),
    )
    trainer.fit()
    ray.shutdown()


if __name__ == "__main__":
    main()
