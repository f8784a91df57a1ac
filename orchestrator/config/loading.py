"""Reading a job: job.yaml, then `--set a.b=c` overrides, then every check, once.

Precedence: overrides > job.yaml > the defaults in config/spec.py. All problems
are reported together, each naming its key path.

Exercised by: pytest tests/test_spec.py
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

import strategies
from orchestrator.config.checks import job_problems
from orchestrator.config.messages import describe
from orchestrator.config.spec import RECORDED_RUN, JobSpec
from orchestrator.config.yaml_input import YamlInputError, parse_yaml
from orchestrator.errors import JobSpecError
from orchestrator.run.storage import ObjectPath


def load_spec(path: str | Path | ObjectPath, overrides: list[str] | None = None, build: bool = True,
              recorded: bool = False) -> JobSpec:
    """Read job.yaml, apply `a.b=c` overrides, validate everything once. A job file
    names code (model.name); `build=False` only resolves it, never calls it.
    `recorded`: a run's job.yaml, read to steer the run (scale, stop) from anywhere: the
    model's module and data files, checked where it launched, are not looked for here.

    Raises:
        JobSpecError: listing every problem, each naming its key path.
    """
    path = path if isinstance(path, ObjectPath) else Path(path)  # a run's job.yaml may be an object
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise JobSpecError([f"job file {str(path)!r} is a directory"]) from None
    except OSError as error:
        raise JobSpecError([f"job file {str(path)!r} cannot be read: {error.strerror or error}"]) from None
    try:
        raw = parse_yaml(data, str(path)) or {}
    except YamlInputError as error:
        raise JobSpecError([str(error)]) from None
    if not isinstance(raw, dict):
        raise JobSpecError([f"{path}: the top level must be a mapping of sections"])
    for override in overrides or []:
        apply_override(raw, override)
    base_dir = Path(".") if isinstance(path, ObjectPath) else path.parent
    return spec_from_dict(raw, base_dir=base_dir, build=build and not recorded, recorded=recorded)


def spec_from_dict(raw: dict[str, Any], base_dir: Path = Path("."), build: bool = True,
                   recorded: bool = False) -> JobSpec:
    """Validate a job given as a mapping; relative data paths resolve against `base_dir`.
    `build=False` leaves out the checks that build the model (they call model.name)."""
    try:
        spec = JobSpec.model_validate({**raw, "base_dir": base_dir}, context={RECORDED_RUN: recorded})
    except ValidationError as error:
        raise JobSpecError(describe(error, JobSpec)) from None
    problems = job_problems(spec, build=build, data=not recorded)
    if problems:
        raise JobSpecError(problems)
    return spec


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Set `a.b.c=value` in the raw mapping; the value is parsed as YAML (so 2, [1, 4], true)."""
    key, sep, text = override.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise JobSpecError([f"--set {override!r}: write it as section.key=value"])
    *parents, leaf = parts
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise JobSpecError([f"--set {override!r}: {part!r} is not a section"])
    try:
        node[leaf] = parse_yaml(text, f"--set {key.strip()}")
    except YamlInputError as error:
        raise JobSpecError([str(error)]) from None


def dump_spec(spec: JobSpec) -> str:
    """The resolved spec as YAML, every default written out."""
    data = spec.model_dump(mode="json")
    return yaml.safe_dump(data, sort_keys=False)
