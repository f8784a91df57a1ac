"""A checkpoint's parameters and optimizer state handed to its writer without a copy.

A background save needs the state as it was at its step while training goes on. On an
accelerator the state is copied to host memory anyway; on CPU that copy is the state
itself, read and written once more: about a tenth of a step where every core trains
(benchmarks/results/checkpoint_stall_b256.md). It is not needed. Between a save and
the next optimizer step nothing writes the parameters and the optimizer's state
(forward and backward read them; the model's buffers are cloned apart), and the
optimizer step writes each of them first with an in-place operation. So the writer is
given the tensors themselves (aliases over their storage), and in the next optimizer
step each one's first in-place operation is made as the same operation with `out=`
into a spare buffer (the same kernel, so the same numbers, bit for bit), after which
the tensor is pointed at that buffer. The buffer the writer had becomes the tensor's
spare once written: two buffers a tensor, reused, with no page faults after the first.
What remains is the redirected writes' cost: they go to memory not in cache, a few
percent of the optimizer step. The next save starts only after the one before it is
written, so a spare is never taken while the writer still reads it.

Handed over: plain CPU parameters and optimizer-state tensors of at least MIN_BYTES,
each over a whole storage of its own; the rest is copied. Redirected: the operations
of torch's optimizers' arithmetic, whose `out=` forms compute the same (_REDIRECTED). Any
other in-place write in the step into a handed-over tensor (another operation, one on a
view of it, a foreach or fused kernel, an `out=` into it) first waits until the writer
has written the save: slower, never wrong. The thread writer is handed the state so; a
writer process is given a copy made on another thread (checkpoint_process.py), which the
next optimizer step waits for here too.

Assumes what PyTorch modules do: the model reads its parameters through the
parameter objects, not through aliases of them kept aside.

Exercised by: pytest tests/test_state_handover.py tests/test_checkpoint.py -k background
"""
from __future__ import annotations

import contextlib
from concurrent.futures import Future
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from strategies.state_tree import map_leaves

MIN_BYTES = 64 * 1024  # smaller tensors are copied: a copy costs less than the redirection
# In-place methods whose torch function of the same name, given the tensor as its first
# argument and `out=`, computes the same (the arithmetic of torch's optimizers). Not every
# name maps so: `t.normal_(mean, std)` fills t, `torch.normal(t, std)` takes t as the mean.
_REDIRECTED = {"add_", "sub_", "mul_", "div_", "lerp_", "addcmul_", "addcdiv_", "sqrt_", "neg_", "clamp_"}
_IN_PLACE_OPERATORS = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
                       "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__"}


class StateHandover:
    """What a checkpoint in flight asks of one strategy's next optimizer step: `take` or
    `copied_by` at a save, `first_writes` around each optimizer step."""

    def __init__(self) -> None:
        self._armed: dict[int, torch.Tensor] = {}  # storage address -> its live tensor, not yet redirected
        self._written: Callable[[], Any] = lambda: None
        self._copying: Future | None = None  # a copy of the state being made meanwhile
        # live tensor -> the storage it had before its last redirection (free once written)
        self._spares = WeakIdKeyDictionary()

    def take(self, state: Any, live: Iterable[torch.Tensor]) -> tuple[Any, dict]:
        """Split `state` into what is handed over and the rest (to copy).

        `live`: the tensor objects the optimizer step writes (parameters, optimizer state).
        Returns `state` with the handed-over tensors' places set to None, and those tensors
        (aliases: the live ones are pointed elsewhere) by their place (`put_back`).
        Call `written_by` with the save's completion next.
        """
        owners = {_address(t): t for t in live if _plain(t) and _whole(t)}
        handed: dict[tuple, torch.Tensor] = {}
        self._armed = {}

        def leaf(path: tuple, value: Any) -> Any:
            if not (_plain(value) and _whole(value) and value.untyped_storage().nbytes() >= MIN_BYTES):
                return value
            owner = owners.get(_address(value))
            if owner is None:
                return value
            self._armed[_address(value)] = owner
            handed[path] = value.detach()
            return None

        return map_leaves(state, leaf), handed

    def written_by(self, wait: Callable[[], Any]) -> None:
        """`wait()` returns once the writer has written what `take` handed over."""
        self._written = wait

    def copied_by(self, copying: Future) -> None:
        """The state is being copied while training goes on (`copying`): the next optimizer
        step waits for the copy first."""
        self._copying = copying

    @contextlib.contextmanager
    def first_writes(self) -> Iterator[None]:
        """Around an optimizer step (what changes the state in place): it waits for a copy
        still being made, and its first write into each handed-over tensor goes into a spare
        buffer. Once out, nothing is handed over any more."""
        copying, self._copying = self._copying, None
        if copying is not None:
            copying.result()
        if not self._armed:
            yield
            return
        try:
            with _Redirection(self):
                yield
        finally:
            self._armed.clear()

    def active(self) -> bool:
        """Whether a handed-over tensor is still to be redirected."""
        return bool(self._armed)

    def owns(self, value: Any) -> bool:
        """Whether `value` is a handed-over live tensor itself (not a view or an alias of one)."""
        return _plain(value) and self._armed.get(_address(value)) is value

    def is_armed(self, value: Any) -> bool:
        """Whether `value` lies over a handed-over tensor's storage."""
        return _plain(value) and _address(value) in self._armed

    def spare_for(self, tensor: torch.Tensor) -> torch.Tensor:
        """An empty tensor like `tensor` over its spare storage (made when it has none)."""
        nbytes = tensor.untyped_storage().nbytes()
        spare = self._spares.get(tensor)
        if spare is None or spare.nbytes() != nbytes:
            spare = torch.UntypedStorage(nbytes)
        return torch.empty(0, dtype=tensor.dtype).set_(spare, 0, tensor.shape, tensor.stride())

    def moved(self, tensor: torch.Tensor, target: torch.Tensor) -> None:
        """`tensor`'s new value is in `target`: point it there, its old storage its spare."""
        del self._armed[_address(tensor)]
        old = tensor.untyped_storage()
        # `.data =`, not `set_`: set_ drops a parameter's gradient accumulator, and with
        # it the hook DistributedDataParallel reduces its gradient from.
        tensor.data = target
        self._spares[tensor] = old

    def wait_for_writer(self) -> None:
        """The fallback: wait until the save is written; the step then writes in place."""
        self._written()
        self._armed.clear()


