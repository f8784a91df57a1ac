"""Process layout: how the world splits into data, tensor and pipeline groups.

`ParallelDims` is validated once. Only the data-parallel degree may be left for
the world size to decide, so an elastic resize changes `dp` alone.
"""
from __future__ import annotations

from dataclasses import dataclass


class LayoutError(ValueError):
    """A layout that cannot be built from the given worker count."""


@dataclass(frozen=True)
class ParallelDims:
    world_size: int
    dp: int
    tp: int = 1
    pp: int = 1

    def __post_init__(self) -> None:
        if self.dp * self.tp * self.pp != self.world_size:
            raise LayoutError(
                f"data {self.dp} x tensor {self.tp} x pipeline {self.pp} != {self.world_size} workers"
            )

    @classmethod
    def fill_data_parallel(cls, world_size: int, tp: int = 1, pp: int = 1) -> "ParallelDims":
        """Let data parallelism take whatever the tensor and pipeline degrees leave."""
        model_parallel = tp * pp
        if world_size % model_parallel:
            fits = [n for n in range(model_parallel, 4 * model_parallel + 1, model_parallel)]
            raise LayoutError(
                f"tensor {tp} x pipeline {pp} = {model_parallel} does not divide {world_size} workers; "
                f"worker counts that fit: {', '.join(map(str, fits))}, ..."
            )
        return cls(world_size=world_size, dp=world_size // model_parallel, tp=tp, pp=pp)

    def coordinates(self, rank: int) -> tuple[int, int, int]:
        """(dp, pp, tp) coordinates of a global rank; tp varies fastest, as on a
        ("dp", "pp", "tp") device mesh, so tensor groups share a node when they can."""
        tp_rank = rank % self.tp
        pp_rank = (rank // self.tp) % self.pp
        dp_rank = rank // (self.tp * self.pp)
        return dp_rank, pp_rank, tp_rank
