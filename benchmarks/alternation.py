"""The order a benchmark runs its variants in, repeat after repeat.

Each repeat starts with the next variant, so on a shared, drifting machine no variant
always runs first (or right after the same one); the medians over repeats then compare
like with like. With two variants this alternates them.
"""
from __future__ import annotations

import json
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


def rotated(variants: Sequence[T], repeat: int) -> list[T]:
    """`variants` starting at the one `repeat` points to."""
    shift = repeat % len(variants)
    return list(variants[shift:]) + list(variants[:shift])


def alternate(variants: Sequence[T], repeats: int, measure: Callable[[T], dict],
              label: str = "variant") -> dict[T, list[dict]]:
    """Each variant's `measure(variant)`, `repeats` times, the variants rotated repeat after
    repeat. Each result is printed as it comes, as progress through a long run."""
    runs: dict[T, list[dict]] = {variant: [] for variant in variants}
    for repeat in range(repeats):
        for variant in rotated(variants, repeat):
            runs[variant].append(measure(variant))
            print(json.dumps({"repeat": repeat, label: str(variant), **runs[variant][-1]}), flush=True)
    return runs
