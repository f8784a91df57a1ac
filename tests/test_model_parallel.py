"""Tensor, pipeline and hybrid parallelism: layout math and checks (fast), then checkpoints
written under one layout and resumed under another (real processes on gloo).

Exercised by: pytest tests/test_model_parallel.py
"""
from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

import models
import strategies
from orchestrator.errors import JobSpecError
from orchestrator.planning.report import render_plan
from strategies.hybrid import ModelParallelConfig, PipelineOptions
from strategies.pipeline_parallel import balanced_split_points, split_problems, stage_bounds, theoretical_bubble
from strategies.tensor_parallel import auto_plan, plan_problems
from tests.distributed import make_spec, read_metrics, train_in_processes
from tests.jobs import GPT_JOB, MLP_JOB, USER_MODEL_JOB
from tests.user_models import linear_stack

TOKENS = {"input_dim": None, "output_dim": None, "vocab_size": 256, "context": 16}
LSTM_JOB = {**MLP_JOB, "model": {"name": "lstm", "options": {"steps": 4, "hidden": 8}}}


def _gpt(**options):
    return models.build_model("gpt", {"depth": 2, "width": 32, "heads": 4, **options}, **TOKENS)


# ---- layout math -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sizes,stages,points",
    [
        ([1, 1, 1, 1], 2, [2]),
        ([10, 1, 1, 10], 2, [2]),
        ([8704, 12704, 12704, 8256], 2, [2]),
        ([8704, 12704, 12704, 8256], 4, [1, 2, 3]),
        ([416, 1056, 132], 2, [1]),
        ([5, 1, 1, 1, 1, 1], 3, [1, 3]),
    ],
)
def test_balanced_split_points(sizes, stages, points):
    assert balanced_split_points(sizes, stages) == points
    bounds = stage_bounds(len(sizes), points)
    assert bounds[0][0] == 0 and bounds[-1][1] == len(sizes) and len(bounds) == stages


def test_split_problems_name_the_key():
    assert split_problems([2], 2, 4) == []
    assert "2 stages need 1" in split_problems([1, 2], 2, 4)[0]
    assert "increase strictly" in split_problems([3, 1], 3, 4)[0]
    assert split_problems([4], 2, 4)[0].startswith("strategy.split_points:")


@pytest.mark.parametrize("p,m,expected", [(2, 4, 1 / 5), (4, 4, 3 / 7), (4, 16, 3 / 19), (2, 8, 1 / 9)])
def test_theoretical_bubble(p, m, expected):
    assert theoretical_bubble(p, m) == pytest.approx(expected)
    assert theoretical_bubble(p, m, 2) < theoretical_bubble(p, m)


def test_pipeline_defaults():
    assert ModelParallelConfig.of(PipelineOptions(schedule="interleaved_1f1b")).n_stages == 4
    assert ModelParallelConfig.of(PipelineOptions(pp=4)).n_stages == 4


# ---- tensor plans ------------------------------------------------------------------------
def test_auto_plan_pairs_a_user_model():
    model = linear_stack(input_dim=12, output_dim=4)
    assert auto_plan(model, 2) == {"0": "colwise", "2": "rowwise", "4": "colwise", "6": "rowwise"}
    # Widths 32 do not divide by 3: the first layer splits its 12 inputs alone, the rest stay whole.
    assert auto_plan(model, 3) == {"0": "rowwise_from_replicated"}


def test_auto_plan_pairs_only_through_elementwise_operations():
    plan = auto_plan(_gpt(), 2)
    # The MLP's fc_in -> gelu -> fc_out is a pair; q/k/v feed attention (reshapes, softmax),
    # so each is split alone with its output gathered, as is the output projection.
    assert plan["layers.1.mlp.fc_in"] == "colwise" and plan["layers.1.mlp.fc_out"] == "rowwise"
    assert plan["layers.1.attn.q_proj"] == plan["layers.1.attn.k_proj"] == "colwise_gathered"
    assert plan["layers.1.attn.out_proj"] == "colwise_gathered"

    class Residual(nn.Module):  # a's output is used twice: pairing would split the residual
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            h = torch.relu(self.a(x))
            return self.b(h) + h

    assert auto_plan(Residual(), 2) == {"a": "colwise_gathered", "b": "colwise_gathered"}


def test_plan_problems_heads_and_widths():
    model = _gpt()
    assert plan_problems(model, model.tensor_plan, 2) == []
    problems = plan_problems(model, model.tensor_plan, 8)
    assert "strategy.tp: 8 does not divide the 4 attention heads of layers.1.attn" in problems
    assert plan_problems(model, {"layers.0": "colwise"}, 2) == ["tensor plan: 'layers.0' is not an nn.Linear of the model"]


