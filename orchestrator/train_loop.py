"""The loop every worker runs: build, resume, train, validate, checkpoint, export.

`train_worker` is Ray Train's `train_loop_per_worker`. Ray has already set up
torch.distributed (gloo on CPU, NCCL on GPU) when it starts. A restarted worker
group runs it again from the top and it resumes from the newest valid checkpoint.

Exercised by: orchestrator launch examples/quickstart.yaml
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import models
import strategies
from orchestrator.chaos import Chaos
from orchestrator.checkpoint import CheckpointManager, TrainerState
from orchestrator.collectives import all_reduce, barrier
from orchestrator.control import Directive, DirectiveReader, RunTakenOver, process_alive
from orchestrator.data import GlobalBatchSampler, PreparedData
from orchestrator.metrics import EventLog, MetricsLog
from orchestrator.optim import build_optimizer, build_scheduler
from orchestrator.plan import batch_layout
from orchestrator.spec import JobSpec


@dataclass
class WorkerContext:
    spec: JobSpec
    run_dir: Path
    data: PreparedData
    rank: int
    world_size: int
    device: torch.device
    attempt: int = 0
    # The failure this attempt recovers from, as the controller saw it; attached to
    # the first step record so metrics.jsonl shows detection, recovery and redone steps.
    failure: dict[str, Any] | None = None
    owner: str | None = None  # the driver this attempt belongs to (elastic backend)
    driver: tuple[str, int] | None = None  # (node id, pid) of that driver


class Outcome:
    FINISHED = "finished"
    STOPPED = "stopped"
    RESIZE = "resize"


def train_worker(config: dict[str, Any]) -> None:
    """Entry point on each Ray Train worker."""
    import ray
    import ray.train

    ctx = ray.train.get_context()
    spec: JobSpec = config["spec"]
    use_gpu = spec.scaling.use_gpu
    device = ray.train.torch.get_device() if use_gpu else torch.device("cpu")
    data = ray.get(config["data_ref"])
    worker = WorkerContext(
        spec=spec,
        run_dir=Path(config["run_dir"]),
        data=data,
        rank=ctx.get_world_rank(),
        world_size=ctx.get_world_size(),
        device=device,
    )
    configure_runtime(spec, config.get("threads_per_worker", 1))
    train(worker)


def configure_runtime(spec: JobSpec, threads: int) -> None:
    torch.set_num_threads(max(1, threads))
    if spec.train.deterministic:
        # cuBLAS needs a fixed workspace to be deterministic.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def loss_function(task: str):
    if task == "regression":
        return lambda output, target: F.mse_loss(output.squeeze(-1), target)
    if task == "lm":
        return lambda logits, target: F.cross_entropy(logits.flatten(0, 1), target.flatten())
    return F.cross_entropy


def train(w: WorkerContext) -> str:
    """Train from the newest valid checkpoint to `train.steps`, or until the controller
    asks to stop or resize. Returns an `Outcome`."""
    spec = w.spec
    events = EventLog(w.run_dir, enabled=w.rank == 0)
    layout = batch_layout(spec, w.world_size)

    # ---- build: model -> strategy (wrap / shard) -> optimizer and schedule ------------------
    torch.manual_seed(spec.train.seed)  # identical initial weights on every rank
    model = models.build_model(spec.model.name, spec.model.options, **w.data.model_arguments())
    strategy = strategies.get_strategy(spec.strategy.name).build(spec.strategy, layout.dims)
    strategy.configure_steps(
        strategies.StepShape(layout.micro_batch, layout.accumulation, spec.train.grad_clip)
    )
    strategy.setup(
        model,
        make_optimizer=lambda params: build_optimizer(spec, params),
        make_scheduler=lambda optimizer: build_scheduler(spec, optimizer),
        device=w.device,
        precision=spec.train.precision,
    )

    # ---- resume from the newest valid checkpoint, if any -----------------------------------
    checkpoints = CheckpointManager(w.run_dir, spec.checkpoint.keep, w.rank, w.world_size)
    step = 0
    latest = checkpoints.latest_valid()
    if latest is not None:
        step = checkpoints.load(latest, strategy.load).step
        events.write("resumed", step=step, checkpoint=latest.name, world_size=w.world_size)
    events.write("started", step=step, world_size=w.world_size, dims=layout.dims.__dict__)

    sampler = GlobalBatchSampler(len(w.data.train), layout.global_batch, spec.train.seed)
    metrics = MetricsLog(w.run_dir, enabled=w.rank == 0)
    loss_fn = loss_function(w.data.task)
    directives = DirectiveReader(w.run_dir, w.owner, w.attempt, w.rank, _driver_watch(w))
    chaos = Chaos(spec.chaos, w.run_dir, w.rank, w.world_size)
    failure = dict(w.failure, steps_redone=w.failure["last_step"] - step) if w.failure else None
    resize_requested = False

    # ---- train ------------------------------------------------------------------------------
    while step < spec.train.steps:
        started = time.perf_counter()
        lr = strategy.scheduler.get_last_lr()[0]
        loss, grad_norm = train_step(w, strategy, sampler, layout, loss_fn, step)
        step += 1
        elapsed = time.perf_counter() - started
        directive = directives.poll()
        if directive == Directive.ABANDON:
            raise RunTakenOver(f"{w.run_dir} is owned by a newer driver; this attempt stops")
        record = {
            "step": step,
            "loss": loss,
            "lr": lr,
            "world_size": w.world_size,
            "samples_per_s": layout.global_batch / elapsed,
            "step_time_s": elapsed,
            "epoch": sampler.epoch_of(step - 1),
            "accumulation": layout.accumulation,
        }
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        record.update({f"mem_{k}_bytes": v for k, v in strategy.memory_bytes().items()})
        record.update(strategy.metrics())
        if _due(step, spec.train.validate_every) or step == spec.train.steps:
            record.update(validate(w, strategy, loss_fn))
        if failure is not None:
            record["failure"] = dict(failure, recovery_s=time.time() - failure["detected_at"])
            failure = None
        metrics.write(record)

        # ---- checkpoint; act on the controller's directive ------------------------------
        resize_requested |= directive == Directive.RESIZE
        at_boundary = _due(step, spec.checkpoint.every_steps) or step == spec.train.steps
        if at_boundary or directive == Directive.STOP:
            state = TrainerState(step, w.world_size, layout.dims.dp, step * layout.global_batch)
            path = checkpoints.save(state, strategy.save)
            events.write("checkpoint", step=step, path=path.name)
        if directive == Directive.STOP and step < spec.train.steps:
            events.write("stopped", step=step)
            return Outcome.STOPPED
        if resize_requested and at_boundary and step < spec.train.steps:
            events.write("resize_boundary", step=step, world_size=w.world_size)
            return Outcome.RESIZE
        chaos.after_step(step)

    # ---- export the final weights -----------------------------------------------------------
    weights = strategy.full_model_state()
    if w.rank == 0:
        from safetensors.torch import save_file

        tensors = {k: v.detach().contiguous() for k, v in weights.items()}
        save_file(tensors, str(w.run_dir / "model.safetensors"))
        events.write("finished", step=step)
    barrier()
    return Outcome.FINISHED


def train_step(w, strategy, sampler, layout, loss_fn, step: int) -> tuple[float, float | None]:
    """One optimizer step over this rank's share of the global batch."""
    ids = sampler.rank_batch_ids(step, strategy.dp_rank, strategy.dp_size)
    if w.spec.train.audit_samples:
        _audit(w, step + 1, ids, strategy.dp_rank)
    loss_sum = torch.zeros(2, dtype=torch.float64)  # [sum of micro-batch losses, count]
    micro_batches = np.split(ids, layout.accumulation)
    for i, micro_ids in enumerate(micro_batches):
        inputs, targets = _batch(w, w.data.train, micro_ids)
        with strategy.accumulate(is_last_micro_batch=i == len(micro_batches) - 1):
            loss = strategy.forward_backward(inputs, targets, loss_fn, 1.0 / layout.accumulation)
        if strategy.computes_loss:
            loss_sum += torch.tensor([float(loss), 1.0], dtype=torch.float64)
    grad_norm = strategy.step(w.spec.train.grad_clip)
    all_reduce(loss_sum)
    return float(loss_sum[0] / loss_sum[1]), grad_norm


