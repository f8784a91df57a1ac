"""What preparation hands the workers: the two splits and what the data implies."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.data.splits import Split

if TYPE_CHECKING:
    from orchestrator.data.shards import ShardedSplit


@dataclass
class PreparedData:
    train: "Split | ShardedSplit"
    validation: "Split | ShardedSplit"
    task: str
    input_dim: int | None = None
    output_dim: int | None = None
    vocab_size: int | None = None
    context: int | None = None
    label_values: list[Any] = field(default_factory=list)
    normalization: dict[str, tuple[float, float]] = field(default_factory=dict)
    feature_columns: list[str] = field(default_factory=list)  # the model's inputs, in order

    def model_arguments(self) -> dict[str, int | None]:
        """The data-derived arguments a model factory may take."""
        return {
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "vocab_size": self.vocab_size,
            "context": self.context,
        }

    def describe(self) -> str:
        streamed = "" if isinstance(self.train, Split) else f", streamed from {len(self.train.files)} shards"
        return (
            f"{len(self.train)} training and {len(self.validation)} validation samples, "
            f"task {self.task}{streamed}"
        )
