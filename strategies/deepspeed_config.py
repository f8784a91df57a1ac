"""The DeepSpeed config dict, built from the job spec alone.

DeepSpeed has defaults that change the arithmetic (it clipped gradients unasked,
which moved losses 1-5 % away from plain PyTorch). So every key that touches the
math is written here from our spec, and nothing is left to DeepSpeed's defaults
that the replicated strategies would not do too:

    train.grad_clip            -> gradient_clipping (0.0 when off)
    train.micro_batch_size     -> train_micro_batch_size_per_gpu
    accumulation (from plan)   -> gradient_accumulation_steps
    strategy.stage / offload   -> zero_optimization
    train.precision            -> nothing: bf16 is torch autocast over fp32 weights,
                                  as for every strategy; DeepSpeed's bf16/fp16 stay off

The optimizer and LR schedule are ours too (built by the loop's factories and
passed to `deepspeed.initialize`), so no DeepSpeed optimizer is configured here.

Exercised by: pytest tests/test_sharded_strategies.py -k config
"""
from __future__ import annotations

from typing import Any

from strategies.base import StepShape

# Bucket sizes are counted in elements; fp32 gradients and weights are 4 bytes each.
_BYTES_PER_ELEMENT = 4


def deepspeed_config(
    *,
    stage: int,
    offload: str,
    bucket_mb: float,
    param_persistence_threshold: int,
    shape: StepShape,
    dp_size: int,
    pin_memory: bool,
) -> dict[str, Any]:
    """Build the config for `deepspeed.initialize`.

    Args:
        stage: ZeRO stage, 1 to 3.
        offload: "none", "optimizer" (optimizer state and its fp32 weights in host
            memory) or "parameters" (that, and the stage-3 parameter shards too).
        bucket_mb: size of the gradient reduce and parameter all-gather buckets.
        param_persistence_threshold: stage 3 keeps parameters smaller than this whole.
        shape: how the loop drives one optimizer step.
        dp_size: data-parallel ranks; DeepSpeed checks the global batch against it.
        pin_memory: pin offloaded host buffers (only meaningful with a GPU).

    Returns:
        A JSON-able dict.
    """
    bucket = int(bucket_mb * 2**20 / _BYTES_PER_ELEMENT)
    zero: dict[str, Any] = {
        "stage": stage,
        "reduce_bucket_size": bucket,
        "allgather_bucket_size": bucket,
    }
    if stage == 3:
        zero.update(
            stage3_param_persistence_threshold=param_persistence_threshold,
            stage3_prefetch_bucket_size=bucket,
        )
    if offload in ("optimizer", "parameters"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin_memory}
    if offload == "parameters":
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin_memory}
    return {
        "train_micro_batch_size_per_gpu": shape.micro_batch_size,
        "gradient_accumulation_steps": shape.accumulation,
        "train_batch_size": shape.micro_batch_size * shape.accumulation * dp_size,
        "gradient_clipping": shape.max_grad_norm or 0.0,
        # Gradients are averaged over ranks once, after summing, as DDP does.
        "prescale_gradients": False,
        "gradient_predivide_factor": 1.0,
        "fp16": {"enabled": False},
        "bf16": {"enabled": False},
        "zero_optimization": zero,
        # Our torch optimizer (or DeepSpeed's CPU Adam when offloading) is passed in.
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**62,  # our own metrics report progress
        "wall_clock_breakdown": False,
    }
