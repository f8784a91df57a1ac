"""Every strategy against the 1-worker run of the same job: per-step losses equal
within 1e-5 relative over 30 steps (fp32). The matrix is data; one test runs it.

Exercised by: pytest tests/test_strategy_parity.py
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.distributed import make_spec, train_in_processes
from tests.jobs import ADAMW, GPT_JOB, MLP_JOB, USER_MODEL_JOB

RELATIVE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Case:
    id: str
    job: dict
    strategy: dict
    workers: int
    overrides: dict = field(default_factory=dict)


MATRIX = [
    Case("ddp-mlp-sgd", MLP_JOB, {"name": "ddp"}, 2),
    Case("ddp-mlp-adamw", MLP_JOB, {"name": "ddp"}, 2, {"optimizer": ADAMW}),
    Case("ddp-mlp-sgd-4", MLP_JOB, {"name": "ddp"}, 4),
    Case("ddp-gpt-adamw", GPT_JOB, {"name": "ddp"}, 2),
    # Sharded data parallel: the same arithmetic, with state split across the ranks.
    *(
        Case(f"zero{stage}-mlp-{opt}", MLP_JOB, {"name": "zero", "stage": stage}, 2, extra)
        for stage in (1, 2, 3)
        for opt, extra in (("sgd", {}), ("adamw", {"optimizer": ADAMW}))
    ),
    Case("fsdp-mlp-sgd", MLP_JOB, {"name": "fsdp"}, 2),
    Case("fsdp-mlp-adamw", MLP_JOB, {"name": "fsdp"}, 2, {"optimizer": ADAMW}),
    # Model parallel: the model itself split over ranks.
    Case("pipeline-gpipe-mlp", MLP_JOB, {"name": "pipeline", "pp": 2, "schedule": "gpipe", "microbatches": 4}, 2),
    Case("pipeline-1f1b-gpt", GPT_JOB, {"name": "pipeline", "pp": 2, "schedule": "1f1b", "microbatches": 4}, 2),
    Case("pipeline-interleaved-gpt", GPT_JOB, {"name": "pipeline", "pp": 2, "schedule": "interleaved_1f1b"}, 2),
    Case("tensor-gpt", GPT_JOB, {"name": "tensor", "tp": 2}, 2),
    Case("tensor-mlp", MLP_JOB, {"name": "tensor", "tp": 2}, 2),
    Case("tensor-auto-user-model", USER_MODEL_JOB, {"name": "tensor", "tp": 2, "plan": "auto"}, 2),
    Case("hybrid-dp2-tp2-gpt", GPT_JOB, {"name": "hybrid", "tp": 2}, 4),
    Case("hybrid-tp2-pp2-gpt-clip", GPT_JOB, {"name": "hybrid", "tp": 2, "pp": 2}, 4,
         {"train__grad_clip": 0.5, "train__micro_batch_size": 8}),
    Case("hybrid-dp2-pp2-fsdp-mlp", MLP_JOB, {"name": "hybrid", "pp": 2, "data_parallel": "fsdp", "microbatches": 2}, 4),
]


def _spec(case: Case, strategy: dict, workers: int):
    overrides = {"strategy": strategy, "scaling__workers": workers}
    overrides.update(case.overrides)
    return make_spec(case.job, **overrides)


_reference_cache: dict[str, list[float]] = {}
_reference_validation: dict[str, float] = {}  # final val_loss, same keys


def reference_losses(case: Case, prepared, tmp_root: Path) -> list[float]:
    """The 1-worker run of the same job (plain DDP at world size 1)."""
    spec = _spec(case, {"name": "ddp"}, 1)
    key = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    if key not in _reference_cache:
        run_dir = tmp_root / f"reference-{len(_reference_cache)}"
        records = train_in_processes(spec, prepared(spec), 1, run_dir)
        _reference_cache[key] = [r["loss"] for r in records]
        _reference_validation[key] = records[-1]["val_loss"]
    return _reference_cache[key]


@pytest.mark.parametrize("case", MATRIX, ids=[c.id for c in MATRIX])
def test_strategy_matches_one_worker(case: Case, prepared, tmp_path_factory):
    spec = _spec(case, case.strategy, case.workers)
    expected = reference_losses(case, prepared, tmp_path_factory.getbasetemp())
    records = train_in_processes(spec, prepared(spec), case.workers, tmp_path_factory.mktemp(case.id))
    losses = [r["loss"] for r in records]
    assert len(losses) == len(expected) == 30
    assert losses[-1] < losses[0], "the job should learn something in 30 steps"
    for step, (got, want) in enumerate(zip(losses, expected), start=1):
        assert got == pytest.approx(want, rel=RELATIVE_TOLERANCE), f"step {step}: {got} != {want}"
    # Evaluation goes through the strategy's predict: pipeline stages, sharded layers. The
    # absolute slack covers a loss near zero summed in another order over data-parallel ranks.
    key = json.dumps(_spec(case, {"name": "ddp"}, 1).model_dump(mode="json"), sort_keys=True)
    want = _reference_validation[key]
    assert records[-1]["val_loss"] == pytest.approx(want, rel=RELATIVE_TOLERANCE, abs=1e-6)
