"""A Hugging Face decoder under pipeline parallelism: `transformers:LlamaForCausalLM` cut
into stages at its embedding, decoder layers, norm and lm_head (models/hf_decoder.py,
strategies/pipeline_parallel.py).

First, in milliseconds: the block sequence computes exactly what the whole model does, for
every family it is offered to; models it cannot be exact for are refused with the reason;
`orchestrator plan` names the blocks each stage holds. Then real gloo processes: every
schedule (and tensor x pipeline) matches the 1-worker run step by step, exports weights a
fresh LlamaForCausalLM loads, and writes checkpoints that resume under another layout.

Exercised by: pytest tests/test_hf_pipeline.py
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass

import pytest
import torch

transformers = pytest.importorskip("transformers")

import models  # noqa: E402
from models.hf_decoder import mark_pipeline_blocks  # noqa: E402
from orchestrator.errors import JobSpecError  # noqa: E402
from orchestrator.planning.report import render_plan  # noqa: E402
from orchestrator.run.export import load_weights  # noqa: E402
from strategies.blocks import named_blocks, repeated_blocks, shared_modules  # noqa: E402
from strategies.pipeline_parallel import StageModule  # noqa: E402
from tests.distributed import make_spec, train_in_processes  # noqa: E402
from tests.ecosystem import LLAMA, LM_JOB  # noqa: E402

RELATIVE_TOLERANCE = 1e-5
TOKENS = {"input_dim": None, "output_dim": None, "vocab_size": 256, "context": 16}
SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "max_position_embeddings": 64, "vocab_size": 256}


def _llama(**options):
    return models.build_model(LLAMA["name"], {**LLAMA["options"], **options}, **TOKENS)


def _with_model(model_options: dict | None = None, **overrides):
    model = {**LLAMA, "options": {**LLAMA["options"], **(model_options or {})}}
    return make_spec(LM_JOB, model=model, **overrides)


# ---- the blocks are the model -------------------------------------------------------------------
FAMILIES = [
    ("LlamaForCausalLM", {}, "sdpa"),
    ("LlamaForCausalLM", {}, "eager"),
    ("MistralForCausalLM", {"sliding_window": None}, "sdpa"),
    ("Qwen2ForCausalLM", {}, "sdpa"),
    ("Qwen3ForCausalLM", {}, "eager"),
]


@pytest.mark.parametrize("name,options,attention", FAMILIES, ids=[f"{f[0]}-{f[2]}" for f in FAMILIES])
def test_blocks_in_order_compute_what_the_whole_model_computes(name, options, attention):
    cls = getattr(transformers, name)
    torch.manual_seed(0)
    model = mark_pipeline_blocks(cls(cls.config_class(**SMALL, **options, attn_implementation=attention)))
    tokens = torch.randint(0, 256, (3, 12))
    whole = model(tokens).logits
    # Two stages, each called with one tensor as a pipeline stage is.
    blocks, shared = named_blocks(model), shared_modules(model)
    hidden = tokens
    for stage in (StageModule(blocks[:2], shared), StageModule(blocks[2:], shared)):
        hidden = stage(hidden)
    assert torch.equal(hidden, whole)
    parameters = list(model.parameters())
    whole_grads = torch.autograd.grad(whole.square().sum(), parameters)
    staged_grads = torch.autograd.grad(hidden.square().sum(), parameters)
    assert all(torch.equal(a, b) for a, b in zip(whole_grads, staged_grads))


def test_stages_keep_the_whole_models_names():
    model = _llama()
    blocks, shared = named_blocks(model), shared_modules(model)
    stages = [StageModule(blocks[:3], shared, model._no_split_modules), StageModule(blocks[3:], shared)]
    keys = [list(stage.state_dict()) for stage in stages]
    assert keys[0][0] == "model.embed_tokens.weight" and keys[1][-1] == "lm_head.weight"
    assert sorted(keys[0] + keys[1]) == sorted(model.state_dict())
    # FSDP (hybrid with data_parallel: fsdp) shards a stage by decoder layer, as the whole model.
    assert repeated_blocks(stages[0]) == list(model.model.layers)


# ---- refused, with the reason -----------------------------------------------------------------
@pytest.mark.parametrize(
    "model,expected",
    [
        ({**LLAMA, "options": {**LLAMA["options"], "tie_word_embeddings": True}},
         "strategy.pp: the model (LlamaForCausalLM) cannot be cut into pipeline stages: its input "
         "embedding and lm_head share one weight"),
        ({"name": "transformers:MistralForCausalLM", "options": {**LLAMA["options"], "sliding_window": 8}},
         "sliding-window attention (sliding_window 8) is masked by the model's forward"),
        ({"name": "transformers:GemmaForCausalLM", "options": LLAMA["options"]},
         "its family (gemma) is not one whose forward is known to be its blocks in order"),
        ({"name": "transformers:GPT2LMHeadModel", "options": {"n_embd": 32, "n_layer": 2, "n_head": 4}},
         "strategy.pp: the model (GPT2LMHeadModel) has no `layers` sequence of blocks to cut into stages, "
         "nor `pipeline_blocks`"),
    ],
    ids=["tied-embeddings", "sliding-window", "other-family", "no-blocks"],
)
def test_models_a_pipeline_cannot_cut_exactly_are_refused(model, expected):
    with pytest.raises(JobSpecError) as error:
        make_spec(LM_JOB, model=model, strategy={"name": "pipeline", "pp": 2}, scaling__workers=2)
    assert any(expected in problem for problem in error.value.problems), error.value.problems


def test_plan_names_the_blocks_of_each_stage():
    spec = _with_model(strategy={"name": "pipeline", "pp": 2, "split_points": [3]}, scaling__workers=2)
    text = render_plan(spec, 2)
    assert "(34,976 parameters, 5 blocks)" in text
    assert "stage 0 on pipeline rank 0: blocks 0-2 (Embedding, LlamaDecoderLayer, LlamaDecoderLayer)" in text
    assert "    holds model.embed_tokens, model.layers.0-1\n" in text
    assert "    holds model.norm, lm_head\n" in text
    with pytest.raises(JobSpecError, match="lie between 1 and 4"):
        _with_model(strategy={"name": "pipeline", "pp": 2, "split_points": [5]}, scaling__workers=2)


# ---- trained in real processes ------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    strategy: dict
    workers: int


MATRIX = [
    Case("pipeline-gpipe", {"name": "pipeline", "pp": 2, "schedule": "gpipe"}, 2),
    Case("pipeline-1f1b", {"name": "pipeline", "pp": 2, "schedule": "1f1b"}, 2),
    Case("pipeline-interleaved", {"name": "pipeline", "pp": 2, "schedule": "interleaved_1f1b"}, 2),
    Case("hybrid-tp2-pp2", {"name": "hybrid", "tp": 2, "pp": 2, "plan": "auto"}, 4),
]
_reference: dict[str, tuple[list[dict], dict]] = {}  # spec -> records, exported weights


def _train(spec, workers, prepared, run_dir):
    records = train_in_processes(spec, prepared(spec), workers, run_dir)
    return records, load_weights(run_dir / "model.safetensors")


def _one_worker(prepared, root):
    spec = _with_model(strategy={"name": "ddp"}, scaling__workers=1)
    key = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
    if key not in _reference:
        _reference[key] = _train(spec, 1, prepared, root / "llama-one-worker")
    return _reference[key]


@pytest.mark.parametrize("case", MATRIX, ids=[c.id for c in MATRIX])
def test_llama_pipeline_matches_one_worker(case, prepared, tmp_path_factory):
    expected, reference = _one_worker(prepared, tmp_path_factory.getbasetemp())
    spec = _with_model(strategy=case.strategy, scaling__workers=case.workers)
    records, weights = _train(spec, case.workers, prepared, tmp_path_factory.mktemp(case.id))
    assert len(records) == len(expected) == 10
    assert records[-1]["loss"] < records[0]["loss"], "the job should learn something in 10 steps"
    for got, want in zip(records, expected):
        assert got["loss"] == pytest.approx(want["loss"], rel=RELATIVE_TOLERANCE), f"step {got['step']}"
    assert records[-1]["val_loss"] == pytest.approx(expected[-1]["val_loss"], rel=RELATIVE_TOLERANCE)
    # The exported weights are the whole model's, under its own names.
    assert weights.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(weights[name], reference[name], rtol=1e-5, atol=1e-5, msg=name)
    config = transformers.LlamaConfig(vocab_size=256, **LLAMA["options"])
    fresh = transformers.LlamaForCausalLM(config)
    fresh.load_state_dict(weights)  # strict: every name, none extra


def test_pipeline_checkpoint_resumes_on_one_worker(prepared, tmp_path):
    """4 steps under pipeline at 2 workers with a checkpoint at step 2; resumed from it under
    ddp at 1 worker, steps 3 and 4 match the pipeline run's own (which match one worker's)."""

    def spec(strategy, workers):
        return _with_model(strategy=strategy, scaling__workers=workers, train__steps=4, checkpoint__every_steps=2)

    written = spec({"name": "pipeline", "pp": 2, "schedule": "1f1b"}, 2)
    uninterrupted = train_in_processes(written, prepared(written), 2, tmp_path / "pipeline")
    checkpoint = tmp_path / "pipeline" / "checkpoints" / "step_00000002"
    assert (checkpoint / "state" / ".metadata").is_file()
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoints" / checkpoint.name)
    one = spec({"name": "ddp"}, 1)
    records = train_in_processes(one, prepared(one), 1, tmp_path / "resumed")
    assert [r["step"] for r in records] == [3, 4]
    for got, want in zip(records, uninterrupted[2:]):
        assert got["loss"] == pytest.approx(want["loss"], rel=RELATIVE_TOLERANCE), f"step {got['step']}"
    assert records[-1]["val_loss"] == pytest.approx(uninterrupted[-1]["val_loss"], rel=RELATIVE_TOLERANCE)
