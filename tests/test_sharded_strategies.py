"""Sharded data parallelism (zero stages 1-3, fsdp) beyond loss parity: the bytes each
rank holds, checkpoints that resume at the same and at a smaller size, the schedule
and clipping, offload, and the settings that are refused.

Every run is compared with the 1-worker DDP run of the same job (the sequential
arithmetic), never with another run of the strategy under test.

Exercised by: pytest tests/test_sharded_strategies.py
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import strategies
from orchestrator.errors import JobSpecError
from orchestrator.planning.memory import estimate_memory
from orchestrator.run.files import RunFiles, read_jsonl
from orchestrator.training.checkpoint import CheckpointManager, verify
from strategies.deepspeed_config import deepspeed_config
from tests.distributed import make_spec, train_in_processes
from tests.jobs import ADAMW, MLP_JOB

RELATIVE_TOLERANCE = 1e-5

SHARDED = {
    "zero1": {"name": "zero", "stage": 1},
    "zero2": {"name": "zero", "stage": 2},
    "zero3": {"name": "zero", "stage": 3},
    "fsdp": {"name": "fsdp"},
}
# What each divides by the data-parallel size (the ZeRO paper's P_os, P_os+g, P_os+g+p).
SHARDED_PARTS = {
    "zero1": {"optimizer"},
    "zero2": {"optimizer", "grads"},
    "zero3": {"params", "grads", "optimizer"},
    "fsdp": {"params", "grads", "optimizer"},
}
PARTS = ("params", "grads", "optimizer")

_sequential_cache: dict[str, list[dict]] = {}


def sequential(job: dict, prepared, root: Path, **overrides) -> list[dict]:
    """Per-step records of the job trained by plain DDP on one worker (cached)."""
    spec = make_spec(job, strategy={"name": "ddp"}, scaling__workers=1, **overrides)
    key = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    if key not in _sequential_cache:
        run_dir = root / f"sequential-{len(_sequential_cache)}"
        _sequential_cache[key] = train_in_processes(spec, prepared(spec), 1, run_dir)
    return _sequential_cache[key]


def assert_close(got: float, want: float, what: str) -> None:
    assert got == pytest.approx(want, rel=RELATIVE_TOLERANCE), f"{what}: {got} != {want}"


# ---- memory ---------------------------------------------------------------------------------
# Many small layers: ZeRO-2 keeps whole the gradients of the parameters that straddle
# its partition's edges (below), which a model of few large tensors would make most of it.
# Gradients are held whole between the micro-batches of a step (ZeRO-1) or not, so the
# batch is split into several at every size measured.
MEMORY_JOB = {
    **MLP_JOB,
    "model": {"name": "mlp", "options": {"hidden": [16] * 12}},
    "optimizer": ADAMW,
    "train": {**MLP_JOB["train"], "steps": 2, "global_batch_size": 64},
}
_memory_cache: dict[tuple[str, int], dict[str, int]] = {}


def measured_memory(strategy: dict, workers: int, prepared, root: Path) -> dict[str, int]:
    """Rank 0's `mem_*_bytes` metrics after the last step."""
    key = (json.dumps(strategy, sort_keys=True), workers)
    if key not in _memory_cache:
        spec = make_spec(MEMORY_JOB, strategy=strategy, scaling__workers=workers)
        run_dir = root / f"memory-{len(_memory_cache)}"
        last = train_in_processes(spec, prepared(spec), workers, run_dir)[-1]
        _memory_cache[key] = {part: last[f"mem_{part}_bytes"] for part in PARTS}
    return _memory_cache[key]


