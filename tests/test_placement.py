"""Where workers go and which ranks they get (orchestrator/execution/elastic/placement.py).

Exercised by: pytest tests/test_placement.py   (the multi-node run: -m slow)
"""
from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from orchestrator.execution.elastic.placement import by_node, choose_nodes, free_slots_per_node
from orchestrator.run.files import read_jsonl

ROOT = Path(__file__).resolve().parent.parent


def test_pack_fills_the_nodes_that_hold_the_job_and_spread_evens_them_out():
    free = {"a": 2, "b": 2, "c": 1}
    assert choose_nodes(free, Counter(), 4, "pack") == ["a", "a", "b", "b"]
    assert choose_nodes(free, Counter({"b": 1}), 3, "pack") == ["b", "b", "a"]
    assert choose_nodes(free, Counter(), 4, "spread") == ["a", "b", "c", "a"]
    assert choose_nodes(free, Counter({"a": 2}), 2, "spread") == ["b", "c"]
    assert choose_nodes({"a": 1}, Counter(), 3, "pack") == ["a", None, None]  # Ray places the rest


def test_free_slots_count_whole_workers_of_every_resource():
    available = {"a": {"CPU": 4.0, "trainer": 2.0}, "b": {"CPU": 1.5, "trainer": 2.0}, "c": {"CPU": 8.0}}
    assert free_slots_per_node(available, {"CPU": 1.0, "trainer": 1.0}) == {"a": 2, "b": 1, "c": 0}


def test_ranks_on_one_node_are_adjacent_and_the_first_stays_first():
    members = [("r0", "b"), ("r1", "a"), ("r2", "b"), ("r3", "a"), ("r4", None)]
    assert [m for m, _ in by_node(members, lambda m: m[1])] == ["r0", "r2", "r1", "r3", "r4"]


def test_plan_says_what_a_tensor_group_needs_of_a_node():
    from orchestrator.planning.report import render_plan
    from tests.distributed import make_spec

    import yaml

    job = yaml.safe_load((ROOT / "tests/jobs/mlp_parity.yaml").read_text())
    text = render_plan(make_spec(job, strategy={"name": "hybrid", "tp": 2}, scaling__workers=4), 4)
    assert "placement: pack; ranks on one node are adjacent, so a node with 2 worker slots" in text


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize("placement", ["pack", "spread"])
def test_tensor_pairs_share_a_node_on_two_nodes_of_two_slots(tmp_path, placement):
    """Two nodes with room for two workers each, a dp 2 x tp 2 job: each tensor pair's
    ranks run on one node, so its collectives stay inside it (spread starts the workers
    on alternate nodes: the ranks are still handed out node by node)."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=2, resources={"trainer": 2})
        cluster.wait_for_nodes()
        overrides = ["train.steps=6", "strategy={name: hybrid, tp: 2}", "scaling.workers=4", "scaling.spares=0",
                     "scaling.cpus_per_worker=0.5", "scaling.worker_resources={trainer: 1}", f"scaling.placement={placement}"]
        args = [sys.executable, "-m", "orchestrator.cli", "launch", str(ROOT / "tests/jobs/mlp_parity.yaml"),
                "--run-dir", str(tmp_path), "--address", cluster.address]
        for override in overrides:
            args += ["--set", override]
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    finally:
        cluster.shutdown()
    usage = [u for u in read_jsonl(tmp_path / "usage.jsonl") if u["world_size"] == 4]
    node = {u["rank"]: u["node"] for u in usage}
    assert sorted(node) == [0, 1, 2, 3]
    assert node[0] == node[1] and node[2] == node[3] and node[0] != node[2]  # (0, 1) and (2, 3) are the tp pairs
