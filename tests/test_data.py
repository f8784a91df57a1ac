"""The ingestion pipeline on a real (small) Ray, and the global sample order.

Exercised by: pytest tests/test_data.py
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from orchestrator.data.order import ShardOrder
from orchestrator.data.sampler import GlobalBatchSampler
from orchestrator.data.pipeline import prepare_data
from orchestrator.errors import DataError, JobSpecError
from tests.distributed import make_spec

TABLE_JOB = {
    "model": {"name": "mlp"},
    "data": {"source": "rows.parquet", "prepare": ["dropna", "encode_labels", "normalize"],
             "validation_fraction": 0.25},
    "train": {"global_batch_size": 8, "micro_batch_size": 4},
    "scaling": {"workers": 2},
}


def _inputs(split) -> np.ndarray:
    return split.take(np.arange(len(split)))[0]


def _targets(split) -> np.ndarray:
    return split.take(np.arange(len(split)))[1]


def _rows(n=400, seed=0) -> pa.Table:
    rng = np.random.default_rng(seed)
    a = rng.normal(5.0, 3.0, n)
    a[::50] = np.nan  # 8 missing values to drop
    b = rng.normal(-2.0, 0.5, n)
    label = np.where(a + b > 3, "high", "low")
    return pa.table({"a": a, "b": b, "label": label})


def _write(tmp_path, fmt: str):
    table = _rows()
    path = tmp_path / f"rows.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, path)
    elif fmt == "csv":
        pcsv.write_csv(table, path)
    else:
        with open(path, "w") as handle:
            for row in table.to_pylist():
                handle.write(json.dumps({k: (None if isinstance(v, float) and np.isnan(v) else v)
                                         for k, v in row.items()}) + "\n")
    return path


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_file_sources_are_cleaned_split_and_normalised(fmt, tmp_path, ray_session):
    path = _write(tmp_path, fmt)
    spec = make_spec(TABLE_JOB, data__source=str(path))
    data = prepare_data(spec)
    assert len(data.train) + len(data.validation) == 392  # 8 rows with a missing value dropped
    assert 0.15 < len(data.validation) / 392 < 0.35
    assert data.label_values == ["high", "low"] and data.output_dim == 2
    assert set(np.unique(_targets(data.train))) <= {0, 1}
    # statistics from the training split only: exactly standard there, not on validation
    np.testing.assert_allclose(_inputs(data.train).mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(_inputs(data.train).std(0), 1, atol=1e-4)
    assert not np.allclose(_inputs(data.validation).mean(0), 0, atol=1e-5)
    mean_a, std_a = data.normalization["a"]
    assert 4.0 < mean_a < 6.0 and 2.0 < std_a < 4.0  # the raw column: N(5, 3)


def test_split_is_deterministic_and_disjoint(tmp_path, ray_session):
    path = _write(tmp_path, "parquet")
    spec = make_spec(TABLE_JOB, data__source=str(path), data__prepare=["dropna", "encode_labels"])
    first, second = prepare_data(spec), prepare_data(spec)
    np.testing.assert_array_equal(_inputs(first.train), _inputs(second.train))
    train_rows = {tuple(r) for r in _inputs(first.train)}
    assert not train_rows & {tuple(r) for r in _inputs(first.validation)}
    other_seed = prepare_data(make_spec(TABLE_JOB, data__source=str(path), data__prepare=["dropna", "encode_labels"], train__seed=9))
    assert {tuple(r) for r in _inputs(other_seed.train)} != train_rows


def test_missing_values_without_dropna_is_a_clear_error(tmp_path, ray_session):
    path = _write(tmp_path, "parquet")
    with pytest.raises(JobSpecError, match="dropna"):  # found in the first rows, before anything starts
        make_spec(TABLE_JOB, data__source=str(path), data__prepare=["encode_labels"])
    spec = make_spec(TABLE_JOB, data__source=str(path), data__prepare=["encode_labels"], unchecked_data=True)
    with pytest.raises(DataError, match="dropna"):  # and by the pipeline itself
        prepare_data(spec)


def test_text_labels_without_encoding_is_a_clear_error(tmp_path, ray_session):
    path = _write(tmp_path, "parquet")
    with pytest.raises(JobSpecError, match="encode_labels"):
        make_spec(TABLE_JOB, data__source=str(path), data__prepare=["dropna"])
    spec = make_spec(TABLE_JOB, data__source=str(path), data__prepare=["dropna"], unchecked_data=True)
    with pytest.raises(DataError, match="encode_labels"):
        prepare_data(spec)


def test_builtin_digits_and_chars(ray_session):
    digits = prepare_data(make_spec(TABLE_JOB, data={"source": "digits", "prepare": ["normalize"]}))
    assert len(digits.train) + len(digits.validation) == 1797
    assert digits.input_dim == 64 and digits.output_dim == 10
    chars_job = {**TABLE_JOB, "model": {"name": "gpt"}}
    chars = prepare_data(make_spec(chars_job, data={"source": "chars", "prepare": ["tokenize_chars"],
                                                    "options": {"context": 32, "max_chars": 20000}}))
    assert chars.task == "lm" and chars.vocab_size == 256 and chars.context == 32
    assert _inputs(chars.train).shape[1] == 32
    # targets are the inputs shifted by one character
    np.testing.assert_array_equal(_inputs(chars.train)[:, 1:], _targets(chars.train)[:, :-1])
    text = bytes(_inputs(chars.train)[0].astype(np.uint8)).decode("utf-8", errors="replace")
    assert text.isprintable() or "\n" in text


def test_sampler_order_does_not_depend_on_world_size():
    sampler = GlobalBatchSampler(ShardOrder.whole(103), global_batch=12, seed=5)
    assert sampler.steps_per_epoch == 8
    for step in range(20):
        whole = sampler.global_batch_ids(step)
        for dp in (1, 2, 3, 4, 6):
            shares = [sampler.rank_batch_ids(step, r, dp) for r in range(dp)]
            np.testing.assert_array_equal(np.concatenate(shares), whole)


def test_sampler_uses_each_sample_at_most_once_per_epoch_and_reshuffles():
    sampler = GlobalBatchSampler(ShardOrder.whole(100), global_batch=10, seed=1)
    epoch0 = np.concatenate([sampler.global_batch_ids(s) for s in range(10)])
    epoch1 = np.concatenate([sampler.global_batch_ids(s) for s in range(10, 20)])
    assert sorted(epoch0) == list(range(100)) == sorted(epoch1)
    assert not np.array_equal(epoch0, epoch1)


def test_sampler_refuses_a_batch_larger_than_the_data():
    with pytest.raises(ValueError, match="train.global_batch_size"):
        GlobalBatchSampler(ShardOrder.whole(10), global_batch=16, seed=0)


@pytest.mark.parametrize("source,steps", [
    ("digits", ["normalize"]),
    ("synthetic", ["dropna", "encode_labels", "normalize"]),
    ("chars", ["tokenize_chars"]),
])
def test_in_memory_preparation_gives_what_ray_data_gives(source, steps, monkeypatch, ray_session):
    """A built-in source is prepared in this process (data/in_memory.py). The same table
    handed to Ray Data, through the same pipeline, gives the same rows, split, labels and
    statistics."""
    import ray.data

    from orchestrator.data import pipeline, sources
    from orchestrator.data.in_memory import InMemoryDataset

    job = {**TABLE_JOB, "model": {"name": "gpt" if source == "chars" else "mlp"}}
    options = {"context": 16, "max_chars": 20000} if source == "chars" else {}
    spec = make_spec(job, data={"source": source, "prepare": steps, "options": options})
    assert isinstance(sources.read_source(spec), InMemoryDataset)
    in_memory = prepare_data(spec)

    table = sources.read_source(spec).to_pandas()
    sources.configure_ray_data()
    monkeypatch.setattr(pipeline, "read_source", lambda _: ray.data.from_pandas(table))
    by_ray = prepare_data(spec)

    for name in ("train", "validation"):
        mine, theirs = getattr(in_memory, name), getattr(by_ray, name)
        assert len(mine) > 0
        np.testing.assert_allclose(_inputs(mine), _inputs(theirs), rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(_targets(mine), _targets(theirs))
    assert in_memory.label_values == by_ray.label_values
    assert in_memory.normalization.keys() == by_ray.normalization.keys()
    for column, (mean, std) in in_memory.normalization.items():
        assert mean == pytest.approx(by_ray.normalization[column][0], rel=1e-9, abs=1e-12)
        assert std == pytest.approx(by_ray.normalization[column][1], rel=1e-9)
