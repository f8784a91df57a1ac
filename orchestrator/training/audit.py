"""`train.audit_samples`: the sample ids each rank trains on, to check exactly-once use."""
from __future__ import annotations

import numpy as np

from orchestrator.run.files import RunFiles, append_jsonl
from orchestrator.training.context import WorkerContext


def record_sample_ids(w: WorkerContext, step: int, ids: np.ndarray, dp_rank: int) -> None:
    folder = RunFiles(w.run_dir).samples
    folder.mkdir(exist_ok=True)
    record = {"step": step, "rank": w.rank, "dp_rank": dp_rank, "world_size": w.world_size,
              "attempt": w.attempt, "ids": ids.tolist()}
    append_jsonl(folder / f"rank{w.rank}.jsonl", record)
