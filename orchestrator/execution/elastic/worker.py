"""The worker actor: one process, one rank, kept warm across attempts.

It fetches the prepared data and imports torch once; each attempt joins a fresh
process group and runs the training loop from the newest valid checkpoint. A
failure of a peer surfaces as a collective error, after which the actor is ready
for the next attempt.
"""
from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import ray

from orchestrator.execution.elastic.failures import AttemptFailed, report_exception

# A collective that waits longer than this on a peer that is gone fails the attempt.
COLLECTIVE_TIMEOUT = timedelta(seconds=60)


@ray.remote(max_restarts=0, max_concurrency=2)
class TrainWorker:
    def __init__(self, spec, run_dir: str, data_ref_holder: list, threads: int, use_gpu: bool) -> None:
        import torch

        from orchestrator.training.context import configure_runtime

        self.spec = spec
        self.run_dir = Path(run_dir)
        self.data = ray.get(data_ref_holder[0])
        self.use_gpu = use_gpu
        configure_runtime(spec, threads)
        self.device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
        if use_gpu:
            torch.cuda.set_device(self.device)  # Ray exposes this actor's one GPU as cuda:0

    def ready(self) -> dict[str, Any]:
        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def rendezvous_address(self) -> tuple[str, int]:
        """An address on this node for rank 0 to host the process group's store."""
        ip = ray.util.get_node_ip_address()
        with socket.socket() as sock:
            sock.bind((ip, 0))
            return ip, sock.getsockname()[1]

    def run_attempt(self, rank: int, world_size: int, address: tuple[str, int], attempt: int,
                    failure: dict | None, owner: str, driver: tuple[str, int]) -> str:
        """Join the attempt's process group and train. Whatever the attempt raises comes
        back as `AttemptFailed`, with the step this rank was on.

        Raises:
            AttemptFailed: the report of the exception.
        """
        import torch.distributed as dist

        from orchestrator.training.context import WorkerContext
        from orchestrator.training.loop import train

        context = WorkerContext(
            spec=self.spec, run_dir=self.run_dir, data=self.data, rank=rank,
            world_size=world_size, device=self.device, attempt=attempt, failure=failure,
            owner=owner, driver=driver,
        )
        try:
            dist.init_process_group(
                "nccl" if self.use_gpu else "gloo", init_method=f"tcp://{address[0]}:{address[1]}",
                rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT,
            )
            try:
                return train(context)
            finally:
                dist.destroy_process_group()
        except Exception as error:
            raise AttemptFailed(report_exception(error, rank, context.step)) from error