@torch.no_grad()
def validate(w: WorkerContext, strategy, loss_fn) -> dict[str, float]:
    """Loss (and accuracy or perplexity) over the validation split, each data-parallel
    rank taking every dp_size-th micro-batch."""
    split = w.data.validation
    if len(split) == 0:
        return {}
    totals = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
    batch = w.spec.train.micro_batch_size
    starts = range(strategy.dp_rank * batch, len(split), batch * strategy.dp_size)
    for start in starts:
        ids = np.arange(start, min(start + batch, len(split)))
        inputs, targets = _batch(w, split, ids)
        output = strategy.predict(inputs)
        if output is None:
            continue
        n = targets.numel()
        totals[0] += float(loss_fn(output, targets)) * n
        totals[2] += n
        if w.data.task == "classification":
            totals[1] += float((output.argmax(-1) == targets).sum())
    all_reduce(totals)
    loss = float(totals[0] / totals[2])
    result = {"val_loss": loss}
    if w.data.task == "classification":
        result["val_accuracy"] = float(totals[1] / totals[2])
    if w.data.task == "lm":
        result["val_perplexity"] = float(np.exp(min(loss, 50.0)))
    return result


def _batch(w: WorkerContext, split, ids: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.from_numpy(split.inputs[ids]).to(w.device, non_blocking=True)
    targets = torch.from_numpy(split.targets[ids]).to(w.device, non_blocking=True)
    return inputs, targets


def _audit(w: WorkerContext, step: int, ids: np.ndarray, dp_rank: int) -> None:
    folder = w.run_dir / "samples"
    folder.mkdir(exist_ok=True)
    record = {"step": step, "rank": w.rank, "dp_rank": dp_rank, "world_size": w.world_size, "attempt": w.attempt,
              "ids": ids.tolist()}
    with open(folder / f"rank{w.rank}.jsonl", "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _driver_watch(w: WorkerContext):
    """A check that the driver still runs, for ranks on the driver's node. Ray ends a
    dead driver's workers too, but only after a while; until then they must not write."""
    if w.driver is None:
        return None
    import ray

    node, pid = w.driver
    if ray.get_runtime_context().get_node_id() != node:
        return None
    return lambda: process_alive(pid)


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0
