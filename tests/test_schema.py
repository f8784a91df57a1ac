"""job.yaml's JSON Schema: shipped, current, and right about real job files.

Exercised by: pytest tests/test_schema.py
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from orchestrator.config.schema import schema_text

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "job.schema.json"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_the_shipped_schema_is_what_the_spec_generates():
    assert SHIPPED.read_text() == schema_text(), "run: orchestrator schema > job.schema.json"


def test_the_schema_command_prints_it():
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "schema"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.returncode == 0 and result.stdout == SHIPPED.read_text()


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_every_example_passes_and_points_editors_at_it(example):
    text = example.read_text()
    assert text.splitlines()[0] == "# yaml-language-server: $schema=../job.schema.json"
    jsonschema.validate(yaml.safe_load(text), json.loads(SHIPPED.read_text()))


@pytest.mark.parametrize("breakage,phrase", [
    (lambda job: job.__setitem__("optimzer", job.pop("optimizer")), "'optimzer' was unexpected"),
    (lambda job: job["train"].__setitem__("stepz", 3), "'stepz' was unexpected"),
    (lambda job: job["optimizer"].__setitem__("name", "adamm"), "'adamm' is not one of"),
    (lambda job: job["scaling"].__setitem__("workers", "two"), "'two' is not valid"),
    (lambda job: job["strategy"].__setitem__("name", "magic"), "magic"),
], ids=["misspelled-section", "misspelled-key", "bad-choice", "bad-type", "unknown-strategy"])
def test_the_schema_rejects_mistakes(breakage, phrase):
    job = copy.deepcopy(yaml.safe_load((ROOT / "examples/quickstart.yaml").read_text()))
    breakage(job)
    with pytest.raises(jsonschema.ValidationError) as caught:
        jsonschema.validate(job, json.loads(SHIPPED.read_text()))
    assert phrase in str(caught.value)


def test_version_and_completion():
    version = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--version"], capture_output=True,
                             text=True, cwd=ROOT, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("orchestrator ")
    helped = subprocess.run([sys.executable, "-m", "orchestrator.cli", "--help"], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert "--install-completion" in helped.stdout
