"""Streamed data: a file source prepared into Parquet shards, read a window at a time.

Exercised by: pytest tests/test_streaming.py
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.data.order import ShardOrder, windows_at
from orchestrator.data.pipeline import prepare_data
from orchestrator.data.sampler import GlobalBatchSampler
from orchestrator.data.shards import ShardedSplit
from tests.distributed import make_spec, train_in_processes

JOB = {
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "data": {"source": "rows.parquet", "prepare": ["normalize"], "validation_fraction": 0.1,
             "shard_mb": 0.004, "shuffle_window": 2},  # 4 KiB shards of 56-byte rows: 74 rows each
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "train": {"global_batch_size": 32, "micro_batch_size": 8, "seed": 3, "steps": 40},
    "checkpoint": {"every_steps": 0},
    "scaling": {"workers": 2},
}


def write_rows(path, n=1200, features=12, seed=0) -> None:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 4, n)
    x = rng.normal(size=(n, features)) + label[:, None]
    pq.write_table(pa.table({**{f"f{i}": x[:, i] for i in range(features)}, "label": label}), path,
                   row_group_size=300)


@pytest.fixture(scope="module")
def streamed(tmp_path_factory, ray_session):
    """(spec, its data prepared into 16 shards, the folder they are in)."""
    root = tmp_path_factory.mktemp("streamed")
    spec = streamed_spec(root)
    return spec, prepare_data(spec, root / "data"), root


def streamed_spec(tmp_path, **overrides):
    path = tmp_path / "rows.parquet"
    if not path.exists():
        write_rows(path)
    return make_spec(JOB, data__source=str(path), **overrides)


def test_each_epoch_uses_every_id_once_and_windows_keep_to_their_shards():
    order = ShardOrder((5, 7, 3, 6, 4), window=2)
    for epoch in range(3):
        ids = order.ids(seed=1, epoch=epoch, start=0, stop=order.num_samples)
        assert sorted(ids) == list(range(25))
        start = 0
        for k, shards in enumerate(_windows(order, 1, epoch)):
            rows = sum(order.shard_rows[s] for s in shards)
            assert set(order.shards_of(ids[start : start + rows])) == set(shards)
            assert windows_at(order, 1, epoch, start) == shards
            start += rows
    # any slice of the order is the same slice of the whole
    whole = order.ids(1, 0, 0, 25)
    np.testing.assert_array_equal(order.ids(1, 0, 4, 17), whole[4:17])
    assert not np.array_equal(whole, order.ids(1, 1, 0, 25))


def test_one_shard_is_the_full_shuffle_a_split_in_memory_always_had():
    ids = ShardOrder.whole(50).ids(seed=7, epoch=2, start=0, stop=50)
    np.testing.assert_array_equal(ids, np.random.default_rng([7, 2]).permutation(50))


def test_the_sampler_over_shards_does_not_depend_on_world_size():
    sampler = GlobalBatchSampler(ShardOrder((30, 30, 30, 13), window=2), global_batch=12, seed=5)
    for step in range(25):
        whole = sampler.global_batch_ids(step)
        for dp in (1, 2, 3, 4):
            shares = [sampler.rank_batch_ids(step, r, dp) for r in range(dp)]
            np.testing.assert_array_equal(np.concatenate(shares), whole)


def _windows(order, seed, epoch):
    from orchestrator.data.order import _windows

    return _windows(order, seed, epoch)


def test_a_file_is_prepared_into_shards_that_hold_what_memory_would(streamed):
    spec, streamed, root = streamed
    assert isinstance(streamed.train, ShardedSplit) and len(streamed.train.files) > 4
    assert len(streamed.train) + len(streamed.validation) == 1200
    # the same job with shards big enough for the whole split: one shard, same rows in the same order
    whole = prepare_data(streamed_spec(root, data__shard_mb=64), root / "whole")
    assert len(whole.train.files) == 1
    everything = np.arange(len(whole.train))
    for got, want in zip(streamed.train.take(everything), whole.train.take(everything), strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(streamed.train.take(everything)[0].mean(0), 0, atol=1e-5)  # normalised
    assert streamed.input_dim == 12 and streamed.output_dim == 4


def test_a_prepared_folder_is_read_back_and_a_changed_job_prepares_anew(tmp_path, ray_session):
    spec = streamed_spec(tmp_path, data__shard_mb=0.02)
    first = prepare_data(spec, tmp_path / "data")
    shard = tmp_path / "data" / "train" / first.train.files[0]
    written = shard.stat().st_mtime_ns
    again = prepare_data(spec, tmp_path / "data")  # a resumed run
    assert again == first
    assert shard.stat().st_mtime_ns == written
    reseeded = prepare_data(streamed_spec(tmp_path, data__shard_mb=0.02, train__seed=4), tmp_path / "data")
    assert not shard.exists() and reseeded.train.files != first.train.files


def test_a_reader_holds_two_windows_and_reads_the_next_one_ahead(streamed):
    split = streamed[1].train
    sampler = GlobalBatchSampler(split.order, 32, seed=3)
    for step in range(3 * sampler.steps_per_epoch):
        ids = sampler.rank_batch_ids(step, 0, 2)
        split.prefetch_for(sampler, step)
        inputs, targets = split.take(ids)
        assert inputs.shape == (16, 12) and targets.shape == (16,)
        assert len(split.reader._cache) <= 2 * split.window + 1
    # rows come back as asked, whichever shard holds them
    ids = np.array([len(split) - 1, 0, 5, len(split) // 2])
    everything = split.take(np.arange(len(split)))
    np.testing.assert_array_equal(split.take(ids)[0], everything[0][ids])


def test_data_parallel_training_on_a_streamed_split_matches_one_worker(streamed, tmp_path):
    spec, data, _ = streamed
    assert len(data.train.files) > 2 * spec.data.shuffle_window  # several windows per epoch
    one = train_in_processes(spec, data, 1, tmp_path / "one")
    two = train_in_processes(spec, data, 2, tmp_path / "two")
    assert len(one) == len(two) == 40  # over more than one epoch (33 steps each)
    for a, b in zip(one, two, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5), a["step"]


@pytest.mark.e2e
@pytest.mark.slow
def test_a_streamed_run_survives_a_kill_and_a_resize_and_uses_every_sample_once(tmp_path, ray_session):
    """`orchestrator launch` on a Parquet file prepared into 16 shards: a worker killed at
    step 20 and replaced, then `scale` 2 -> 1 -> 2. Every sample of every epoch is used
    exactly once and the losses are the uninterrupted 2-worker run's."""
    import json
    import subprocess
    import sys
    import time

    import yaml

    from orchestrator.data.pipeline import prepare_data
    from orchestrator.run.files import read_jsonl
    from orchestrator.run.records import latest_per_step
    from tests.distributed import assert_each_sample_once

    steps = 3000  # 90 epochs of 33 steps: long enough to resize twice on the way
    write_rows(tmp_path / "rows.parquet")
    job = {**JOB, "optimizer": {"name": "sgd", "lr": 0.02, "momentum": 0.0},
           "train": {**JOB["train"], "steps": steps, "audit_samples": True},
           "checkpoint": {"every_steps": 5}, "chaos": {"kill_worker_at_steps": [20]},
           "scaling": {"workers": [1, 2], "spares": 0}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    run_dir = tmp_path / "run"
    cli = [sys.executable, "-m", "orchestrator.cli"]
    driver = subprocess.Popen([*cli, "launch", str(tmp_path / "job.yaml"), "--run-dir", str(run_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def sizes() -> list[int]:
        path = run_dir / "metrics.jsonl"
        return [r["world_size"] for r in read_jsonl(path)] if path.exists() else []

    def wait(condition, what: str) -> None:
        deadline = time.monotonic() + 240
        while not condition():
            assert driver.poll() is None, f"the run ended before {what}"
            assert time.monotonic() < deadline, f"no {what}"
            time.sleep(0.1)

    def scale(workers: int) -> None:
        done = subprocess.run([*cli, "scale", str(run_dir), "--workers", str(workers)], capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stdout + done.stderr

    try:
        wait(lambda: len(sizes()) >= 100, "step 100")
        scale(1)
        wait(lambda: 1 in sizes(), "world size 1")
        scale(2)
        output, _ = driver.communicate(timeout=400)
        assert driver.returncode == 0, output[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()

    records = latest_per_step(list(read_jsonl(run_dir / "metrics.jsonl")))
    seen = [r["world_size"] for r in records]
    assert seen[0] == 2 and 1 in seen and seen[-1] == 2, "expected 2 -> 1 -> 2 workers"
    assert any(e["event"] == "failure" for e in read_jsonl(run_dir / "events.jsonl"))
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == steps

    spec = make_spec(job, data__source=str(tmp_path / "rows.parquet"))
    data = prepare_data(spec, run_dir / "data")  # the run's own shards, read back
    assert len(data.train.files) > 2 * spec.data.shuffle_window
    assert_each_sample_once(run_dir, records, GlobalBatchSampler(data.train.order, 32, seed=3), steps)
    reference = train_in_processes(make_spec(job, data__source=str(tmp_path / "rows.parquet"),
                                             chaos__kill_worker_at_steps=[], train__audit_samples=False),
                                   data, 2, tmp_path / "reference")
    for got, want in zip(records, reference, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4), f"step {got['step']}"


def test_plan_sizes_a_parquet_source_from_its_footers_and_bounds_what_a_worker_holds(tmp_path):
    from orchestrator.data.estimate import estimate_data
    from orchestrator.data.model_arguments import model_arguments

    spec = streamed_spec(tmp_path)
    arguments = model_arguments(spec)
    assert arguments["input_dim"] == 12 and arguments["output_dim"] == 4
    data = estimate_data(spec, arguments)
    assert data.rows == 1200 and data.row_bytes == 12 * 4 + 8 and data.streamed
    assert data.per_worker_bytes == (2 * 2 + 1) * int(0.004 * 2**20)  # two windows of 2 shards, and one
    in_memory = estimate_data(make_spec(JOB, data={"source": "digits"}), {"input_dim": 64, "context": None})
    assert not in_memory.streamed and in_memory.per_worker_bytes == 1797 * (64 * 4 + 8)
