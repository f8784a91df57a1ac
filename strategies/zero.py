"""ZeRO data parallelism through DeepSpeed: stage 1 shards optimizer state, stage 2
gradients too, stage 3 parameters too; optionally offloaded to host memory.

DeepSpeed must own the optimizer step (its optimizer works on flat partitions it
builds), so this adapter hands `deepspeed.initialize` our own torch optimizer and
LR schedule, built by the loop's factories from the job spec, and drives the engine
from the loop's calls: the arithmetic stays that of the replicated run.

DeepSpeed is optional (`pip install -e .[zero]`) and imported only when a zero job
is set up on a worker.

Compiled ops. DeepSpeed compiles some C++ ops on first use:
- its shared-memory all-reduce (30 s on CPU hosts) serves only its inference
  all-reduce; training's collectives go through torch.distributed, so it is
  marked unavailable and never built;
- CPU Adam, which ZeRO-Offload runs the optimizer step with, is compiled by
  torch's extension loader on the first offload job of a host (about a minute)
  and cached in TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions); ranks
  of one host share the build, which the loader guards with a lock. To build it
  at install time instead: `DS_BUILD_CPU_ADAM=1 pip install deepspeed==0.19.8`.
No other op is needed: the optimizer is torch's (ZeRO's "untested optimizer" path).

Checkpoints are DeepSpeed's own (strategies/zero_checkpoint.py); the reaches into
DeepSpeed's internals are in strategies/compat/deepspeed.py.

Exercised by: pytest tests/test_strategy_parity.py -k zero tests/test_sharded_strategies.py
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from strategies.base import (
    Copy,
    OptimizerFactory,
    SchedulerFactory,
    StateWriter,
    Strategy,
    autocast_dtype_for,
    nothing_to_write,
    optimizer_state_tensors,
)
from strategies.compat import deepspeed as compat_deepspeed
from strategies.block_compute import apply_block_compute
from strategies.blocks import repeated_blocks
from strategies.deepspeed_config import deepspeed_config
from strategies.mesh import ParallelDims
from strategies.zero_checkpoint import load_checkpoint, save_checkpoint
from strategies.zero_options import INSTALL_HINT, ZeROOptions

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

def import_deepspeed():
    """Import DeepSpeed for training, with an install hint when it is missing."""
    try:
        import deepspeed
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    # Training never uses the shared-memory all-reduce (see the module docstring).
    compat_deepspeed.skip_shared_memory_allreduce()
    return deepspeed


class ZeROStrategy(Strategy):
    def __init__(self, options: ZeROOptions, dims: ParallelDims) -> None:
        super().__init__(dims)
        self.options = options
        self.engine: DeepSpeedEngine
        self._grad_bytes_this_step = 0

    # ---- setup --------------------------------------------------------------------------
    def setup(
        self,
        model: nn.Module,
        make_optimizer: OptimizerFactory,
        make_scheduler: SchedulerFactory,
        device: torch.device,
        precision: str,
    ) -> None:
        """Hand the model, our optimizer and our schedule to `deepspeed.initialize`, which
        partitions them; DeepSpeed's flat partitions need it to own the optimizer."""
        assert self.step_shape is not None, "configure_steps must come before setup"
        deepspeed = import_deepspeed()
        # DeepSpeed insists on torchrun's LOCAL_RANK, which it uses to pick the device.
        # Ray Train sets it; a launcher that only joins a process group may not.
        os.environ.setdefault("LOCAL_RANK", str(device.index or 0))
        # Reuses the process group the launcher already set up.
        deepspeed.init_distributed(dist_backend=dist.get_backend())
        compat_deepspeed.forget_world_group()
        model = model.to(device)
        apply_block_compute(repeated_blocks(model), model, self.block_compute)
        optimizer = make_optimizer(model.parameters())
        if self.options.offload != "none":
            optimizer = cpu_adam_like(optimizer)
        scheduler = make_scheduler(optimizer)
        # Given the schedule, the engine advances it once per applied optimizer step
        # and keeps its state in DeepSpeed's checkpoints.
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=scheduler, config=self._config(device)
        )
        if self.options.stage == 3 and self.options.offload == "none":
            compat_deepspeed.share_master_partitions(self.engine.optimizer)
        self.model = self.engine
        self.optimizer = optimizer  # now stepping DeepSpeed's fp32 partitions
        self.scheduler = scheduler
        self.autocast_dtype = autocast_dtype_for(precision)

    def _config(self, device: torch.device) -> dict[str, Any]:
        options = self.options
        return deepspeed_config(
            stage=options.stage,
            offload=options.offload,
            bucket_mb=options.bucket_mb,
            param_persistence_threshold=options.param_persistence_threshold,
            shape=self.step_shape,
            dp_size=self.dp_size,
            pin_memory=device.type == "cuda",
        )

    # ---- one optimizer step --------------------------------------------------------
    def accumulate(self, is_last_micro_batch: bool) -> contextlib.AbstractContextManager:
        # DeepSpeed finds boundaries by counting engine.step() calls, one per micro-batch;
        # the loop steps once per optimizer step, so it says where the boundary is.
        self.engine.set_gradient_accumulation_boundary(is_last_micro_batch)
        return contextlib.nullcontext()

    def forward_backward(self, inputs, targets, loss_fn, loss_scale: float) -> torch.Tensor:
        with self._autocast():
            loss = loss_fn(self.engine(inputs), targets)
        # The loop's loss_scale already divides by the accumulation steps; DeepSpeed's
        # own division by gradient_accumulation_steps would do it twice.
        self.engine.backward(loss * loss_scale, scale_wrt_gas=False)
        # Stage 1 holds whole gradients between micro-batches and reduces them to its
        # partition at the boundary, so the high point is looked for after each one.
        self._grad_bytes_this_step = max(self._grad_bytes_this_step, self._gradient_bytes())
        return loss.detach()

    def step(self, max_grad_norm: float | None) -> float | None:
        # Reduces what is left, clips to train.grad_clip (from the config), updates,
        # releases the gradients and advances the schedule.
        self.engine.step()
        self._grad_bytes_at_step, self._grad_bytes_this_step = self._grad_bytes_this_step, 0
        if not max_grad_norm:
            return None
        return float(self.engine.get_global_grad_norm())

    # ---- state ------------------------------------------------------------------------
    def snapshot(self, directory: Path, copy: Copy) -> StateWriter:
        # DeepSpeed writes its own files (its partitioned optimizer state among them) here
        # and now, on the training thread; only the publication can run in the background.
        save_checkpoint(self.engine, directory)
        return nothing_to_write

    def load(self, directory: Path) -> None:
        load_checkpoint(self.engine, directory, self.dp_size, self.options.stage)

    def full_model_state(self) -> dict[str, torch.Tensor]:
        module = self.engine.module
        gathered = contextlib.nullcontext()
        if self.options.stage == 3:
            import deepspeed

            gathered = deepspeed.zero.GatheredParameters(list(module.parameters()))
        with gathered:
            return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}

    # ---- accounting -----------------------------------------------------------------
    def memory_bytes(self) -> dict[str, int]:
        """Bytes of the distinct storages this rank holds: ZeRO keeps parameters,
        gradients and optimizer state in flat buffers that many tensors view."""
        return {
            "params": held_bytes(parameter_tensors(self.engine)),
            "grads": self._grad_bytes_at_step,
            "optimizer": held_bytes(optimizer_state_tensors(self.optimizer)),
        }

    def _gradient_bytes(self) -> int:
        return held_bytes(gradient_tensors(self.engine))


