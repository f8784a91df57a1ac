"""Bad input never crashes or hangs: random job files, `--set` values and damaged run
directories through the CLI end in exit 0, 1 or 2 with a message, never a traceback,
and each rejection of a job names what to change.

Bounded to about a minute by default; FUZZ_EXAMPLES=2000 runs longer:
    FUZZ_EXAMPLES=2000 python -m pytest tests/test_fuzz_input.py -m fuzz

Exercised by: pytest tests/test_fuzz_input.py
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from orchestrator.cli.commands import app

ROOT = Path(__file__).resolve().parent.parent
BASE = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))
SETTINGS = settings(
    max_examples=EXAMPLES or 60, deadline=10_000, derandomize=not EXAMPLES,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
SECTIONS = ["name", "model", "data", "optimizer", "schedule", "train", "strategy", "scaling", "checkpoint",
            "failure", "chaos"]
KEYS = {
    "model": ["name", "options", "pretrained", "input_shape"],
    "data": ["source", "options", "prepare", "task", "label_column", "validation_fraction"],
    "optimizer": ["name", "lr", "momentum", "weight_decay", "nesterov"],
    "train": ["steps", "seed", "global_batch_size", "micro_batch_size", "grad_clip", "precision",
              "validate_every", "log_every"],
    "strategy": ["name", "stage", "tp", "pp", "plan", "schedule", "verify", "verify_options"],
    "scaling": ["workers", "spares", "cpus_per_worker", "backend", "use_gpu", "worker_resources"],
    "checkpoint": ["every_steps", "keep"],
}
MODEL_NAMES = ["mlp", "gpt", "cnn", "lstm", "tests.user_models:linear_stack", "os:system", "no.such:thing",
               "shutil:rmtree", ":", "a:", "transformers:NoSuchModel"]
STRATEGY_NAMES = ["ddp", "zero", "fsdp", "tensor", "pipeline", "hybrid", "sequential", "nope", ""]
# What a rejection names: a key path, the flag, or the file.
NAMED = tuple(SECTIONS) + ("--set", "job file", ".yaml")

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-10**12, max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(MODEL_NAMES + STRATEGY_NAMES),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=8)
# Values a job could plausibly hold, so that many drawn jobs get past the schema to the
# batch arithmetic, the layout checks and plan's model build.
plausible = st.one_of(
    st.integers(-1, 64), st.sampled_from(MODEL_NAMES + STRATEGY_NAMES), st.lists(st.integers(0, 8), max_size=3),
    st.sampled_from([{"width": 8}, {"depth": 1, "width": 16, "heads": 2}, {"hidden": [8]}, {}]),
)


@st.composite
def jobs(draw) -> dict:
    """The quickstart job with a few keys changed, removed or added."""
    job = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(list(KEYS) * 4 + SECTIONS + ["bogus"]))
        if section not in KEYS or draw(st.integers(0, 19)) == 0:
            job[section] = draw(values)
            continue
        node = job.setdefault(section, {})
        if not isinstance(node, dict):
            continue
        key = draw(st.sampled_from(KEYS[section] + ["unknown_key"]))
        if draw(st.integers(0, 3)) == 0 and key in node:
            del node[key]
        else:
            node[key] = draw(st.one_of(plausible, plausible, values))
    return job


overrides = st.builds(
    lambda key, value: f"{key}={value}",
    st.one_of(st.sampled_from([f"{s}.{k}" for s, ks in KEYS.items() for k in ks]), st.text(max_size=12)),
    st.one_of(st.text(max_size=24), st.sampled_from(["[1,", "{a: ", "&a [*a]", "!!python/object:os.system", "- -",
                                                     "[1, 10000000]", "-1", "1e400", "'"])),
)


def _invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args} raised {result.exception!r}\n{result.output[-2000:]}")
    assert "Traceback" not in result.output
    return result


def _check_rejection(result) -> None:
    assert result.exit_code in (0, 2), result.output[-2000:]
    if result.exit_code == 2:
        assert any(name in result.output for name in NAMED), result.output[-2000:]


@pytest.mark.fuzz
@SETTINGS
@given(job=jobs(), extra=st.lists(overrides, max_size=2))
def test_random_jobs_validate_or_name_the_key(job, extra, tmp_path_factory):
    path = tmp_path_factory.mktemp("job") / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    args = ["validate", str(path)] + [part for o in extra for part in ("--set", o)]
    _check_rejection(_invoke(*args))


@pytest.mark.fuzz
@settings(SETTINGS, max_examples=EXAMPLES or 25)
@given(job=jobs(), workers=st.one_of(st.none(), st.integers(-3, 9)))
def test_random_jobs_plan_or_name_the_key(job, workers, tmp_path_factory):
    path = tmp_path_factory.mktemp("job") / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    args = ["plan", str(path)] + ([] if workers is None else ["--workers", str(workers)])
    result = _invoke(*args)
    if workers is not None and workers < 1:
        assert result.exit_code == 2 and "--workers" in result.output
    else:
        _check_rejection(result)


@pytest.mark.fuzz
@SETTINGS
@given(data=st.binary(max_size=300))
def test_random_bytes_as_a_job_file(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("job") / "job.yaml"
    path.write_bytes(data)
    _check_rejection(_invoke("validate", str(path)))


RUN_FILES = ["controller.json", "summary.json", "events.jsonl", "metrics.jsonl", "driver.pid", "requests.jsonl",
             "directive.json", "job.yaml", "checkpoints/step_00000002/manifest.json"]


@pytest.mark.fuzz
@SETTINGS
@given(damage=st.dictionaries(st.sampled_from(RUN_FILES), st.one_of(
    st.binary(max_size=80), st.builds(lambda v: json.dumps(v).encode(), values)), max_size=5))
def test_damaged_run_directories_never_give_a_traceback(damage, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    (run_dir / "job.yaml").write_text(yaml.safe_dump(BASE))
    for name, content in damage.items():
        (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / name).write_bytes(content)
    for command in (["status", str(run_dir)], ["status", str(run_dir), "--json"], ["logs", str(run_dir)],
                    ["logs", str(run_dir), "--events"], ["stop", str(run_dir)]):
        assert _invoke(*command).exit_code in (0, 1, 2)


KNOWN_CASES = {
    "not UTF-8": b"name: \xff\xfe\n",
    "deep nesting": b"a: " + b"[" * 5000 + b"]" * 5000,
    "alias bomb": b"a: &a [1,1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                  b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
                  b"f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n",
    "duplicate key": yaml.safe_dump(BASE).encode() + b"name: again\n",
    "huge worker range": yaml.safe_dump({**BASE, "scaling": {"workers": [1, 10000000]}}).encode(),
    "a builtin as the model": yaml.safe_dump({**BASE, "model": {"name": "os:system",
                                                                 "options": {"command": "touch MARKER"}}}).encode(),
    "wrong-typed model option": yaml.safe_dump({**BASE, "model": {"name": "gpt", "options": {"depth": "two"}}}).encode(),
    "escaping run name": yaml.safe_dump({**BASE, "name": "../../x"}).encode(),
}


@pytest.mark.parametrize("case", list(KNOWN_CASES))
def test_known_bad_job_files_are_refused_with_the_reason(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.yaml").write_bytes(KNOWN_CASES[case])
    for command in ("validate", "plan"):
        result = _invoke(command, str(tmp_path / "job.yaml"))
        assert result.exit_code == 2, result.output
    assert not (tmp_path / "MARKER").exists()


def test_a_set_value_yaml_cannot_parse_names_the_flag():
    result = _invoke("validate", str(ROOT / "examples" / "quickstart.yaml"), "--set", "train.steps=[1,")
    assert result.exit_code == 2 and "--set train.steps" in result.output


def test_launch_into_an_existing_run_or_a_file_is_refused(tmp_path):
    job = str(ROOT / "examples" / "quickstart.yaml")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "job.yaml").write_text(yaml.safe_dump(BASE))
    result = _invoke("launch", job, "--run-dir", str(tmp_path / "run"))
    assert result.exit_code == 2 and "orchestrator resume" in result.output
    (tmp_path / "file").write_text("x")
    result = _invoke("launch", job, "--run-dir", str(tmp_path / "file"))
    assert result.exit_code == 2 and "is a file" in result.output


def test_a_second_driver_is_kept_off_a_run(tmp_path):
    from orchestrator.errors import RunDirError
    from orchestrator.run.control import DriverLock

    first = DriverLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
            DriverLock(tmp_path).acquire()
    finally:
        first.release()
    DriverLock(tmp_path).acquire()  # free again once the holder lets go


def test_a_strategy_key_set_without_a_strategy_section_keeps_the_default_strategy():
    result = _invoke("validate", str(ROOT / "examples" / "digits_lstm.yaml"), "--set", "strategy.verify=true")
    assert result.exit_code == 0 and "strategy ddp" in result.output
