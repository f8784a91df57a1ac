"""Reading a job: job.yaml, then `--set a.b=c` overrides, then every check, once.

Precedence: overrides > job.yaml > the defaults in config/spec.py. All problems
are reported together, each naming its key path.

In two steps, for a caller that starts work between them (`launch` starts Ray):
`read_spec` checks all but the model's code, without torch; `check_model` then imports
that code and checks the model against the layout.

Exercised by: pytest tests/test_spec.py
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

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
    spec = read_spec(path, overrides, recorded=recorded)
    if not recorded:
        check_model(spec, build=build)
    return spec


def read_spec(path: str | Path | ObjectPath, overrides: list[str] | None = None,
              recorded: bool = False) -> JobSpec:
    """job.yaml and its overrides checked for everything but the model's code: the schema,
    the data and the batch arithmetic, without torch. `check_model` does the rest. A job
    refused here is checked against its model's code too, so its report has it all.

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
    return _without_model(raw, base_dir, recorded)


def check_model(spec: JobSpec, build: bool = True) -> None:
    """A spec from `read_spec` against its model's code (importing torch); with `build`,
    also the layout checks that build the model (on the meta device).

    Raises:
        JobSpecError: listing every problem, each naming its key path.
    """
    from orchestrator.config.checks import model_problems

    problems = model_problems(spec, build=build)
    if problems:
        raise JobSpecError(problems)


def spec_from_dict(raw: dict[str, Any], base_dir: Path = Path("."), build: bool = True,
                   recorded: bool = False) -> JobSpec:
    """Validate a job given as a mapping; relative data paths resolve against `base_dir`.
    `build=False` leaves out the checks that build the model (they call model.name)."""
    spec = _without_model(raw, base_dir, recorded)
    if not recorded:
        check_model(spec, build=build)
    return spec


def _without_model(raw: dict[str, Any], base_dir: Path, recorded: bool) -> JobSpec:
    """The schema, then the data and batch arithmetic (config/checks.py)."""
    from orchestrator.config.checks import job_problems, model_option_problems  # pyarrow, planning

    try:
        spec = JobSpec.model_validate({**raw, "base_dir": base_dir}, context={RECORDED_RUN: recorded})
        problems = job_problems(spec, here=not recorded)
    except ValidationError as error:
        problems = describe(error, JobSpec)
    if problems and not recorded:
        model = raw.get("model")
        if isinstance(model, dict):
            problems += model_option_problems(model.get("name"), model.get("options", {}))
    if problems:
        raise JobSpecError(list(dict.fromkeys(problems)))
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