class _Redirection(TorchFunctionMode):
    """Makes the first in-place write into each handed-over tensor an out-of-place one."""

    def __init__(self, handover: StateHandover) -> None:
        super().__init__()
        self.handover = handover

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if self.handover.active() and _may_write(name, kwargs):
            target = args[0] if args else None
            redirected = _out_of_place(name) if "out" not in kwargs else None
            if redirected is not None and self.handover.owns(target):
                new = self.handover.spare_for(target)
                try:
                    redirected(target, *args[1:], **kwargs, out=new)
                except (TypeError, RuntimeError):  # no `out=` form for these arguments
                    pass  # written in place below, after the writer (an error then is the call's own)
                else:
                    self.handover.moved(target, new)
                    return target
            if any(self.handover.is_armed(t) for t in _written_tensors(args, kwargs)):
                self.handover.wait_for_writer()
        return func(*args, **kwargs)


def _may_write(name: str, kwargs: dict) -> bool:
    """Whether a call by this name writes a tensor it is given: in place ("mul_", "__iadd__",
    "_foreach_add_"; not "__get__") or into `out`."""
    in_place = name.endswith("_") and not name.startswith("__")
    return in_place or name in _IN_PLACE_OPERATORS or "out" in kwargs


def _out_of_place(name: str) -> Callable | None:
    """The `out=` form of in-place method `name` ("mul_" -> torch.mul), for those known to
    compute the same (_REDIRECTED)."""
    if name == "copy_":
        return lambda _target, source, non_blocking=False, out=None: out.copy_(source, non_blocking)
    return getattr(torch, name[:-1]) if name in _REDIRECTED else None


def _written_tensors(args: tuple, kwargs: dict) -> Iterator[torch.Tensor]:
    """The tensors an in-place call may write: its first argument (or the list of them, for
    foreach and fused kernels) and its `out`."""
    for value in (args[0] if args else None, kwargs.get("out")):
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from (t for t in value if isinstance(t, torch.Tensor))


def put_back(rest: Any, handed: dict[tuple, torch.Tensor]) -> Any:
    """`rest` with the handed-over tensors in their places again (the state `take` split)."""
    return map_leaves(rest, lambda path, value: handed.get(path, value))


def _plain(value: Any) -> bool:
    """A tensor or parameter of no subclass (a DTensor is its shards' business)."""
    return type(value) in (torch.Tensor, torch.nn.Parameter)


def _whole(tensor: torch.Tensor) -> bool:
    """A contiguous CPU tensor over the whole of its storage."""
    return (tensor.device.type == "cpu" and tensor.is_contiguous() and tensor.storage_offset() == 0
            and tensor.numel() * tensor.element_size() == tensor.untyped_storage().nbytes())


def _address(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()
