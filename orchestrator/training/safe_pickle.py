"""Pickles in a checkpoint are read without running them before anything loads them.

Torch's distributed checkpoint (`state/.metadata`, and the non-tensor items inside
`*.distcp`) and DeepSpeed (`*.pt`) load their files with `pickle`, which runs
whatever a file names. A run directory is data, not code: `find_unsafe` reads every
pickle of a checkpoint with an unpickler that resolves only the classes those
formats use (plain data holders, tensors, dtypes), so a file that names anything
else is reported, and never loaded, instead of run.
"""
from __future__ import annotations

import dataclasses
import enum
import importlib
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

# Classes DeepSpeed pickles into its checkpoint files: plain data holders.
DEEPSPEED_CLASSES = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.utils.tensor_fragment.fragment_address",
)
# What a `torch.save` archive of tensors and plain containers names (torch's own
# weights_only allowlist, narrowed to what our checkpoints hold).
TORCH_FILE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch", "Size"), ("torch", "device"), ("torch", "Tensor"), ("torch.nn.parameter", "Parameter"),
    ("collections", "OrderedDict"), ("_codecs", "encode"),
    ("copyreg", "_reconstructor"), ("builtins", "object"), ("builtins", "set"), ("builtins", "frozenset"),
    ("builtins", "slice"), ("torch.serialization", "_get_layout"),
}
# Beyond the dataclasses and enums of torch.distributed.checkpoint, what its metadata names.
METADATA_GLOBALS = {
    ("torch", "Size"), ("torch.serialization", "_get_layout"), ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"), ("pathlib", "Path"),
}


class UnsafePickle(Exception):
    """A pickle names something other than the data classes its format uses."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in METADATA_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("torch.distributed.checkpoint."):
            found = getattr(importlib.import_module(module), name, None)
            if isinstance(found, type) and (dataclasses.is_dataclass(found) or issubclass(found, enum.Enum)):
                return found
        raise UnsafePickle(f"names {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickle("holds a persistent reference, which checkpoint metadata never does")


def find_unsafe(directory: Path) -> str | None:
    """The first file under `directory` whose pickle names anything but plain data,
    with what it names; None when every pickle is plain data. Nothing is run."""
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        try:
            if path.name == ".metadata":
                _check_metadata(path)
            elif path.suffix == ".pt":
                _check_torch_file(path.read_bytes())
        except UnsafePickle as error:
            return f"{path.relative_to(directory)} {error}"
        except Exception as error:  # a damaged pickle is as unusable as an unsafe one
            return f"{path.relative_to(directory)} cannot be read as data ({type(error).__name__}: {error})"
    return None


def _check_metadata(path: Path) -> None:
    """The metadata of a distributed checkpoint, then the non-tensor items of its shards
    (`torch.save`d objects that the default planner would load with pickle)."""
    with open(path, "rb") as handle:
        metadata = _MetadataUnpickler(handle).load()
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    storage = getattr(metadata, "storage_data", None) or {}
    for index, info in storage.items():
        if isinstance(metadata.state_dict_metadata.get(index.fqn), BytesStorageMetadata):
            with open(path.parent / info.relative_path, "rb") as handle:
                handle.seek(info.offset)
                _check_torch_file(handle.read(info.length))


def _check_torch_file(data: bytes) -> None:
    """Every pickle in a `torch.save` archive names only tensors, plain containers and
    DeepSpeed's data holders. Names are checked, nothing is imported or built."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise UnsafePickle("is not a torch.save archive") from None
    with archive:
        for info in archive.infolist():
            if info.filename.endswith(".pkl"):
                if info.CRC == 0:  # saved without checksums (checkpoint_files.py): nothing to check
                    info.CRC = None
                with archive.open(info) as member:
                    _NameCheck(io.BytesIO(member.read())).load()


class _Placeholder(dict):
    """Stands in for whatever an allowed name would build; takes any state."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__()

    def __call__(self, *args, **kwargs) -> "_Placeholder":
        return _Placeholder()

    def __setstate__(self, state) -> None:
        pass

    def append(self, item) -> None:
        pass

    def extend(self, items) -> None:
        pass


class _NameCheck(pickle.Unpickler):
    """Walks a pickle, resolving each global it names against an allowlist of names
    (as strings: no module is imported) to a placeholder."""

    def find_class(self, module: str, name: str) -> Any:
        if not _allowed(module, name):
            raise UnsafePickle(f"names {module}.{name}")
        return _Placeholder

    def persistent_load(self, pid: Any) -> Any:  # tensor storages: data, not code
        return _Placeholder()


def _allowed(module: str, name: str) -> bool:
    if (module, name) in TORCH_FILE_GLOBALS or f"{module}.{name}" in DEEPSPEED_CLASSES:
        return True
    # torch.FloatStorage, torch.ByteStorage, ...; torch.float32, torch.bfloat16, ...
    return module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype))
