"""The runtime interface every strategy implements, and the parts most share.

The training loop only talks to this interface: strategy differences live here,
never in `if strategy == ...` branches of the loop or the controller.
"""
from __future__ import annotations

import contextlib
import enum
import threading
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from strategies.block_compute import BlockCompute, apply_block_compute
from strategies.blocks import repeated_blocks
from strategies.host_copy import host_copier
from strategies.state_handover import StateHandover, put_back
from strategies.state_tree import map_leaves
from strategies.mesh import ParallelDims

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Writes a state dict with torch.distributed.checkpoint into a folder: dcp.save here, or
# in a writer process (orchestrator/training/checkpoint_process.py). The checkpoint's owner
# passes it to the StateWriter that `Strategy.snapshot` returns.
SaveState = Callable[[dict, Path], None]
StateWriter = Callable[[SaveState], None]


def nothing_to_write(save: SaveState | None = None) -> None:
    """The StateWriter of a state already written in line."""


class Copy(enum.Enum):
    """How `Strategy.snapshot` takes the state it hands to its StateWriter."""

    NONE = "none"  # not copied: the writer runs before the state next changes
    # Taken before snapshot returns: the parameters and optimizer state in host memory
    # handed over uncopied (state_handover.py), the rest copied into host memory.
    NOW = "now"
    # Copied into shared host memory on a thread while training goes on (a writer process
    # maps it, a thread writer reads it); the strategy waits for the copy before it next
    # changes its state.
    SHARED = "shared"

