"""DeepSpeed internals the ZeRO strategy reaches into, and why (see each function).

DeepSpeed is optional and slow to import: nothing here imports it until a function is
called, and by then strategies/zero.py has.

Exercised by: pytest tests/test_compat.py
"""
from __future__ import annotations

import ast
import contextlib
import functools
import importlib
import importlib.metadata
import inspect
from typing import Any, Iterator

import torch

from strategies.compat import missing, reach, release

TESTED_VERSION = "0.19.8"

# The shared-memory all-reduce op, by its key in `deepspeed.ops.__compatible_ops__`.
SHM_OP = "deepspeed_shm_comm"
# Where ZeRO keeps fp32 master weights and gradients beside the model's own parameters.
# Each optimizer class has some of these names (stages 1-2: DeepSpeedZeroOptimizer;
# stage 3: DeepSpeedZeroOptimizer_Stage3); memory accounting counts whichever it has.
MASTER_WEIGHTS = ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat")
GRADIENTS = (
    "averaged_gradients",
    "all_grad_tensors",
    "grads_in_partition",
    "grad_partitions_flat_buffer",
    "accumulated_grads_in_cpu",
)
# Stage 3's fp32 master partitions and the parameter partitions they mirror, group by group.
STAGE3_PARTITIONS = ("fp32_partitioned_groups_flat", "fp16_partitioned_groups_flat")
# Every instance attribute reached, under the class that sets it (`check` reads their code:
# no instance exists without a process group and an engine).
INSTANCE_ATTRIBUTES = {
    "deepspeed.runtime.zero.stage_1_and_2:DeepSpeedZeroOptimizer": (
        "single_partition_of_fp32_groups",
        "averaged_gradients",
        "all_grad_tensors",
        "grads_in_partition",
        "accumulated_grads_in_cpu",
    ),
    "deepspeed.runtime.zero.stage3:DeepSpeedZeroOptimizer_Stage3": (
        *STAGE3_PARTITIONS,
        "averaged_gradients",
        "grad_partitions_flat_buffer",
    ),
    "deepspeed.runtime.engine:DeepSpeedEngine": ("_config",),
    "deepspeed.runtime.config:DeepSpeedConfig": ("load_universal_checkpoint",),
}


def installed_version() -> str:
    return release(importlib.metadata.version("deepspeed"))


def skip_shared_memory_allreduce() -> None:
    """Mark DeepSpeed's shared-memory all-reduce unavailable, so that init never builds it.

    It serves only DeepSpeed's inference all-reduce (training's collectives go through
    torch.distributed) and takes 30 s to compile on CPU hosts. DeepSpeed decides whether
    to build it from the private `deepspeed.ops.__compatible_ops__`, keyed by op name.
    """
    compatible = _internal("deepspeed.ops", "__compatible_ops__")
    if SHM_OP not in compatible:
        raise _missing(f"deepspeed.ops.__compatible_ops__[{SHM_OP!r}]")
    compatible[SHM_OP] = False


def forget_world_group() -> None:
    """Drop DeepSpeed's clone of the world process group, kept in a module global.

    A worker that runs another attempt in the same process, on a new process group,
    must not reuse the dead one. Call after `deepspeed.init_distributed`.
    """
    groups = importlib.import_module("deepspeed.utils.groups")
    _internal("deepspeed.utils.groups", "_WORLD_GROUP")
    groups._WORLD_GROUP = None


@contextlib.contextmanager
def universal_checkpoint_loading(engine: Any, universal: bool) -> Iterator[None]:
    """Within: the engine loads checkpoints in DeepSpeed's universal format, or not.

    DeepSpeed reads the switch from its config at load time, where only the job's config
    can set it; the saved layout decides it here, so it is set for one load and turned
    off after.
    """
    config = _attribute(engine, "_config")
    _attribute(config, "load_universal_checkpoint")
    config.load_universal_checkpoint = universal
    try:
        yield
    finally:
        config.load_universal_checkpoint = False


def share_master_partitions(zero_optimizer: Any) -> None:
    """Let stage 3's fp32 master partitions be its fp32 parameter partitions.

    DeepSpeed 0.19.8 means to share them when the parameters are fp32 already
    (stage3.py, `_create_fp32_partitions`), but it compares a torch.device with a
    device name string, never equal in torch 2.13, and keeps a second copy. Pointing
    each master tensor at its partition's storage keeps the tensor objects (the
    optimizer's state is keyed by them) and frees the copy; DeepSpeed's copy from
    master to partition after each step then copies a buffer onto itself.
    """
    masters, partitions = (_attribute(zero_optimizer, name) for name in STAGE3_PARTITIONS)
    for master, partition in zip(masters, partitions):
        if master.dtype == partition.dtype and master.device == partition.device:
            master.data = partition.data


def master_weights(zero_optimizer: Any) -> Iterator[torch.Tensor]:
    """The fp32 master weights a ZeRO optimizer holds on this rank."""
    if not any(hasattr(zero_optimizer, name) for name in MASTER_WEIGHTS):
        raise _missing(f"{type(zero_optimizer).__name__} master weights (any of {', '.join(MASTER_WEIGHTS)})")
    return _attribute_tensors(zero_optimizer, MASTER_WEIGHTS)


def gradients(zero_optimizer: Any) -> Iterator[torch.Tensor]:
    """The gradient buffers a ZeRO optimizer holds besides the parameters' `.grad`."""
    return _attribute_tensors(zero_optimizer, GRADIENTS)


def check() -> None:
    """Find every internal this module reaches (imports DeepSpeed: seconds).

    Raises:
        RuntimeError: naming the missing internal and both versions.
    """
    _internal("deepspeed.utils.groups", "_WORLD_GROUP")
    if SHM_OP not in _internal("deepspeed.ops", "__compatible_ops__"):
        raise _missing(f"deepspeed.ops.__compatible_ops__[{SHM_OP!r}]")
    for path, names in INSTANCE_ATTRIBUTES.items():
        cls = _internal(*path.split(":"))
        set_here = _assigned_attributes(cls)
        for name in names:
            if name not in set_here:
                raise _missing(f"attribute {name!r} set by {path}")


def _assigned_attributes(cls: type) -> set[str]:
    """Names the code of `cls` and of its DeepSpeed bases assigns as `self.<name>`."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith("deepspeed."):
            names |= _self_assignments(inspect.getsourcefile(klass), klass.__name__)
    return names


@functools.cache
def _self_assignments(path: str, class_name: str) -> frozenset[str]:
    with open(path) as source:
        tree = ast.parse(source.read())
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == class_name]
    return frozenset(
        node.attr
        for node in ast.walk(cls)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def _attribute_tensors(owner: object, names: tuple[str, ...]) -> Iterator[torch.Tensor]:
    """Tensors held in `owner`'s attributes `names`, which may be lists or dicts of them."""
    for name in names:
        stack = [getattr(owner, name, None)]
        while stack:
            value = stack.pop()
            if isinstance(value, torch.Tensor):
                yield value
            elif isinstance(value, dict):
                stack.extend(value.values())
            elif isinstance(value, (list, tuple)):
                stack.extend(value)


def _attribute(owner: object, name: str) -> Any:
    try:
        return getattr(owner, name)
    except AttributeError as error:
        raise _missing(f"{type(owner).__name__}.{name}") from error


def _internal(module: str, attribute: str) -> Any:
    return reach(module, attribute, "deepspeed", installed_version(), TESTED_VERSION)


def _missing(what: str) -> RuntimeError:
    return missing("deepspeed", installed_version(), TESTED_VERSION, what)