# ---- refused before launch -------------------------------------------------------------------
@pytest.mark.parametrize(
    "job,strategy,workers,expected",
    [
        (GPT_JOB, {"name": "tensor", "tp": 8}, 8, "strategy.tp: 8 does not divide the 4 attention heads"),
        (GPT_JOB, {"name": "tensor", "tp": 8}, 8, "tensor degrees that fit this model with plan 'model': 1, 2, 4"),
        (GPT_JOB, {"name": "pipeline", "pp": 5}, 5, "more than the model's 4 blocks; pipeline degrees that fit: 1, 2, 3, 4"),
        (MLP_JOB, {"name": "hybrid", "tp": 2, "pp": 2}, 6, "does not divide 6 workers; worker counts that fit: 4, 8, 12"),
        (MLP_JOB, {"name": "pipeline", "microbatches": 3}, 2, "strategy.microbatches: 3 does not divide train.micro_batch_size 8"),
        (MLP_JOB, {"name": "pipeline", "split_points": [1, 2]}, 2, "strategy.split_points: [1, 2] names 2 cut(s)"),
        (MLP_JOB, {"name": "tensor", "tp": 2, "plan": "auto"}, 2, None),
        (MLP_JOB, {"name": "pipeline", "schedule": "gpipe", "stages_per_worker": 2}, 2, "need schedule: interleaved_1f1b"),
        (LSTM_JOB, {"name": "pipeline", "pp": 3}, 3, "stage 0 would hold only blocks without parameters (ToSequence)"),
        (USER_MODEL_JOB, {"name": "tensor"}, 2, "strategy.plan: the model (Sequential) has no tensor plan of its own"),
    ],
)
def test_impossible_layouts_are_refused(job, strategy, workers, expected):
    overrides = {"strategy": strategy, "scaling__workers": workers, "train__global_batch_size": 48 * workers}
    if expected is None:
        make_spec(job, **overrides)
        return
    with pytest.raises(JobSpecError) as error:
        make_spec(job, **overrides)
    assert any(expected in problem for problem in error.value.problems), error.value.problems


def test_user_model_without_blocks_cannot_be_pipelined():
    with pytest.raises(JobSpecError) as error:
        make_spec(
            MLP_JOB,
            model={"name": "tests.user_models:linear_stack", "options": {}},
            strategy={"name": "pipeline"},
        )
    assert any(p.startswith("strategy.pp: the model (Sequential) has no `layers`") for p in error.value.problems)


def test_plan_shows_mesh_stages_and_memory():
    spec = make_spec(GPT_JOB, strategy={"name": "hybrid", "tp": 2, "pp": 2}, scaling__workers=4)
    text = render_plan(spec, 4)
    assert "device mesh (dp, pp, tp) = (1, 2, 2)" in text
    assert "stage 0 on pipeline rank 0: blocks 0-1 (Embedding, TransformerBlock)" in text
    assert "stage 1 on pipeline rank 1: blocks 2-3 (TransformerBlock, LMHead)" in text
    assert "layers.1.attn.q_proj             colwise" in text
    assert "pipeline rank 0        15,152 parameters" in text  # stage 0's 21,408 with blocks split in two


def test_registered_names():
    assert {"ddp", "tensor", "pipeline", "hybrid"} <= set(strategies.STRATEGY_REGISTRY)


# ---- checkpoints across layouts ----------------------------------------------------------------
RESHARD = [
    # written under, read under
    ("hybrid-dp2-tp2-to-tensor2", GPT_JOB, ({"name": "hybrid", "tp": 2}, 4), ({"name": "tensor", "tp": 2}, 2)),
    ("pipeline2-to-one-worker", GPT_JOB, ({"name": "pipeline", "pp": 2}, 2), ({"name": "ddp"}, 1)),
]


@pytest.mark.parametrize("case", RESHARD, ids=[c[0] for c in RESHARD])
def test_checkpoint_loads_under_another_layout(case, prepared, tmp_path):
    """Train 4 steps under one layout with a checkpoint at step 2; resume from it under the
    other layout; steps 3 and 4 match a run that never stopped."""
    _, job, (first, first_workers), (second, second_workers) = case

    def spec(strategy, workers):
        return make_spec(
            job, strategy=strategy, scaling__workers=workers, train__steps=4, checkpoint__every_steps=2
        )

    reference = train_in_processes(spec({"name": "ddp"}, 1), prepared(spec({"name": "ddp"}, 1)), 1, tmp_path / "ref")
    written = spec(first, first_workers)
    train_in_processes(written, prepared(written), first_workers, tmp_path / "first")
    checkpoint = tmp_path / "first" / "checkpoints" / "step_00000002"
    assert (checkpoint / "state" / ".metadata").is_file()
    (tmp_path / "second" / "checkpoints").mkdir(parents=True)
    shutil.copytree(checkpoint, tmp_path / "second" / "checkpoints" / checkpoint.name)

    resumed = spec(second, second_workers)
    records = train_in_processes(resumed, prepared(resumed), second_workers, tmp_path / "second")
    assert [r["step"] for r in records] == [3, 4]
    for got, want in zip(records, reference[2:]):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5), f"step {got['step']}"
    assert read_metrics(tmp_path / "second")[-1]["val_loss"] == pytest.approx(reference[-1]["val_loss"], rel=1e-5)
