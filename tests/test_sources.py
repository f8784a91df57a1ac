"""Files users bring, through `orchestrator launch`: a folder of PNG images labelled by
sub-folder, JSON-lines texts with a BPE tokenizer trained here, and Parquet files on a
real S3 endpoint (moto's server on 127.0.0.1) with the run on S3 too.

Exercised by: pytest tests/test_sources.py   (skip with -m "not e2e")
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from orchestrator.config.loading import load_spec
from orchestrator.data.model_arguments import model_arguments
from orchestrator.run.files import read_jsonl
from tests.servers import moto_s3

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent


def launch(job: dict, folder: Path, run_dir, env: dict | None = None) -> subprocess.CompletedProcess:
    (folder / "job.yaml").write_text(yaml.safe_dump(job))
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", "launch", str(folder / "job.yaml"),
                             "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=400,
                            cwd=folder, env={**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def digits_as_pngs(folder: Path, count: int = 600) -> None:
    """scikit-learn's bundled digits as 8x8 grey PNG files, in one sub-folder per digit."""
    from PIL import Image

    from orchestrator.data.sources import digits_table

    table = digits_table()
    pixels = np.stack([table.column(f"pixel_{i}").to_numpy() for i in range(64)], axis=1)[:count]
    labels = table.column("label").to_numpy()[:count]
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    for index, (image, label) in enumerate(zip(pixels, labels)):
        (folder / names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image.reshape(8, 8) * 255 / 16).astype(np.uint8), mode="L").save(
            folder / names[label] / f"{index:04d}.png")


def test_a_cnn_trains_on_a_folder_of_png_files(tmp_path):
    digits_as_pngs(tmp_path / "digits")
    job = {
        "name": "pngs",
        "model": {"name": "cnn", "options": {"channels": 8, "blocks": 1}},
        "data": {"source": "digits", "format": "images", "prepare": ["encode_labels"],
                 "options": {"size": [8, 8], "mode": "L"}, "validation_fraction": 0.2},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "train": {"steps": 150, "global_batch_size": 64, "micro_batch_size": 32, "validate_every": 75},
        "scaling": {"workers": 2},
    }
    job["data"]["source"] = "digits/"  # a folder, not the built-in source
    launch(job, tmp_path, tmp_path / "run")
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["validation"]["val_accuracy"] > 0.6  # ten classes: chance is 0.1
    exported = json.loads((tmp_path / "run/model.json").read_text())
    assert exported["arguments"]["input_dim"] == 64 and exported["arguments"]["output_dim"] == 10
    assert sorted(exported["label_values"]) == sorted(p.name for p in (tmp_path / "digits").iterdir())
    # `plan` and `validate` see the same sizes without reading the images
    spec = load_spec(tmp_path / "job.yaml")
    assert model_arguments(spec)["input_dim"] == 64 and model_arguments(spec)["output_dim"] == 10


def test_a_gpt_trains_on_json_lines_with_a_tokenizer_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from orchestrator.data.sources import stdlib_source_files

    texts = [p.read_text(encoding="utf-8", errors="replace")[:6000] for p in stdlib_source_files()[:60]]
    with open(tmp_path / "texts.jsonl", "w") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text}) + "\n")
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["[UNK]"]))
    tokenizer.save(str(tmp_path / "tokenizer.json"))

    job = {
        "name": "bpe",
        "model": {"name": "gpt", "options": {"width": 32, "depth": 1, "heads": 2}},
        "data": {"source": "texts.jsonl", "task": "lm", "prepare": ["tokenize"],
                 "options": {"context": 32, "tokenizer": "tokenizer.json"}},
        "optimizer": {"name": "adamw", "lr": 0.003},
        "train": {"steps": 80, "global_batch_size": 32, "micro_batch_size": 16, "validate_every": 40},
        "scaling": {"workers": 2},
    }
    launch(job, tmp_path, tmp_path / "run")
    exported = json.loads((tmp_path / "run/model.json").read_text())
    assert exported["arguments"]["vocab_size"] == tokenizer.get_vocab_size()
    validations = [r["val_loss"] for r in read_jsonl(tmp_path / "run/metrics.jsonl") if "val_loss" in r]
    assert validations[-1] < math.log(tokenizer.get_vocab_size()) - 1.0  # well under a uniform guess
    assert model_arguments(load_spec(tmp_path / "job.yaml"))["vocab_size"] == tokenizer.get_vocab_size()


