"""What each rank used (usage.jsonl): written by every rank at the end of an attempt,
with the state the strategy left on that rank, in real gloo processes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.distributed import make_spec, train_in_processes
from tests.jobs import MLP_JOB


def _usage(run_dir):
    with open(run_dir / "usage.jsonl") as handle:
        return sorted((json.loads(line) for line in handle), key=lambda r: r["rank"])


@pytest.mark.parametrize("strategy", [{"name": "ddp"}, {"name": "fsdp"}], ids=["ddp", "fsdp"])
def test_every_rank_records_what_it_used(strategy, prepared, tmp_path):
    spec = make_spec(MLP_JOB, strategy=strategy, scaling__workers=2, train__steps=30, train__profile_step=10)
    train_in_processes(spec, prepared(spec), 2, tmp_path)
    records = _usage(tmp_path)
    assert [r["rank"] for r in records] == [0, 1]
    assert len({r["pid"] for r in records}) == 2
    whole = make_spec(MLP_JOB, strategy={"name": "ddp"}, scaling__workers=1, train__profile_step=10)
    one = train_in_processes(whole, prepared(whole), 1, tmp_path / "one")[-1]
    alone = _usage(tmp_path / "one")[0]
    for record in records:
        assert record["step"] == 30 and record["world_size"] == 2
        assert record["ended"] > record["started"] and record["cpu_s"] > 0
        assert record["peak_rss_bytes"] > 50 << 20  # torch alone is more
        for sample in record["samples"]:
            assert record["started"] <= sample[0] <= record["ended"] and sample[1] >= 0 and sample[2] > 0
        held = record["state_bytes"]["params"]
        # DDP holds the whole model on each rank; FSDP half of it (rows split over 2 ranks).
        expected = one["mem_params_bytes"] if strategy["name"] == "ddp" else one["mem_params_bytes"] / 2
        assert held == pytest.approx(expected, rel=0.05)

        # Step 10's collectives, from the profiler: the gradients went through them.
        comm = record["comm"]
        assert comm["bytes"] == sum(op["bytes"] for op in comm["ops"].values()) and comm["seconds"] > 0
        if strategy["name"] == "ddp":  # one all-reduce of every gradient (fp32), in buckets
            assert comm["ops"]["all_reduce"]["bytes"] >= one["mem_params_bytes"]
            assert comm["ops"]["all_reduce"]["bytes"] < one["mem_params_bytes"] + 1024
        else:  # gathered for forward and backward, gradients scattered: each about half the model
            assert comm["bytes"] >= one["mem_params_bytes"]

        # How long step 10 waited for them, phase by phase: never more than the phase took,
        # nor than the collectives ran.
        exposed, took = comm["exposed_s"], comm["phase_s"]
        assert set(exposed) == set(took) == {"step_data_s", "step_forward_s", "step_backward_s", "step_optimizer_s"}
        assert all(0 <= exposed[phase] <= took[phase] for phase in exposed)
        assert sum(exposed.values()) <= comm["seconds"] + 1e-3
        if strategy["name"] == "ddp":  # gradients are all-reduced in backward and nowhere else
            # (the gloo thread closes its record a little after it woke the training thread)
            assert exposed["step_forward_s"] < 1e-3 and exposed["step_optimizer_s"] < 1e-3
        else:  # FSDP gathers the layers' weights in forward and waits for the first one at least
            assert exposed["step_forward_s"] > 0

        # Activations kept for backward: a micro-batch of 8 rows keeps the same on every rank
        # as on one worker; FSDP's gathered weights are not counted as activations.
        assert record["activation_bytes"] == alone["activation_bytes"]
    assert alone["activation_bytes"] >= 8 * (12 + 32 + 32) * 4  # the input and both hidden layers' outputs


def test_steps_time_forward_and_backward_apart(prepared, tmp_path):
    spec = make_spec(MLP_JOB, strategy={"name": "ddp"}, scaling__workers=1, train__steps=5)
    for record in train_in_processes(spec, prepared(spec), 1, tmp_path):
        assert record["step_forward_s"] > 0 and record["step_backward_s"] > 0
        assert record["step_compute_s"] == pytest.approx(record["step_forward_s"] + record["step_backward_s"])


def test_plan_counts_the_activations_a_real_forward_keeps():
    """`plan` counts activations on the meta device the way a profiled step counts them on
    a real one: the tensors autograd keeps for backward, parameters left out."""
    import torch

    from orchestrator.config.loading import load_spec
    from orchestrator.data.model_arguments import example_input, model_arguments
    from orchestrator.planning.memory import estimate_memory
    from orchestrator.training.activations import SavedActivations
    from orchestrator.training.model import build_job_model

    spec = load_spec(Path(__file__).parent.parent / "examples" / "quickstart.yaml")
    arguments = model_arguments(spec)
    model = build_job_model(spec, arguments)
    inputs = torch.randn(example_input(spec, arguments, 32).shape)
    estimate = estimate_memory(model, spec, inputs).activations
    counted = SavedActivations(model)
    with counted.tracking():
        model(inputs)
    # The input and each hidden layer's output (ReLU keeps its output; the next layer the same)
    assert estimate == counted.peak_bytes > inputs.numel() * 4
