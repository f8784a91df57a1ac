"""The loop every worker runs: build, resume, train, validate, checkpoint, export.

Both backends call `train` on every rank once torch.distributed is set up (gloo on
CPU, NCCL on GPU). A restarted attempt runs it again from the top and it resumes
from the newest valid checkpoint; the step number is the data cursor.

Exercised by: orchestrator launch examples/quickstart.yaml
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch

import strategies
from orchestrator.data.model_arguments import example_input
from orchestrator.data.sampler import GlobalBatchSampler
from orchestrator.planning.layout import BatchLayout, batch_layout
from orchestrator.run.control import Directive, process_alive
from orchestrator.run.export import write_model_card, write_weights
from orchestrator.run.files import RunFiles, flush_logs
from orchestrator.run.records import EventLog, MetricsLog
from orchestrator.training.allocator import give_back_freed_memory
from orchestrator.training.audit import record_sample_ids
from orchestrator.training.batches import batch_tensors
from orchestrator.training.chaos import Chaos
from orchestrator.training.checkpoint import CheckpointManager, TrainerState
from orchestrator.training.collectives import barrier, is_distributed
from orchestrator.training.context import WorkerContext
from orchestrator.training.directives import DirectiveReader, StepRecords, start_agreement
from orchestrator.training.evaluation import loss_function, validate
from orchestrator.training.flops import flops_per_sample, peak_flops, utilisation
from orchestrator.training.optim import build_optimizer, build_scheduler
from orchestrator.training.phases import StepPhases
from orchestrator.training.step_profile import StepProfile
from orchestrator.training.usage import UsageSampler, write_usage
from orchestrator.training.model import build_job_model


class Outcome:
    FINISHED = "finished"
    STOPPED = "stopped"
    RESIZE = "resize"


@dataclass
class Attempt:
    """What one attempt built and writes to, handed to the loop's helpers."""

    w: WorkerContext
    layout: BatchLayout
    strategy: strategies.Strategy
    checkpoints: CheckpointManager
    events: EventLog
    flops_per_sample: float | None = None  # counted on rank 0, which writes the metrics
    peak_flops: float | None = None
    phases: StepPhases | None = None
    profile: StepProfile | None = None


def train(w: WorkerContext) -> str:
    """Train from the newest valid checkpoint to `train.steps`, or until the controller
    asks to stop or resize. Returns an `Outcome`."""
    usage = UsageSampler(w.device)
    checkpoints = CheckpointManager(w.run_dir, w.spec.checkpoint.keep, w.rank, w.world_size,
                                    background=w.spec.checkpoint.async_save,
                                    timeout=timedelta(seconds=w.spec.failure.collective_timeout_s),
                                    writer=w.spec.checkpoint.writer, paced_over=paced_over(w))
    metrics = MetricsLog(w.run_dir, enabled=w.rank == 0)
    try:
        return _train(w, usage, checkpoints, metrics)
    finally:
        metrics.close()
        checkpoints.close()
        write_usage(w.run_dir, w.rank, w.world_size, w.step, usage.stop())
        flush_logs()  # a run on object storage: this rank's last records, uploaded


