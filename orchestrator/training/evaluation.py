"""The loss of each task, and validation over the held-out split."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from orchestrator.training.batches import batch_tensors
from orchestrator.training.collectives import all_reduce
from orchestrator.training.context import WorkerContext


def loss_function(task: str):
    if task == "regression":
        return lambda output, target: F.mse_loss(output.squeeze(-1), target)
    if task == "lm":
        return lambda logits, target: F.cross_entropy(logits.flatten(0, 1), target.flatten())
    return F.cross_entropy


@torch.no_grad()
def validate(w: WorkerContext, strategy, loss_fn) -> dict[str, float]:
    """Loss (and accuracy or perplexity) over the validation split, each data-parallel
    rank taking every dp_size-th micro-batch.

    Every rank runs the same number of forward passes: sharded strategies gather
    parameters inside forward, so a rank with one batch fewer would leave the others
    waiting in a collective. A rank past the end repeats the first batch and counts
    nothing of it.
    """
    split = w.data.validation
    if len(split) == 0:
        return {}
    totals = torch.zeros(3, dtype=torch.float64)  # loss * n, correct, n
    batch = w.spec.train.micro_batch_size
    batches = -(-len(split) // batch)
    rounds = -(-batches // strategy.dp_size)
    for k in range(rounds):
        start = (k * strategy.dp_size + strategy.dp_rank) * batch
        counted = start < len(split)
        ids = np.arange(start, min(start + batch, len(split))) if counted else np.arange(min(batch, len(split)))
        inputs, targets = batch_tensors(split, ids, w.device)
        output = strategy.predict(inputs)
        if output is None or not counted:
            continue
        n = targets.numel()
        totals[0] += float(loss_fn(output, targets)) * n
        totals[2] += n
        if w.data.task == "classification":
            totals[1] += float((output.argmax(-1) == targets).sum())
    all_reduce(totals)
    loss = float(totals[0] / totals[2])
    result = {"val_loss": loss}
    if w.data.task == "classification":
        result["val_accuracy"] = float(totals[1] / totals[2])
    if w.data.task == "lm":
        result["val_perplexity"] = float(np.exp(min(loss, 50.0)))
    return result
