"""`orchestrator bench` end to end: the sequential reference and each configuration
through the real launcher, then every number of the report checked against the runs'
own files, recomputed here, and every plot checked for drawn data.

Exercised by: pytest tests/test_bench.py
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.bench.plan import plan_runs
from orchestrator.bench.summary import Row, Spread, step_parts
from orchestrator.config.loading import load_spec
from orchestrator.errors import JobSpecError

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "examples/quickstart.yaml"
MB = 1 << 20


def bench(*args: str, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "bench", str(QUICKSTART), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "out"
    result = bench("--workers", "1,2", "--strategies", "ddp", "--steps", "30", "--repeats", "2", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[6/6] ddp-x2, repeat 2/2" in result.stdout  # progress, run by run
    return out


def _table(markdown: str) -> dict[str, dict[str, str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    return {row[0]: dict(zip(header, row)) for row in rows}


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _steady(records: list[dict]) -> float:
    """The median time from one step's end to the next, after the warm-up steps."""
    intervals = [b["time"] - a["time"] for a, b in zip(records, records[1:])]
    return statistics.median(intervals[max(2, len(intervals) // 10):])


def _median_cell(cell: str) -> float:
    return float(cell.split(" ")[0])


def test_every_number_in_the_report_is_the_runs_own(report):
    table = _table((report / "report.md").read_text())
    assert list(table) == ["sequential", "ddp-x1", "ddp-x2"]
    results = json.loads((report / "results.json").read_text())
    runs = {name: [report / "runs" / f"{name}-r{k}" for k in range(2)] for name in table}
    metrics = {name: [_records(d / "metrics.jsonl") for d in dirs] for name, dirs in runs.items()}
    steady = {name: statistics.median(_steady(m) for m in ms)
              for name, ms in metrics.items()}
    reference = metrics["sequential"][0]
    for name, row in table.items():
        first = metrics[name][0]
        assert len(first) == 30 and [r["step"] for r in first] == list(range(1, 31))
        assert _median_cell(row["step ms"]) == pytest.approx(steady[name] * 1000, abs=0.051)
        assert float(row["samples/s"]) == pytest.approx(64 / steady[name], abs=0.51)
        # Speedup and efficiency are against the sequential reference's median step.
        speedup = steady["sequential"] / steady[name]
        assert float(row["speedup"]) == pytest.approx(speedup, abs=0.0051)
        assert float(row["efficiency"].rstrip("%")) == pytest.approx(100 * speedup / int(row["workers"]), abs=0.51)
        deviation = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(first, reference))
        assert float(row["max loss deviation"]) == pytest.approx(deviation, rel=0.01, abs=1e-12)
        assert float(row["final loss"]) == pytest.approx(first[-1]["loss"], abs=5e-5)
        assert float(row["val loss"]) == pytest.approx(first[-1]["val_loss"], abs=5e-5)
        usage = [r for d in runs[name] for r in _records(d / "usage.jsonl")]
        assert {r["rank"] for r in usage} == set(range(int(row["workers"])))
        assert float(row["peak RSS MiB"]) == pytest.approx(max(r["peak_rss_bytes"] for r in usage) / MB, abs=0.51)
        state = max(sum(r["state_bytes"].values()) for r in _records(runs[name][0] / "usage.jsonl"))
        assert float(row["state MiB"]) == pytest.approx(state / MB, abs=0.0006)
        # One steady step profiled: what its collectives moved on the busiest worker.
        comms = [r["comm"] for r in _records(runs[name][0] / "usage.jsonl")]
        busiest = max(comms, key=lambda c: (c["bytes"], c["seconds"]))
        assert float(row["comm MiB/step"]) == pytest.approx(busiest["bytes"] / MB, abs=0.0006)
        if name == "ddp-x2":  # every gradient all-reduced: at least the parameters' bytes
            assert busiest["bytes"] >= first[-1]["mem_params_bytes"]
            assert float(row["comm GB/s"]) == pytest.approx(busiest["bytes"] / busiest["seconds"] / 1e9, abs=0.0006)
        if name == "sequential":  # no process group: nothing exchanged, nothing waited for
            assert busiest["bytes"] == 0 and float(row["comm waited ms"]) == 0
        assert float(row["comm waited ms"]) == pytest.approx(sum(busiest["exposed_s"].values()) * 1000, abs=0.006)
        activations = max(r["activation_bytes"] for r in _records(runs[name][0] / "usage.jsonl"))
        assert float(row["activations MiB"]) == pytest.approx(activations / MB, abs=0.0006) and activations > 0
        # Times taken around each run's process: launch to its first step record.
        timed = [r for r in results["runs"] if r["name"] == name]
        first_step = statistics.median(m[0]["time"] - t["started"] for m, t in zip(metrics[name], timed))
        assert _median_cell(row["launch to step 1 s"]) == pytest.approx(first_step, abs=0.0051)
        assert _median_cell(row["wall s"]) == pytest.approx(statistics.median(t["wall_s"] for t in timed), abs=0.0051)
        assert all(t["wall_s"] > m[-1]["time"] - t["started"] > 0 for m, t in zip(metrics[name], timed))
        # Each step's parts, timed inside it, add up to no more than the step.
        for record in first:
            parts = [record[key] for key in ("step_data_s", "step_compute_s", "step_optimizer_s")]
            assert all(p >= 0 for p in parts) and sum(parts) <= record["step_time_s"] + 1e-4
            assert record["step_compute_s"] == pytest.approx(record["step_forward_s"] + record["step_backward_s"])
    # The same job at the same seed: a data-parallel run's losses are the reference's.
    assert float(table["ddp-x2"]["max loss deviation"]) < 1e-5


def test_every_plot_is_a_png_with_data_drawn(report):
    import matplotlib.image

    markdown = (report / "report.md").read_text()
    plots = sorted((report / "plots").glob("*.png"))
    assert {p.name for p in plots} == {"loss.png", "deviation.png", "speedup.png", "throughput.png",
                                       "memory.png", "utilisation.png", "breakdown.png"}
    for plot in plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(plot)[..., :3]
        # Lines, markers and bars are in colour; axes and text are black on white. (A run
        # this short has a sample or two of utilisation: a few markers.)
        coloured = (abs(pixels[..., 0] - pixels[..., 2]) > 0.2).mean()
        assert coloured > 0.0003, f"{plot.name} has nothing drawn in colour"
        assert f"plots/{plot.name}" in markdown
    page = (report / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(plots) and "ddp-x2" in page


def test_layouts_the_job_cannot_take_are_skipped_with_the_reason():
    spec = load_spec(QUICKSTART)
    runs, skipped = plan_runs(spec, [1, 2], ["ddp", "tensor"], 10)
    assert [r.name for r in runs] == ["sequential", "ddp-x1", "ddp-x2", "tensor-x2"]
    assert [s.name for s in skipped] == ["tensor-x1"] and "does not divide 1 workers" in skipped[0].reason
    assert all(r.spec.train.steps == 10 and r.spec.scaling.spares == 0 for r in runs)
    with pytest.raises(JobSpecError, match="choose from"):
        plan_runs(spec, [1], ["ddp", "zero9"], None)


def test_bad_flags_are_refused_before_anything_runs(tmp_path):
    result = bench("--strategies", "ddp,zero9", "--out", str(tmp_path / "out"))
    assert result.returncode == 2 and "zero9" in result.stderr and "choose from" in result.stderr
    assert not (tmp_path / "out").exists()
    result = bench("--workers", "1,two")
    assert result.returncode == 2 and "--workers" in result.stderr


@pytest.mark.slow  # 45 s: a torchrun and a Ray Train run beside the job's own
def test_peers_train_the_same_job_as_hand_written_loops(tmp_path):
    """--peers: the job's DDP as a plain torchrun loop and a plain Ray Train loop, measured
    like every other configuration; the same model, data and seed give the same losses."""
    out = tmp_path / "out"
    result = bench("--workers", "2", "--strategies", "ddp", "--steps", "20", "--peers", "--out", str(out))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = _table((out / "report.md").read_text())
    assert list(table) == ["sequential", "ddp-x2", "torchrun-x2", "ray-train-x2"]
    reference = _records(out / "runs" / "sequential-r0" / "metrics.jsonl")
    for peer in ("torchrun-x2", "ray-train-x2"):
        records = _records(out / "runs" / f"{peer}-r0" / "metrics.jsonl")
        assert [r["step"] for r in records] == list(range(1, 21))
        for got, want in zip(records, reference):
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), f"{peer} step {got['step']}"
        assert float(table[peer]["speedup"]) == pytest.approx(_steady(reference) / _steady(records), abs=0.0051)


def test_a_step_is_split_into_its_parts_with_the_waiting_shown_apart():


    row = Row("ddp-x2", "ddp", 2, 1, step_s=Spread(0.010, 0.010, 0.010))
    row.phases = {"step_data_s": 0.001, "step_compute_s": 0.006, "step_forward_s": 0.002,
                  "step_backward_s": 0.004, "step_optimizer_s": 0.002}
    # The profiled step (slower) waited half its backward and none of the rest.
    row.exposed_s = {"step_data_s": 0.0, "step_forward_s": 0.0, "step_backward_s": 0.003, "step_optimizer_s": 0.0}
    row.profiled_phase_s = {"step_data_s": 0.002, "step_forward_s": 0.004, "step_backward_s": 0.006,
                            "step_optimizer_s": 0.003}
    parts = step_parts(row)
    assert list(parts) == ["data", "forward", "backward", "optimizer", "communication waited for", "between steps"]
    assert parts == pytest.approx({"data": 0.001, "forward": 0.002, "backward": 0.002, "optimizer": 0.002,
                                   "communication waited for": 0.002, "between steps": 0.001})
    # A pipeline interleaves forward and backward; a GPU knows the waiting for the whole step.
    row.phases = {"step_data_s": 0.001, "step_compute_s": 0.006, "step_optimizer_s": 0.002}
    row.exposed_s, row.profiled_phase_s = {"step": 0.001}, {"step": 0.020}
    parts = step_parts(row)
    assert parts == pytest.approx({"data": 0.001, "forward + backward": 0.0055, "optimizer": 0.002,
                                   "communication waited for": 0.0005, "between steps": 0.001})


@pytest.mark.e2e
@pytest.mark.cluster
def test_bench_launches_on_a_cluster_and_says_the_reference_ran_here(tmp_path):
    """--address: the launcher's configurations run on a two-node `ray start` cluster; the
    sequential reference stays on this machine, and the report says so."""
    from tests.servers import ray_cluster

    with ray_cluster({}, head_cpus=1, node_cpus=1) as cluster:
        env = {**os.environ, **{k: v for k, v in cluster.items() if k.startswith("RAY_")}}
        out = tmp_path / "out"
        result = bench("--workers", "2", "--strategies", "ddp", "--steps", "20", "--address", cluster["gcs"],
                       "--out", str(out), env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"ran on the Ray cluster at {cluster['gcs']}" in (out / "report.md").read_text()
    table = _table((out / "report.md").read_text())
    assert list(table) == ["sequential", "ddp-x2"] and float(table["ddp-x2"]["max loss deviation"]) < 1e-5
