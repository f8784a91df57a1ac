"""Streamed data: a file source prepared into Parquet shards, read a window of each stream at a time.

Exercised by: pytest tests/test_streaming.py
"""
from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator.data.order import ShardOrder, streams_per_rank
from orchestrator.data.pipeline import prepare_data
from orchestrator.data.sampler import GlobalBatchSampler
from orchestrator.data.shards import ShardedSplit
from tests.distributed import make_spec, train_in_processes

JOB = {
    "model": {"name": "mlp", "options": {"hidden": [16]}},
    "data": {"source": "rows.parquet", "prepare": ["normalize"], "validation_fraction": 0.1,
             # 4 KiB shards of 56-byte rows: 16 shards of about 67 rows, 4 to each stream
             "shard_mb": 0.004, "shuffle_window": 1, "streams": 4},
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
    order = ShardOrder((5, 7, 3, 6, 4), window=2)  # one stream: the epoch is one sequence
    for epoch in range(3):
        ids = order.batch_ids(seed=1, epoch=epoch, batch=0, global_batch=order.num_samples)
        assert sorted(ids) == list(range(25))
        start = 0
        for shards in _stream_windows(order, 1, epoch, 0):
            rows = sum(order.shard_rows[s] for s in shards)
            assert set(order.shards_of(ids[start : start + rows])) == set(shards)
            start += rows
    # any slice of a batch is the same slice of the whole
    whole = order.batch_ids(1, 0, 0, 25)
    np.testing.assert_array_equal(order.batch_ids(1, 0, 0, 25, 4, 17), whole[4:17])
    assert not np.array_equal(whole, order.batch_ids(1, 1, 0, 25))


def test_streams_deal_each_epoch_s_shards_and_a_batch_takes_a_share_of_every_stream():
    order = ShardOrder((40, 41, 40, 39, 40, 40, 41, 40), window=1, streams=4)
    batch = 10  # streams give 2, 3, 2, 3 samples a step
    steps = order.steps_per_epoch(batch)
    assert steps == (39 + 40) // 3  # the two smallest shards, at the largest share
    for epoch in range(3):
        ids = np.concatenate([order.batch_ids(2, epoch, b, batch) for b in range(steps)])
        assert len(set(ids)) == len(ids) == steps * batch and ids.max() < order.num_samples
        for stream, (lo, hi) in enumerate(zip(order.stream_edges(batch)[:-1], order.stream_edges(batch)[1:])):
            taken = np.concatenate([order.batch_ids(2, epoch, b, batch, lo, hi) for b in range(steps)])
            dealt = {s for w in _stream_windows(order, 2, epoch, stream) for s in w}
            assert set(order.shards_of(taken)) <= dealt and len(dealt) == 2
    first = {s for w in _stream_windows(order, 2, 0, 0) for s in w}
    assert any({s for w in _stream_windows(order, 2, e, 0) for s in w} != first for e in (1, 2, 3))


def test_a_rank_trains_only_on_its_own_streams_shards():
    order = ShardOrder((50,) * 16, window=2, streams=8)
    sampler = GlobalBatchSampler(order, global_batch=32, seed=1)
    for dp in (1, 2, 4, 8):
        read = [set() for _ in range(dp)]
        for step in range(sampler.steps_per_epoch):  # epoch 0
            for r in range(dp):
                read[r] |= set(order.shards_of(sampler.rank_batch_ids(step, r, dp)).tolist())
        assert all(len(shards) == 16 // dp for shards in read), dp
        assert len(set().union(*read)) == 16  # disjoint, and every shard read once
        assert all(len(sampler.rank_streams(r, dp)) == 8 // dp for r in range(dp))
    assert streams_per_rank(8, 3) == 4 and streams_per_rank(8, 4) == 2 and streams_per_rank(12, 5) == 4


def test_one_shard_is_the_full_shuffle_a_split_in_memory_always_had():
    ids = ShardOrder.whole(50).batch_ids(seed=7, epoch=2, batch=0, global_batch=50)
    np.testing.assert_array_equal(ids, np.random.default_rng([7, 2]).permutation(50))
    # a split of one shard has one stream whatever the job asks
    assert ShardOrder((50,), streams=8).stream_count == 1


def test_the_sampler_over_shards_does_not_depend_on_world_size():
    for streams in (1, 2, 4):
        sampler = GlobalBatchSampler(ShardOrder((30, 30, 30, 13), window=2, streams=streams), 12, seed=5)
        for step in range(25):
            whole = sampler.global_batch_ids(step)
            for dp in (1, 2, 3, 4):
                shares = [sampler.rank_batch_ids(step, r, dp) for r in range(dp)]
                np.testing.assert_array_equal(np.concatenate(shares), whole)


def _stream_windows(order, seed, epoch, stream):
    from orchestrator.data.order import _stream_windows

    return _stream_windows(order, seed, epoch, stream)


def test_a_file_is_prepared_into_shards_that_hold_what_memory_would(streamed):
    spec, streamed, root = streamed
    assert isinstance(streamed.train, ShardedSplit) and len(streamed.train.files) > 4
    assert len(streamed.train) + len(streamed.validation) == 1200
    # the same job with shards big enough for the whole split: one shard, same rows in the same order
    whole = prepare_data(streamed_spec(root, data__shard_mb=64, data__streams=1), root / "whole")
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


def test_a_reader_reads_its_rank_s_shards_once_an_epoch_and_holds_two_windows_of_each(streamed):
    split = pickle.loads(pickle.dumps(streamed[1].train))  # as a worker gets it: no reader yet
    assert len(split.files) == 16 and split.order.stream_count == 4
    sampler = GlobalBatchSampler(split.order, 32, seed=3)
    epochs = 3
    for step in range(epochs * sampler.steps_per_epoch):
        ids = sampler.rank_batch_ids(step, 0, 2)
        split.prefetch_for(sampler, step, 0, 2)
        inputs, targets = split.take(ids)
        assert inputs.shape == (16, 12) and targets.shape == (16,)
        assert len(split.reader._cache) <= 2 * 2 * split.window + 1  # two streams: rank 0 of 2
    assert split.reader.shards_read <= epochs * 16 // 2  # half the shards, once an epoch
    # rows come back as asked, whichever shard holds them
    ids = np.array([len(split) - 1, 0, 5, len(split) // 2])
    everything = split.take(np.arange(len(split)))
    np.testing.assert_array_equal(split.take(ids)[0], everything[0][ids])


def test_data_parallel_training_on_a_streamed_split_matches_one_worker(streamed, tmp_path):
    spec, data, _ = streamed
    assert len(data.train.files) == 16  # four windows a stream each epoch
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
    assert len(data.train.files) == 16
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
    # two windows of one shard from each of 2 of the 4 streams, and one being read
    assert data.per_worker_bytes(2) == (2 * 2 + 1) * int(0.004 * 2**20)
    assert data.per_worker_bytes(1) == (2 * 4 + 1) * int(0.004 * 2**20)
    in_memory = estimate_data(make_spec(JOB, data={"source": "digits"}), {"input_dim": 64, "context": None})
    assert not in_memory.streamed and in_memory.per_worker_bytes(2) == 1797 * (64 * 4 + 8)


def test_a_preparation_outside_a_run_leaves_no_folder_behind(tmp_path):
    """Data prepared without a run's folder goes to a temporary one, removed when the
    process that prepared it exits."""
    spec_path = tmp_path / "rows.parquet"
    write_rows(spec_path)
    script = (
        "from orchestrator.data.store import ShardStore\n"
        "from tests.distributed import make_spec\n"
        "from tests.test_streaming import JOB\n"
        f"spec = make_spec(JOB, data__source={str(spec_path)!r})\n"
        "store = ShardStore.at(spec, None)\n"
        "(store.root / 'train').mkdir()\n"
        "print(store.root)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    folder = Path(result.stdout.split()[-1])
    assert folder.name.startswith("orchestrator-data-") and not folder.exists()
