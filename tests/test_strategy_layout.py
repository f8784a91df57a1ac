"""Where strategies cut a model into blocks, and the setup every model-transforming
strategy shares. Pure logic, no process group: milliseconds.

Exercised by: pytest tests/test_strategy_layout.py
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import strategies
from models import build_model
from strategies.base import Strategy
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
    stage = StageModule([("layers.1", model.layers[1]), ("layers.2", model.layers[2])])
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


class Recorded(Strategy):
    """Records the order of setup's steps."""

    def __init__(self):
        super().__init__(strategies.ParallelDims(world_size=1, dp=1))
        self.calls = []

    def parallelize(self, model, device):
        self.calls.append(("parallelize", self.autocast_dtype))
        return nn.Sequential(model.to(device))


def test_setup_transforms_then_builds_the_optimizer_over_the_transformed_model():
    strategy = Recorded()
    model = nn.Linear(2, 2)

    def make_optimizer(params):
        params = list(params)
        strategy.calls.append(("optimizer", [id(p) for p in params]))
        return torch.optim.SGD(params, lr=0.1)

    def make_scheduler(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)

    strategy.setup(model, make_optimizer, make_scheduler, torch.device("cpu"), "bf16")
    assert strategy.calls == [
        ("parallelize", torch.bfloat16),  # autocast is known before stages copy it
        ("optimizer", [id(p) for p in strategy.model.parameters()]),
    ]
    assert isinstance(strategy.model, nn.Sequential) and strategy.scheduler.optimizer is strategy.optimizer


def test_a_strategy_without_parallelize_says_what_to_implement():
    class Bare(Strategy):
        pass

    bare = Bare(strategies.ParallelDims(world_size=1, dp=1))
    with pytest.raises(NotImplementedError, match="parallelize"):
        bare.setup(nn.Linear(1, 1), None, None, torch.device("cpu"), "fp32")