def _train(w: WorkerContext, usage: UsageSampler, checkpoints: CheckpointManager, metrics: MetricsLog) -> str:
    spec = w.spec
    layout = batch_layout(spec, w.world_size)
    events = EventLog(w.run_dir, enabled=w.rank == 0)
    flops = count_flops(w) if w.rank == 0 else None  # before the strategy seeds its weights
    phases = StepPhases(w.device, spec.train.step_breakdown)
    strategy = build_strategy(w, layout)
    attempt = Attempt(w, layout, strategy, checkpoints, events, flops, peak_flops(w.device, spec.train.precision),
                      phases, StepProfile(w.device, strategy.model, phases))
    usage.state_bytes, usage.profile, usage.data_reads = strategy.memory_bytes, attempt.profile, w.data.train.reads
    step = w.step = resume(attempt)
    checkpoints.prepare()

    sampler = GlobalBatchSampler(w.data.train.order, layout.global_batch, spec.train.seed)
    records = StepRecords(metrics, w.run_dir)
    loss_fn = loss_function(w.data.task)
    directives = DirectiveReader(w.run_dir, w.owner, w.attempt, w.rank, _driver_watch(w))
    chaos = Chaos(spec.chaos, w.run_dir, w.rank, w.world_size)
    failure = dict(w.failure, steps_redone=w.failure["last_step"] - step) if w.failure else None
    resize_requested = False

    # ---- train ------------------------------------------------------------------------------
    while step < spec.train.steps:
        w.step = step + 1
        started = time.perf_counter()
        lr = attempt.strategy.scheduler.get_last_lr()[0]
        with attempt.profile.step(active=w.step == spec.train.profile_step):
            (loss_sum, count), grad_norm = train_step(w, attempt.strategy, sampler, layout, loss_fn, step,
                                                      attempt.phases)
        step += 1
        elapsed = time.perf_counter() - started
        agreement = start_agreement(loss_sum, count, directives.local())  # overlaps the next step
        record = step_record(attempt, sampler, step, lr, grad_norm, elapsed)
        if _due(step, spec.train.validate_every) or step == spec.train.steps:
            record.update(validate(w, attempt.strategy, loss_fn))
        if failure is not None:
            record["failure"] = dict(failure, recovery_s=time.time() - failure["detected_at"])
            failure = None
        at_boundary = _due(step, spec.checkpoint.every_steps) or step == spec.train.steps
        directive = records.settle(record, agreement, at_once=at_boundary or not is_distributed())

        # ---- checkpoint; act on the controller's directive ------------------------------
        resize_requested |= directive == Directive.RESIZE
        outcome = checkpoint_and_direct(attempt, step, directive, resize_requested)
        if outcome is not None:
            return outcome
        chaos.after_step(step)

    export_weights(attempt, step)
    return Outcome.FINISHED


def build_strategy(w: WorkerContext, layout: BatchLayout) -> strategies.Strategy:
    """Model -> strategy (wrap / shard) -> optimizer and schedule."""
    spec = w.spec
    torch.manual_seed(spec.train.seed)  # identical initial weights on every rank
    model = build_job_model(spec, w.data.model_arguments())
    strategy = strategies.get_strategy(spec.strategy.name).build(spec.strategy, layout.dims)
    strategy.configure_steps(
        strategies.StepShape(layout.micro_batch, layout.accumulation, spec.train.grad_clip)
    )
    strategy.configure_compute(
        strategies.BlockCompute(spec.train.activation_checkpointing, spec.train.compile)
    )
    strategy.setup(
        model,
        make_optimizer=lambda params: build_optimizer(spec, params),
        make_scheduler=lambda optimizer: build_scheduler(spec, optimizer),
        device=w.device,
        precision=spec.train.precision,
    )
    return strategy


def count_flops(w: WorkerContext) -> float | None:
    """Training FLOPs per sample of the job's model (orchestrator/training/flops.py)."""
    arguments = w.data.model_arguments()
    with torch.device("meta"):
        model = build_job_model(w.spec, arguments)
    return flops_per_sample(model, example_input(w.spec, arguments, 1))


def resume(attempt: Attempt) -> int:
    """Load the newest valid checkpoint, if any; returns the step to continue from."""
    w, step = attempt.w, 0
    latest = attempt.checkpoints.latest_valid()
    if latest is not None:
        step = attempt.checkpoints.load(latest, attempt.strategy.load).step
        give_back_freed_memory()  # what the files were read into, now in the model
        attempt.events.write("resumed", step=step, checkpoint=latest.name, world_size=w.world_size)
    attempt.events.write("started", step=step, world_size=w.world_size, dims=attempt.layout.dims.__dict__,
                         threads=torch.get_num_threads())
    return step


def train_step(w, strategy, sampler, layout, loss_fn, step: int,
               phases: StepPhases) -> tuple[tuple[float, int], float | None]:
    """One optimizer step over this rank's share of the global batch; returns this rank's
    (sum of micro-batch losses, their count) (reduced over ranks by `start_agreement`) and
    the grad norm.
    `phases` times its parts."""
    phases.start()
    ids = sampler.rank_batch_ids(step, strategy.dp_rank, strategy.dp_size)
    # A streamed split reads this rank's next shards meanwhile.
    w.data.train.prefetch_for(sampler, step, strategy.dp_rank, strategy.dp_size, w.spec.train.steps)
    if w.spec.train.audit_samples:
        record_sample_ids(w, step + 1, ids, strategy.dp_rank)
    # Summed where the losses are (in float64, as Python floats would be): a GPU is not
    # waited for after every micro-batch, only once the step is done.
    total, count = torch.zeros((), dtype=torch.float64, device=w.device), 0
    micro_batches = np.split(ids, layout.accumulation)
    # Where forward ends is where the loss is computed, unless a schedule interleaves them.
    split = strategy.forward_precedes_backward
    micro_loss_fn = phases.ending_forward(loss_fn) if split else loss_fn
    for i, micro_ids in enumerate(micro_batches):
        inputs, targets = batch_tensors(w.data.train, micro_ids, w.device)
        phases.lap("step_data_s")
        with strategy.accumulate(is_last_micro_batch=i == len(micro_batches) - 1):
            loss = strategy.forward_backward(inputs, targets, micro_loss_fn, 1.0 / layout.accumulation)
        if strategy.computes_loss:
            total, count = total + loss.detach().double(), count + 1
        phases.lap("step_backward_s" if split else "step_compute_s")
    grad_norm = strategy.step(w.spec.train.grad_clip)
    phases.lap("step_optimizer_s")
    return (float(total), count), grad_norm


