"""The order a benchmark runs its variants in, repeat after repeat.

Each repeat starts with the next variant, so on a shared, drifting machine no variant
always runs first (or right after the same one); the medians over repeats then compare
like with like. With two variants this alternates them.
"""
from __future__ import annotations

from typing import Sequence, TypeVar

T = TypeVar("T")


def rotated(variants: Sequence[T], repeat: int) -> list[T]:
    """`variants` starting at the one `repeat` points to."""
    shift = repeat % len(variants)
    return list(variants[shift:]) + list(variants[:shift])