def parameter_tensors(engine: DeepSpeedEngine) -> Iterator[torch.Tensor]:
    """The parameters' storage on this rank: the model's, stage 3's shards, fp32 masters."""
    for p in engine.module.parameters():
        yield p.data
        if hasattr(p, "ds_tensor"):  # stage 3: this rank's shard
            yield p.ds_tensor
    yield from compat_deepspeed.master_weights(engine.optimizer)


def gradient_tensors(engine: DeepSpeedEngine) -> list[torch.Tensor]:
    """The gradients on this rank: the parameters', ZeRO's buffers, the fp32 masters'."""
    zero_optimizer = engine.optimizer
    tensors = [p.grad for p in engine.module.parameters() if p.grad is not None]
    tensors += list(compat_deepspeed.gradients(zero_optimizer))
    tensors += [t.grad for t in compat_deepspeed.master_weights(zero_optimizer) if t.grad is not None]
    return tensors


def cpu_adam_like(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """DeepSpeed's CPU Adam with the hyperparameters of the torch Adam or AdamW the
    job spec built, so offloading changes where the step runs, not what it computes."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    from deepspeed.ops.op_builder import CPUAdamBuilder

    if not CPUAdamBuilder().is_compatible():
        raise RuntimeError(
            "strategy.offload: DeepSpeed's CPU Adam cannot be built on this host (it needs a "
            "C++ compiler); install one, or prebuild it with `DS_BUILD_CPU_ADAM=1 pip install "
            "deepspeed==0.19.8`, or set strategy.offload: none"
        )
    defaults = optimizer.defaults
    return DeepSpeedCPUAdam(
        [p for group in optimizer.param_groups for p in group["params"]],
        lr=defaults["lr"],
        betas=defaults["betas"],
        eps=defaults["eps"],
        weight_decay=defaults["weight_decay"],
        adamw_mode=isinstance(optimizer, torch.optim.AdamW),
    )


def held_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors`; views of one buffer count it once."""
    storages: dict[int, int] = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())
