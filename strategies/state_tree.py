"""Walking a state dict: nested dicts, lists and tuples with tensors and plain values at
their leaves, as `state_dict()`s and dcp's staged copies are."""
from __future__ import annotations

from typing import Any, Callable


def map_leaves(value: Any, leaf: Callable[[tuple, Any], Any], path: tuple = ()) -> Any:
    """`value` rebuilt in containers of its own, with `leaf(path, item)` in place of every
    item that is not a dict, list or tuple; `path` holds the keys and indices to it."""
    if isinstance(value, dict):
        return {key: map_leaves(item, leaf, (*path, key)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(map_leaves(item, leaf, (*path, i)) for i, item in enumerate(value))
    return leaf(path, value)
