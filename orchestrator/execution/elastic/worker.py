"""The worker actor: one process, one rank, kept warm across attempts.

It fetches the prepared data and imports torch once; each attempt joins a fresh
process group and runs the training loop from the newest valid checkpoint. A
failure of a peer surfaces as a collective error, after which the actor is ready
for the next attempt.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import ray

from orchestrator.execution.failures import AttemptFailed, code_frames, report_exception
from orchestrator.run.storage import run_path
from orchestrator.training.cpu_priority import run_when_idle


def import_training(at_idle_priority: bool) -> None:
    """Import what an attempt runs (torch, the loop) while the worker starts, not in its
    first attempt. A worker started beside a running attempt (a spare, a replacement of
    one) imports on a thread at idle CPU priority: where ranks share cores it takes only
    what training leaves, instead of slowing every rank's steps for seconds."""
    def load() -> None:
        if at_idle_priority:
            run_when_idle()
        import torch._dynamo  # noqa: F401  (every optimizer's first step imports it: 0.9 s)
        import torch.distributed  # noqa: F401
        import orchestrator.training.loop  # noqa: F401

    if not at_idle_priority:
        load()
        return
    thread = threading.Thread(target=load, name="imports-at-idle-priority")
    thread.start()
    thread.join()


@ray.remote(max_restarts=0, max_concurrency=2)
class TrainWorker:
    def __init__(self, spec, run_dir: str, threads: int, use_gpu: bool, beside_training: bool = False) -> None:
        import_training(at_idle_priority=beside_training)
        import torch

        from orchestrator.training.context import configure_runtime

        self.spec = spec
        self.run_dir = run_path(run_dir)
        # The prepared data comes with the first job given to this worker: workers start
        # (and import torch) while the driver is still preparing it.
        self.data = None
        self.use_gpu = use_gpu
        self.attempt_thread: int | None = None  # the thread running run_attempt, for `where`
        self.process_group = None  # the last attempt's, kept until the next one (see run_attempt)
        configure_runtime(spec, threads)
        self.device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
        if use_gpu:
            torch.cuda.set_device(self.device)  # Ray exposes this actor's one GPU as cuda:0

    def ready(self) -> dict[str, Any]:
        return {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}

    def memory_bytes(self) -> dict[str, int]:
        """Memory a job alone on this worker could use: its device's (the GPU's, or the
        host's free memory on a CPU worker) and the host's free memory."""
        import torch

        host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        device = torch.cuda.get_device_properties(self.device).total_memory if self.use_gpu else host
        return {"device": device, "host": host}

    def rendezvous_address(self) -> tuple[str, int]:
        """An address on this node for rank 0 to host the process group's store."""
        ip = ray.util.get_node_ip_address()
        with socket.socket() as sock:
            sock.bind((ip, 0))
            return ip, sock.getsockname()[1]

    def run_attempt(self, rank: int, world_size: int, address: tuple[str, int], attempt: int,
                    failure: dict | None, owner: str, driver: tuple[str, int],
                    data_holder: list, job: tuple[Any, str] | None = None) -> str:
        """Join the attempt's process group and train. Whatever the attempt raises comes
        back as `AttemptFailed`, with the step this rank was on. `job` (spec, run
        directory) trains another job than the worker's own: the launch check's layout.

        Raises:
            AttemptFailed: the report of the exception.
        """
        import torch.distributed as dist

        from orchestrator.training.context import WorkerContext
        from orchestrator.training.loop import train

        self._receive(data_holder)
        self.attempt_thread = threading.get_ident()
        spec, run_dir = (job[0], run_path(job[1])) if job is not None else (self.spec, self.run_dir)
        context = WorkerContext(
            spec=spec, run_dir=run_dir, data=self.data, rank=rank,
            world_size=world_size, device=self.device, attempt=attempt, failure=failure,
            owner=owner, driver=driver,
        )
        self.process_group = None  # the previous attempt's group: its collectives ended long ago
        try:
            # Where peers reach rank 0's host; its checkpoint writer hosts a store there too.
            os.environ["MASTER_ADDR"] = address[0]
            # A collective waits this long for a peer; then it fails on the ranks that wait.
            dist.init_process_group(
                "nccl" if self.use_gpu else "gloo", init_method=f"tcp://{address[0]}:{address[1]}",
                rank=rank, world_size=world_size,
                timeout=timedelta(seconds=spec.failure.collective_timeout_s),
            )
            # Hold the group beyond the attempt. If a failed attempt's model (DDP's reducer)
            # held the last reference, freeing it would run gloo's destructor with the GIL
            # held while gloo's own thread may need the GIL to drop the failed collective:
            # a deadlock in torch (pytorch/pytorch#56297), seen after collective timeouts.
            self.process_group = dist.group.WORLD
            try:
                return train(context)
            finally:
                dist.destroy_process_group()
        except Exception as error:
            raise AttemptFailed(report_exception(error, rank, context.step)) from error

    def _receive(self, data_holder: list) -> None:
        """Fetch the prepared data (a reference in a list: Ray passes it unresolved) once."""
        if self.data is None:
            self.data = ray.get(data_holder[0])

    def run_alone(self, spec, run_dir: str, data_holder: list, on_host: bool = False) -> None:
        """Train `spec` here with no process group: the launch check's sequential
        reference, on the same kind of device as the layout it is compared with (or in
        host memory, `on_host`, when the whole model does not fit the device)."""
        import torch

        from orchestrator.verify.reference import run_reference

        self._receive(data_holder)
        run_reference(spec, self.data, run_path(run_dir), device=torch.device("cpu") if on_host else self.device)

    def where(self) -> tuple[str, ...]:
        """Where the running attempt is in the code, innermost frame first: asked of a rank
        that did not return when its peers' collective timed out (it runs on the actor's
        second thread)."""
        frame = sys._current_frames().get(self.attempt_thread)
        return code_frames(traceback.extract_stack(frame)) if frame is not None else ()