# Optimizer state and param-group settings saved per parameter, under its fully-qualified
# name ("state.layers.3.fc.weight.exp_avg", "param_groups.layers.3.fc.weight.lr"), not as
# lists of param groups: pipeline stages hold different subsets of the parameters, and the
# group lists each stage wrote would collide in the checkpoint (one copy of a key is kept).
# Per-parameter keys load under any layout, as torchtitan saves pipeline checkpoints.
def state_dict_options(**options):
    """torch.distributed.checkpoint's StateDictOptions; the package is imported when a
    checkpoint is first taken or loaded (half a second that a launch need not pay)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(flatten_optimizer_state_dict=True, **options)


@dataclass(frozen=True)
class StepShape:
    """How the loop drives one optimizer step on each data-parallel rank."""

    micro_batch_size: int
    accumulation: int  # micro-batches per optimizer step
    max_grad_norm: float | None  # clip threshold, None when clipping is off


class Strategy:
    """One worker's view of a parallelism strategy.

    Lifecycle: `setup` once, then per optimizer step `forward_backward` for each
    micro-batch inside `accumulate(...)`, then `step`; `snapshot`/`load` for checkpoints.
    """

    def __init__(self, dims: ParallelDims) -> None:
        self.dims = dims
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.model: nn.Module
        self.optimizer: torch.optim.Optimizer
        self.scheduler: torch.optim.lr_scheduler.LRScheduler
        self.autocast_dtype: torch.dtype | None = None
        self.step_shape: StepShape | None = None
        self.block_compute = BlockCompute()
        self._grad_bytes_at_step = 0
        self.handover = StateHandover()  # what the optimizer step leaves a checkpoint in flight

    # ---- layout -------------------------------------------------------------------
    @property
    def dp_rank(self) -> int:
        return self.dims.coordinates(self.rank)[0]

    @property
    def dp_size(self) -> int:
        return self.dims.dp

    # Whether this rank sees the model's output (not early pipeline stages), and whether a
    # micro-batch's forward ends, with its loss, before its backward (pipelines interleave).
    computes_loss = True
    forward_precedes_backward = True
    # Whether every rank holds the whole state (data parallelism alone): snapshot takes a share.
    state_replicated = False

    # ---- setup ------------------------------------------------------------------------
    def configure_steps(self, shape: StepShape) -> None:
        """Told once, before `setup`, how each optimizer step will be driven. Strategies
        whose engine owns the step's arithmetic (DeepSpeed) build it from this."""
        self.step_shape = shape

    def configure_compute(self, options: BlockCompute) -> None:
        """Told once, before `setup`: recomputation and compilation of the blocks."""
        self.block_compute = options

    def setup(self, model: nn.Module, make_optimizer: OptimizerFactory, make_scheduler: SchedulerFactory,
              device: torch.device, precision: str) -> None:
        """Place, wrap and shard `model`; build its optimizer and schedule.

        Strategies say how they transform the model in `parallelize`; one whose engine must
        own the optimizer too (DeepSpeed) overrides this instead.
        """
        # bf16 is autocast over fp32 weights for every strategy: the replicated run's math,
        # with weights and gradients communicated in fp32. Set first: pipeline stages copy it.
        self.autocast_dtype = autocast_dtype_for(precision)
        blocks = repeated_blocks(model)  # found on the model as built: wrappers hide its layout
        self.model = self.parallelize(model, device)
        apply_block_compute(blocks, model, self.block_compute)  # after the split, as torchtitan
        # Built over the transformed parameters, so sharded parameters shard its state too.
        self.optimizer = make_optimizer(self.model.parameters())
        self.scheduler = make_scheduler(self.optimizer)

    def parallelize(self, model: nn.Module, device: torch.device) -> nn.Module:
        """Move `model` to `device` and wrap or shard it as this strategy trains it; return
        the module to train (its parameters are what the optimizer steps)."""
        raise NotImplementedError(f"{type(self).__name__} must implement parallelize(model, device), "
                                  "or override setup when its engine builds the optimizer too")

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=next(self.model.parameters()).device.type, dtype=self.autocast_dtype)

    # ---- one optimizer step --------------------------------------------------------
    def accumulate(self, is_last_micro_batch: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch; data-parallel strategies skip the gradient
        all-reduce on all but the last micro-batch of an accumulation window."""
        return contextlib.nullcontext()

    def forward_backward(
        self, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn, loss_scale: float
    ) -> torch.Tensor:
        """Run one micro-batch forward and backward; return its unscaled loss, detached."""
        with self._autocast():
            loss = loss_fn(self.model(inputs), targets)
        (loss * loss_scale).backward()
        return loss.detach()

    def step(self, max_grad_norm: float | None) -> float | None:
        """Clip, apply and clear the gradients, advance the schedule; return the
        gradient norm before clipping when clipping is on."""
        grad_norm = None
        if max_grad_norm:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_grad_norm)
            # Sharded (DTensor) gradients give a DTensor norm, already reduced over ranks.
            grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
        with self.handover.first_writes():
            self.optimizer.step()
        # Gradients are at their fullest here, just before they are released.
        self._grad_bytes_at_step = gradient_bytes(self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return grad_norm

    @torch.no_grad()
    def predict(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """Model output for evaluation, or None on ranks that do not see it."""
        self.model.eval()
        try:
            with self._autocast():
                return self.model(inputs).float()
        finally:
            self.model.train()

    # ---- state ------------------------------------------------------------------------
    def snapshot(self, directory: Path, copy: Copy) -> StateWriter:
        """The state as it is now, and the function that writes it into `directory` (every
        rank). Taken as `copy` says, the write may run while training goes on."""
        share = (self.dp_rank, self.dp_size) if self.state_replicated and self.dp_size > 1 else None
        return snapshot_distributed(self.model, self.optimizer, self.scheduler, directory, copy,
                                    self.handover, share)

    def load(self, directory: Path) -> None:
        load_distributed(self.model, self.optimizer, self.scheduler, directory)

    def full_model_state(self) -> dict[str, torch.Tensor]:
        """The unsharded model weights, gathered on every rank (call on all ranks)."""
        return gathered_state(self.model)

    # ---- accounting -----------------------------------------------------------------
    def metrics(self) -> dict[str, float]:
        """Strategy-specific numbers for this step's metrics record (call on all ranks)."""
        return {}

    def memory_bytes(self) -> dict[str, int]:
        """Bytes of parameters, gradients and optimizer state this rank holds; gradients
        as they stood in the last step before it released them."""
        return {
            "params": sum(local_bytes(p) for p in self.model.parameters()),
            "grads": self._grad_bytes_at_step,
            "optimizer": sum(local_bytes(v) for v in optimizer_state_tensors(self.optimizer)),
        }


def gradient_bytes(model: nn.Module) -> int:
    """Bytes of the gradients `model`'s parameters hold on this rank now."""
    return sum(local_bytes(p.grad) for p in model.parameters() if p.grad is not None)


def gathered_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s whole weights in host memory, gathered from every rank's shards."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=state_dict_options(full_state_dict=True, cpu_offload=True))


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for state in optimizer.state.values():
        yield from (v for v in state.values() if isinstance(v, torch.Tensor))


def local_bytes(tensor: torch.Tensor) -> int:
    """Bytes this rank really stores: a DTensor counts only its local shard."""
    local = _local(tensor)
    return local.numel() * local.element_size()


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The part of `tensor` this rank holds: a DTensor's local shard, else the tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def autocast_dtype_for(precision: str) -> torch.dtype | None:
    return {"fp32": None, "bf16": torch.bfloat16}[precision]


def snapshot_distributed(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                         directory: Path, copy: Copy, handover: StateHandover,
                         share: tuple[int, int] | None = None) -> StateWriter:
    """Model and optimizer state for torch.distributed.checkpoint, which stores each
    shard once and lets another layout or world size load it; taken as `copy` says, by
    `handover` (which the next optimizer step runs in) and dcp's own stager, which copies
    into host memory (tensors, DTensor shards and the schedule's plain values, into
    buffers it reuses from one save to the next).
    `share` (rank, ranks): the state is whole on each of `ranks` ranks, and this one
    takes only its share of the tensors (replicated_share)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=state_dict_options())
    if share is not None:
        model_state, optim_state = replicated_share(model_state, optim_state, *share)
    state = {"model": model_state, "optim": optim_state, "scheduler": scheduler.state_dict()}
    device = next(model.parameters()).device
    if copy is Copy.NONE:
        return lambda save: save(state, directory)
    if copy is Copy.SHARED:  # copied meanwhile, apart from what the forward pass changes
        copying = host_copier(device, shared=True).stage(apart_from_training(state, model))
        handover.copied_by(copying)
        return lambda save: save(copying.result(), directory)
    rest, handed = handover.take(state, [*model.parameters(), *optimizer_state_tensors(optimizer)])
    copied = host_copier(device).stage(rest)
    written = threading.Event()
    handover.written_by(written.wait)

    def write(save: SaveState) -> None:
        try:
            save(put_back(copied, handed), directory)
        finally:
            written.set()

    return write


def apart_from_training(state: dict, model: nn.Module) -> dict:
    """`state` in containers of its own, its plain values copied, and copies of the model
    tensors that are not parameters (buffers: batch norm's running statistics change in
    the forward pass). A copy made on another thread while training goes on then reads
    only tensors that change in the optimizer step, which waits for that copy."""
    parameters = {_storage_of(p) for p in model.parameters()}

    def apart(path: tuple, value):
        if isinstance(value, torch.Tensor):
            is_buffer = path[0] == "model" and _storage_of(value) not in parameters
            return value.detach().clone() if is_buffer else value
        return deepcopy(value)

    return map_leaves(state, apart)


def _storage_of(tensor: torch.Tensor) -> int:
    return _local(tensor).untyped_storage().data_ptr()


def replicated_share(model_state: dict, optim_state: dict, rank: int, ranks: int) -> tuple[dict, dict]:
    """This rank's share of a state every one of `ranks` ranks holds whole: its tensors
    dealt by size to the least loaded rank (the same deal on every rank), the plain
    values kept by all. Each rank then copies and writes about 1/ranks of the state
    instead of copying all of it for dcp to write each tensor once anyway. dcp's
    metadata is the union of what the ranks wrote, so any layout loads it whole."""
    tensors = [(key, name, value) for key, part in (("model", model_state), ("optim", optim_state))
               for name, value in part.items() if isinstance(value, torch.Tensor)]
    tensors.sort(key=lambda item: (-local_bytes(item[2]), item[0], item[1]))
    load, others = [0] * ranks, set()
    for key, name, value in tensors:
        owner = min(range(ranks), key=lambda r: (load[r], r))
        load[owner] += local_bytes(value)
        if owner != rank:
            others.add((key, name))
    return ({n: v for n, v in model_state.items() if ("model", n) not in others},
            {n: v for n, v in optim_state.items() if ("optim", n) not in others})


def load_distributed(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, directory: Path) -> None:
    """Load what `snapshot_distributed` wrote, resharding to this layout."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer, options=state_dict_options())
    state = {"model": model_state, "optim": optim_state, "scheduler": scheduler.state_dict()}
    dcp.load(state, checkpoint_id=str(directory))
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optim"],
        options=state_dict_options(),
    )
    scheduler.load_state_dict(state["scheduler"])
