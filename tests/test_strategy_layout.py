"""Where strategies cut a model into blocks. Pure logic, no process group: milliseconds.

Exercised by: pytest tests/test_strategy_layout.py
"""
from __future__ import annotations

import pytest
from torch import nn

from models import build_model
from strategies.blocks import blocks_of, repeated_blocks
from strategies.pipeline_parallel import StageModule
from tests.user_models import linear_stack

DIGITS = {"input_dim": 64, "output_dim": 10}
TOKENS = {"input_dim": None, "output_dim": None, "vocab_size": 11, "context": 8}
PROJECT_MODELS = [
    ("mlp", {"hidden": [16, 16, 8]}, DIGITS),
    ("cnn", {"channels": 8, "blocks": 2}, DIGITS),
    ("lstm", {"hidden": 16}, DIGITS),
    ("gpt", {"depth": 2, "width": 32, "heads": 4}, TOKENS),
]


@pytest.mark.parametrize("name,options,data", PROJECT_MODELS, ids=[m[0] for m in PROJECT_MODELS])
def test_project_models_shard_every_layer_in_order(name, options, data):
    model = build_model(name, options, **data)
    blocks = repeated_blocks(model)
    # The same objects, in the same order, as FSDP wrapped before (`model.blocks`).
    assert len(blocks) == len(model.blocks) and all(a is b for a, b in zip(blocks, model.blocks))
    assert blocks_of(model) is model.layers


def test_a_pipeline_stage_shards_the_blocks_it_holds():
    model = build_model("mlp", {"hidden": [16, 16, 8]}, **DIGITS)
    stage = StageModule({1: model.layers[1], 2: model.layers[2]})
    assert [id(b) for b in repeated_blocks(stage)] == [id(model.layers[1]), id(model.layers[2])]


def test_a_plain_sequential_model_is_one_unit_and_cannot_be_pipelined():
    model = linear_stack(8, 2)
    assert repeated_blocks(model) == []
    with pytest.raises(ValueError, match="strategy.pp"):
        blocks_of(model)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.experts = nn.ModuleList([nn.Linear(4, 4) for _ in range(2)])


class Decoder(nn.Module):
    def __init__(self, no_split: list[str] | None = None):
        super().__init__()
        if no_split is not None:
            self._no_split_modules = no_split
        self.embed = nn.Embedding(10, 4)
        self.body = nn.Module()
        self.body.h = nn.ModuleList([Block(), Block(), Block()])
        self.head = nn.Linear(4, 10)


@pytest.mark.parametrize("no_split", [["Block"], None], ids=["no-split-modules", "repeated-in-module-list"])
def test_a_model_written_elsewhere_shards_its_outermost_repeated_blocks(no_split):
    model = Decoder(no_split)
    # The experts inside each block stay part of their block's unit.
    assert repeated_blocks(model) == list(model.body.h)
