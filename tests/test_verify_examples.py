"""Every job in examples/ passes `verify` at 2 workers (4 for hybrid) under each layout
it can take; the layouts it cannot take are refused by name, never run wrong.

Slow (about a minute per example on 2 cores): python -m pytest tests/test_verify_examples.py -m slow

Exercised by: orchestrator verify examples/JOB.yaml --strategies ddp,zero1,zero2,zero3,fsdp,tensor,pipeline,hybrid
"""
from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.config.loading import load_spec
from orchestrator.errors import JobSpecError
from orchestrator.verify.layouts import PRESETS
from orchestrator.verify.render import render_report
from orchestrator.verify.runner import verify

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("job", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_passes_verify_under_every_layout_it_can_take(job):
    try:
        spec = load_spec(job, [])
    except JobSpecError as error:  # an optional package that is not installed here
        pytest.skip(f"{job.name}: {error.problems[0]}")
    report = verify(spec, list(PRESETS), workers=2, steps=3, rtol=None, address=None, say=print)
    print(render_report(report))
    ran = [check for check in report.checks if check.refused is None]
    assert ran, "no layout could take the job"
    assert all(check.passed for check in ran), render_report(report)