@pytest.mark.slow
def test_parquet_files_on_s3_train_a_run_on_s3_like_the_same_files_on_disk(tmp_path):
    """Source files on S3, the run (its shards among it) on S3: the losses are those of
    the same files read from a local folder, and nothing is written to local disk."""
    import boto3

    rng = np.random.default_rng(0)
    (tmp_path / "local/rows").mkdir(parents=True)
    for part in range(3):
        label = rng.integers(0, 3, 400)
        x = rng.normal(size=(400, 6)) + label[:, None]
        pq.write_table(pa.table({**{f"x{i}": x[:, i] for i in range(6)}, "label": label}),
                       tmp_path / "local/rows" / f"part-{part}.parquet")
    job = {
        "name": "s3-rows",
        "model": {"name": "mlp", "options": {"hidden": [16]}},
        "data": {"source": "rows/", "prepare": ["normalize"], "shard_mb": 0.01},
        "optimizer": {"name": "sgd", "lr": 0.05},
        "train": {"steps": 30, "global_batch_size": 32, "micro_batch_size": 16, "seed": 1},
        "scaling": {"workers": 2},
    }
    launch(job, tmp_path / "local", tmp_path / "local/run")
    with moto_s3("data", "runs") as env:
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        for part in sorted((tmp_path / "local/rows").iterdir()):
            client.upload_file(str(part), "data", f"tables/rows/{part.name}")
        (tmp_path / "remote").mkdir()
        launch({**job, "data": {**job["data"], "source": "s3://data/tables/rows"}}, tmp_path / "remote",
               "s3://runs/streamed", env)
        listed = client.list_objects_v2(Bucket="runs", Prefix="streamed/data/train/")["Contents"]
        metrics = [json.loads(line) for key in _keys(client, "runs", "streamed/metrics.jsonl/")
                   for line in client.get_object(Bucket="runs", Key=key)["Body"].read().decode().splitlines()]
    assert len([o for o in listed if o["Key"].endswith(".parquet")]) > 1
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == ["job.yaml"], "the run wrote to local disk"
    local = [r["loss"] for r in read_jsonl(tmp_path / "local/run/metrics.jsonl")]
    remote = [r["loss"] for r in sorted(metrics, key=lambda r: r["step"])]
    assert len(remote) == 30 and remote == pytest.approx(local, abs=1e-6)


def _keys(client, bucket: str, prefix: str) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def test_a_folder_of_text_files_is_one_row_per_file_for_a_language_model(tmp_path, ray_session):
    from orchestrator.data.pipeline import prepare_data
    from orchestrator.data.sources import stdlib_source_files
    from tests.distributed import make_spec

    (tmp_path / "books/more").mkdir(parents=True)
    texts = [p.read_text(encoding="utf-8", errors="replace")[:3000] for p in stdlib_source_files()[:3]]
    for index, text in enumerate(texts):
        (tmp_path / ("books/more" if index else "books") / f"{index}.txt").write_text(text)
    spec = make_spec({"model": {"name": "gpt"}, "data": {"source": str(tmp_path / "books"),
                                                         "prepare": ["tokenize_chars"], "options": {"context": 16}}})
    assert spec.resolved_task == "lm" and spec.source_format == "text"  # the natural task of text files
    data = prepare_data(spec, tmp_path / "data")
    inputs, targets = data.train.take(np.arange(len(data.train)))
    assert data.vocab_size == 256 and inputs.shape[1] == 16
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
    assert len(data.train) + len(data.validation) == sum(len(t.encode()) // 17 for t in texts)
    window = bytes(inputs[0].astype(np.uint8)).decode("utf-8", errors="replace")
    assert any(window in text for text in texts)
