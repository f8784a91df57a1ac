"""The hand-written DDP loop the peers run on any job.yaml, for `orchestrator bench --peers`.

It takes from the orchestrator only what defines the job (the model built from
`model:`, the prepared data, the optimizer and schedule, the global sample order), and
none of its machinery: no strategy, controller, checkpoints or directives. Rank 0
writes metrics.jsonl (`step`, `time`, `loss`, `step_time_s`, `world_size`) the way a
launched run does, so the bench measures every run the same way.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path


def run_job(job: str, out: str, rank: int, world_size: int, wrap) -> None:
    """Train `job` on this rank; `wrap(model)` is the launcher's DDP wrapper."""
    import numpy as np
    import torch

    from orchestrator.config.loading import load_spec
    from orchestrator.data.sampler import GlobalBatchSampler
    from orchestrator.training.batches import batch_tensors
    from orchestrator.training.evaluation import loss_function
    from orchestrator.training.model import build_job_model
    from orchestrator.training.optim import build_optimizer, build_scheduler

    spec = load_spec(Path(job))
    data = _prepared(spec, rank, world_size)
    torch.manual_seed(spec.train.seed)  # the same initial weights on every rank
    model = build_job_model(spec, data.model_arguments())
    optimizer = build_optimizer(spec, model.parameters())
    scheduler = build_scheduler(spec, optimizer)
    model = wrap(model)
    loss_fn = loss_function(data.task)
    train = spec.train
    accumulation = train.global_batch_size // (train.micro_batch_size * world_size)
    sampler = GlobalBatchSampler(data.train.order, train.global_batch_size, train.seed)
    metrics = Path(out) / "metrics.jsonl"
    metrics.parent.mkdir(parents=True, exist_ok=True)
    for step in range(train.steps):
        started = time.perf_counter()
        ids = sampler.rank_batch_ids(step, rank, world_size)
        total = torch.zeros(2, dtype=torch.float64)
        for i, micro in enumerate(np.split(ids, accumulation)):
            inputs, targets = batch_tensors(data.train, micro, torch.device("cpu"))
            last = i == accumulation - 1
            with (model.no_sync() if not last and hasattr(model, "no_sync") else contextlib.nullcontext()):
                loss = loss_fn(model(inputs), targets)
                (loss / accumulation).backward()
            total += torch.tensor([float(loss.detach()), 1.0], dtype=torch.float64)
        if train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        if world_size > 1:
            torch.distributed.all_reduce(total)
        elapsed = time.perf_counter() - started
        if rank == 0:
            record = {"step": step + 1, "time": time.time(), "loss": float(total[0] / total[1]),
                      "step_time_s": elapsed, "samples_per_s": train.global_batch_size / elapsed,
                      "world_size": world_size}
            with open(metrics, "a") as handle:
                handle.write(json.dumps(record) + "\n")


def _prepared(spec, rank: int, world_size: int):
    """The job's data, prepared with Ray Data. Under Ray Train, Ray is already there and
    each worker prepares it; under torchrun rank 0 starts a Ray of its own for it (stopped
    by the script before it exits: no Ray thread left at exit) and sends the data to the
    other ranks."""
    import ray
    import torch.distributed as dist

    from orchestrator.data.pipeline import prepare_data

    if ray.is_initialized():
        return prepare_data(spec)
    data = None
    if rank == 0:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
        data = prepare_data(spec)
    if world_size > 1:
        box = [data]
        dist.broadcast_object_list(box, src=0)
        data = box[0]
    return data