def step_record(attempt: Attempt, sampler, step: int, lr: float,
                grad_norm: float | None, elapsed: float) -> dict[str, Any]:
    """The metrics record of one step, when it ended (its loss, validation and failure
    fields are added after)."""
    layout, strategy = attempt.layout, attempt.strategy
    record = {
        "step": step,
        "time": time.time(),
        "lr": lr,
        "world_size": attempt.w.world_size,
        "samples_per_s": layout.global_batch / elapsed,
        "step_time_s": elapsed,
        "epoch": sampler.epoch_of(step - 1),
        "accumulation": layout.accumulation,
    }
    if grad_norm is not None:
        record["grad_norm"] = grad_norm
    record.update({f"mem_{k}_bytes": v for k, v in strategy.memory_bytes().items()})
    record.update(utilisation(attempt.flops_per_sample, record["samples_per_s"],
                              attempt.w.world_size, attempt.peak_flops))
    record.update(strategy.metrics())
    if attempt.phases is not None:
        record.update(attempt.phases.record())
    return record


def checkpoint_and_direct(attempt: Attempt, step: int, directive: Directive,
                          resize_requested: bool) -> str | None:
    """Checkpoint at a boundary, or at once on STOP or EVACUATE; return the outcome that
    ends the attempt, if any.
    A checkpoint is written in the background; whatever ends the attempt waits for it."""
    w, layout = attempt.w, attempt.layout
    attempt.checkpoints.turn()  # a paced write in flight goes on, in this step's time
    last = step == w.spec.train.steps
    at_boundary = _due(step, w.spec.checkpoint.every_steps) or last
    now = directive in (Directive.STOP, Directive.EVACUATE)  # not at the next boundary: now
    if at_boundary or now:
        state = TrainerState(step, w.world_size, layout.dims.dp, step * layout.global_batch)
        attempt.checkpoints.start_save(state, attempt.strategy.snapshot)
    if last or now or (resize_requested and at_boundary):
        attempt.checkpoints.wait()
    if last:
        return None
    if directive == Directive.STOP:
        attempt.events.write("stopped", step=step)
        return Outcome.STOPPED
    if directive == Directive.EVACUATE:
        attempt.events.write("evacuated", step=step, world_size=w.world_size)
        return Outcome.RESIZE
    if resize_requested and at_boundary:
        attempt.events.write("resize_boundary", step=step, world_size=w.world_size)
        return Outcome.RESIZE
    return None


def paced_over(w: WorkerContext) -> int:
    """Over how many steps a background checkpoint write is paced (write_pace.py): within
    three quarters of the steps between checkpoints, when `checkpoint.pace` is steps or
    is auto and this node's workers train on every core; else 0, as fast as it goes. Auto
    takes the ranks on this node to be all of them: on a CPU cluster of several nodes it
    paces writes that a free core could have taken, which only publishes them later."""
    every, pace = w.spec.checkpoint.every_steps, w.spec.checkpoint.pace
    if pace == "auto":
        every_core = torch.get_num_threads() * w.world_size >= (os.cpu_count() or 1)
        pace = "steps" if w.device.type == "cpu" and every_core else "free"
    return max(1, 3 * every // 4) if pace == "steps" and every > 0 else 0


def export_weights(attempt: Attempt, step: int) -> None:
    """Gather the final weights (every rank takes part) and write them on rank 0."""
    weights = attempt.strategy.full_model_state()
    if attempt.w.rank == 0:
        write_weights(RunFiles(attempt.w.run_dir).weights, weights)
        write_model_card(RunFiles(attempt.w.run_dir).model_card, attempt.w.spec, attempt.w.data)
        attempt.events.write("finished", step=step)
    barrier()


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
