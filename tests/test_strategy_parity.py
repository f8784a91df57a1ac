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
from tests.jobs import ADAMW, GPT_JOB, MLP_JOB

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
]


def _spec(case: Case, strategy: dict, workers: int):
    overrides = {"strategy": strategy, "scaling__workers": workers}
    overrides.update(case.overrides)
    return make_spec(case.job, **overrides)


_reference_cache: dict[str, list[float]] = {}


def reference_losses(case: Case, prepared, tmp_root: Path) -> list[float]:
    """The 1-worker run of the same job (plain DDP at world size 1)."""
    spec = _spec(case, {"name": "ddp"}, 1)
    key = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    if key not in _reference_cache:
        run_dir = tmp_root / f"reference-{len(_reference_cache)}"
        records = train_in_processes(spec, prepared(spec), 1, run_dir)
        _reference_cache[key] = [r["loss"] for r in records]
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
