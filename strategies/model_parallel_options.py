"""The `strategy:` sections of the model-parallel names (tensor, pipeline, hybrid) and
their registry entries. The runtime (strategies/hybrid.py, with torch's tensor and
pipeline machinery) is imported when a strategy is built or checked against a model,
not when a job is loaded: a ddp job never pays for it.

Exercised by: pytest tests/test_model_parallel.py tests/test_spec.py
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from strategies.mesh import ParallelDims
from strategies.registry import StrategyOptions, StrategySpec, register_strategy, runtime

SCHEDULES = ("gpipe", "1f1b", "interleaved_1f1b")


# ---- job.yaml ---------------------------------------------------------------------------------
class _TensorFields(StrategyOptions):
    plan: Literal["model", "auto"] = Field(
        "model",
        description="`model`: the model's own tensor plan (gpt: heads and MLP; mlp: column/row "
        "pairs). `auto`: split every nn.Linear of any model, pairing consecutive ones.",
    )


class _PipelineFields(StrategyOptions):
    schedule: Literal[SCHEDULES] = Field(
        "1f1b", description="Pipeline schedule."
    )
    microbatches: int = Field(
        4, ge=1, description="Pipeline micro-batches each train.micro_batch_size batch is split into."
    )
    stages_per_worker: int | None = Field(
        None, ge=1, description="Stages each pipeline worker holds; more than 1 needs "
        "interleaved_1f1b (default there: 2, else 1).",
    )
    split_points: list[int] | None = Field(
        None, description="Index of the block each stage after the first starts at, counted over "
        "the model's block sequence: `model.layers`, or for a Hugging Face decoder its "
        "`pipeline_blocks` (embed_tokens, each decoder layer, norm, lm_head: `orchestrator plan` "
        "lists them); default: stages balanced by parameter count.",
    )

    @model_validator(mode="after")
    def _stages_fit_schedule(self):
        if (self.stages_per_worker or 1) > 1 and self.schedule != "interleaved_1f1b":
            raise ValueError(
                f"stages_per_worker: {self.stages_per_worker} stages per worker need "
                f"schedule: interleaved_1f1b, not {self.schedule!r}"
            )
        return self


class TensorOptions(_TensorFields):
    """`strategy:` section for `name: tensor`."""

    name: Literal["tensor"] = "tensor"
    tp: int = Field(2, ge=1, description="Tensor-parallel degree; data parallelism takes the rest.")


class PipelineOptions(_PipelineFields):
    """`strategy:` section for `name: pipeline`."""

    name: Literal["pipeline"] = "pipeline"
    pp: int = Field(2, ge=1, description="Pipeline workers; data parallelism takes the rest.")


class HybridOptions(_TensorFields, _PipelineFields):
    """`strategy:` section for `name: hybrid`."""

    name: Literal["hybrid"] = "hybrid"
    tp: int = Field(1, ge=1, description="Tensor-parallel degree.")
    pp: int = Field(1, ge=1, description="Pipeline workers.")
    data_parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="The data dimension: full replicas (ddp) or sharded ones (fsdp)."
    )


def _register(name: str, options: type[BaseModel], layout, summary: str) -> None:
    register_strategy(
        StrategySpec(
            name=name,
            options=options,
            build=runtime("strategies.hybrid", "ModelParallelStrategy"),
            layout=layout,
            summary=summary,
            check=runtime("strategies.hybrid", "check"),
            describe=runtime("strategies.hybrid", "describe"),
            changes_math=lambda options: True,
        )
    )


_register(
    "tensor",
    TensorOptions,
    lambda options, world_size: ParallelDims.fill_data_parallel(world_size, tp=options.tp),
    "tensor parallel: nn.Linear layers split Megatron-style (column then row) over tp workers",
)
_register(
    "pipeline",
    PipelineOptions,
    lambda options, world_size: ParallelDims.fill_data_parallel(world_size, pp=options.pp),
    f"pipeline parallel: blocks cut into stages, micro-batches scheduled ({', '.join(SCHEDULES)})",
)
_register(
    "hybrid",
    HybridOptions,
    lambda options, world_size: ParallelDims.fill_data_parallel(world_size, tp=options.tp, pp=options.pp),
    "data x pipeline x tensor on one device mesh; data parallel (ddp or fsdp) fills the workers",
)