@pytest.mark.parametrize("workers", [2, pytest.param(4, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", list(SHARDED))
def test_memory_is_divided_across_ranks(name, workers, prepared, tmp_path_factory):
    root = tmp_path_factory.getbasetemp()
    ddp = measured_memory({"name": "ddp"}, workers, prepared, root)
    got = measured_memory(SHARDED[name], workers, prepared, root)
    model_bytes = 4 * _parameter_count(MEMORY_JOB)
    assert ddp["params"] == ddp["grads"] == model_bytes, "DDP holds one whole fp32 replica"
    largest_tensor = 4 * 16 * 16

    for part in PARTS:
        if part not in SHARDED_PARTS[name]:
            assert got[part] >= ddp[part], f"{name} keeps {part} whole"
        elif name == "zero2" and part == "grads":
            # Between micro-batches DeepSpeed's stage 2 holds the whole gradient of each
            # parameter its partition overlaps: 1/N plus up to one tensor at each edge.
            assert got[part] <= ddp[part] / workers + 2 * largest_tensor, (name, part, got, ddp)
            assert got[part] < ddp[part]
        else:
            assert got[part] <= 1.1 * ddp[part] / workers, (name, part, got, ddp)
    if SHARDED_PARTS[name] == set(PARTS):
        assert sum(got.values()) <= 1.1 * sum(ddp.values()) / workers, (got, ddp)


def _parameter_count(job: dict) -> int:
    features, classes = job["data"]["options"]["features"], job["data"]["options"]["classes"]
    dims = [features, *job["model"]["options"]["hidden"], classes]
    return sum(d_in * d_out + d_out for d_in, d_out in zip(dims, dims[1:]))


# ---- checkpoints ---------------------------------------------------------------------------
RESUME_JOB = {**MLP_JOB, "optimizer": ADAMW, "train": {**MLP_JOB["train"], "steps": 20}}


# zero1 is slow: zero2 resumes DeepSpeed's partitioned optimizer state by the same path.
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name == "zero1" else name
                                  for name in SHARDED])
def test_resumes_at_the_same_and_a_smaller_size(name, prepared, tmp_path):
    """Train 12 of 20 steps at 2 workers with checkpoints, then finish from the step-12
    checkpoint at 2 workers and, as after a resize, at 1. AdamW's moments must come back
    too: without them the steps after 13 would move away from the uninterrupted run."""
    expected = sequential(RESUME_JOB, prepared, tmp_path)
    first = make_spec(
        RESUME_JOB, strategy=SHARDED[name], scaling__workers=2, train__steps=12,
        checkpoint__every_steps=6,
    )
    train_in_processes(first, prepared(first), 2, tmp_path / "first")

    for workers in (2, 1):
        run_dir = tmp_path / f"resumed-at-{workers}"
        shutil.copytree(tmp_path / "first", run_dir)
        spec = make_spec(RESUME_JOB, strategy=SHARDED[name], scaling__workers=workers)
        resumed = train_in_processes(spec, prepared(spec), workers, run_dir)[12:]
        events = [e for e in read_jsonl(RunFiles(run_dir).events) if e["event"] == "resumed"]
        assert [(e["step"], e["world_size"]) for e in events] == [(12, workers)]
        assert [r["step"] for r in resumed] == list(range(13, 21))
        for record in resumed:
            step = record["step"]
            assert_close(record["loss"], expected[step - 1]["loss"], f"{workers} workers, step {step}")
        # What a load at another size derives inside a checkpoint leaves it valid.
        assert all(verify(c) is None for c in CheckpointManager.list_checkpoints(run_dir))


# ---- schedule and clipping -------------------------------------------------------------------
SCHEDULED_JOB = {
    **RESUME_JOB,
    "schedule": {"name": "cosine", "warmup_steps": 4},
    "train": {**RESUME_JOB["train"], "steps": 12, "grad_clip": 0.5},
}


@pytest.mark.parametrize("name", ["zero2", "zero3", "fsdp"])
def test_schedule_and_clipping_follow_the_job(name, prepared, tmp_path):
    """DeepSpeed steps the schedule and clips inside its engine: once per optimizer step,
    to train.grad_clip, reporting the norm before clipping, as the sequential run does."""
    expected = sequential(SCHEDULED_JOB, prepared, tmp_path)
    spec = make_spec(SCHEDULED_JOB, strategy=SHARDED[name], scaling__workers=2)
    records = train_in_processes(spec, prepared(spec), 2, tmp_path / name)
    assert any(r["grad_norm"] > 0.5 for r in expected), "clipping should be active"
    for got, want in zip(records, expected, strict=True):
        for key in ("loss", "lr", "grad_norm"):
            assert_close(got[key], want[key], f"step {got['step']} {key}")


# ---- offload ---------------------------------------------------------------------------------
@pytest.mark.slow  # the first run on a host compiles DeepSpeed's CPU Adam (1-2 min)
@pytest.mark.parametrize(
    "strategy",
    [{"name": "zero", "stage": 2, "offload": "optimizer"}, {"name": "zero", "stage": 3, "offload": "parameters"}],
    ids=["zero2-optimizer", "zero3-parameters"],
)
def test_offload_matches_one_worker(strategy, prepared, tmp_path):
    expected = sequential(RESUME_JOB, prepared, tmp_path, train__steps=12)
    spec = make_spec(RESUME_JOB, strategy=strategy, scaling__workers=2, train__steps=12)
    records = train_in_processes(spec, prepared(spec), 2, tmp_path / "offload")
    for got, want in zip(records, expected, strict=True):
        assert_close(got["loss"], want["loss"], f"step {got['step']}")


# ---- settings ----------------------------------------------------------------------------------
def _problems(strategy: dict, **overrides) -> str:
    with pytest.raises(JobSpecError) as caught:
        make_spec(MLP_JOB, strategy=strategy, **overrides)
    return "\n".join(caught.value.problems)


@pytest.mark.parametrize(
    "strategy, overrides, expected",
    [
        ({"name": "zero", "stage": 4}, {}, ["strategy.stage", "is not one of 1, 2, 3"]),
        ({"name": "zero", "stage": 0}, {}, ["strategy.stage"]),
        ({"name": "zero", "offload": "nvme"}, {}, ["strategy.offload", "is not one of none, optimizer, parameters"]),
        ({"name": "zero", "stage": 2, "offload": "parameters"}, {"optimizer": ADAMW},
         ["strategy.offload: 'parameters' needs strategy.stage: 3", "got stage 2"]),
        ({"name": "zero", "stage": 3, "offload": "optimizer"}, {},
         ["strategy.offload: 'optimizer'", "no 'sgd'", "optimizer.name"]),
        ({"name": "zero", "stage": 1, "param_persistence_threshold": 100}, {},
         ["strategy.param_persistence_threshold", "stage 3 only"]),
        ({"name": "zero", "bucket_mb": 0}, {}, ["strategy.bucket_mb"]),
        ({"name": "zero", "reshard_after_forward": True}, {}, ["strategy.reshard_after_forward: unknown key"]),
        ({"name": "fsdp", "stage": 3}, {}, ["strategy.stage: unknown key"]),
    ],
    ids=["stage-4", "stage-0", "offload-nvme", "offload-params-stage2", "offload-sgd", "threshold-stage1",
         "bucket-0", "fsdp-key-on-zero", "zero-key-on-fsdp"],
)
def test_wrong_settings_name_the_key(strategy, overrides, expected):
    problems = _problems(strategy, **overrides)
    for text in expected:
        assert text in problems


def test_missing_deepspeed_gives_an_install_hint(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else find_spec(name, *a)
    )
    assert "pip install -e .[zero]" in _problems({"name": "zero", "stage": 3})


def test_valid_settings_load():
    spec = make_spec(MLP_JOB, strategy={"name": "zero", "stage": 3, "offload": "parameters"}, optimizer=ADAMW)
    assert (spec.strategy.stage, spec.strategy.offload) == (3, "parameters")
    assert make_spec(MLP_JOB, strategy={"name": "zero"}).strategy.stage == 2


@pytest.mark.parametrize("clip, expected", [(None, 0.0), (0.5, 0.5)])
def test_deepspeed_config_comes_from_the_job(clip, expected):
    shape = strategies.StepShape(micro_batch_size=8, accumulation=3, max_grad_norm=clip)
    config = deepspeed_config(
        stage=3, offload="parameters", bucket_mb=1.0, param_persistence_threshold=0,
        shape=shape, dp_size=2, pin_memory=False,
    )
    assert config["gradient_clipping"] == expected
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (8, 3)
    assert config["train_batch_size"] == 48
    assert not config["bf16"]["enabled"] and not config["fp16"]["enabled"]
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["reduce_bucket_size"] == 2**18
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    assert "optimizer" not in config and "scheduler" not in config, "ours are passed in"


@pytest.mark.parametrize(
    "strategy, divided",
    [
        ({"name": "ddp"}, set()),
        ({"name": "zero", "stage": 1}, {"optimizer"}),
        ({"name": "zero", "stage": 2}, {"optimizer", "grads"}),
        ({"name": "zero", "stage": 3}, {"optimizer", "grads", "params"}),
        ({"name": "fsdp"}, {"optimizer", "grads", "params"}),
    ],
)
def test_plan_estimate_divides_what_is_sharded(strategy, divided):
    spec = make_spec(MLP_JOB, strategy=strategy, optimizer=ADAMW, scaling__workers=4)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, 40), torch.nn.Linear(40, 4))
    n = sum(p.numel() for p in model.parameters())
    memory = estimate_memory(model, spec, torch.zeros(8, 12), dp=4)
    whole = {"params": 4 * n, "grads": 4 * n, "optimizer": 8 * n}
    for part, total in whole.items():
        assert getattr(memory, part) == (-(-total // 4) if part in divided else total), part
