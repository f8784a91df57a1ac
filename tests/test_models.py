"""Model registry and built-in models: shapes, layer structure, determinism, errors.

Run with ``python -m pytest tests/test_models.py -q``.
"""

import copy
import pickle

import pytest
import torch
from torch import nn

from models import (
    MODEL_REGISTRY,
    ModelConfigError,
    SequentialModel,
    build_model,
    check_model_options,
    register_model,
)
from models.gpt import gpt_tensor_plan
from models.mlp import mlp_tensor_plan


def tiny_factory(input_dim: int, output_dim: int, hidden: int = 4) -> SequentialModel:
    """A user factory, reached through ``tests.test_models:tiny_factory``."""
    return SequentialModel([nn.Linear(input_dim, hidden), nn.Linear(hidden, output_dim)])


DIGITS = {"input_dim": 64, "output_dim": 10}
TOKENS = {"input_dim": None, "output_dim": None, "vocab_size": 11, "context": 8}

# name, options, dataset facts, input, expected output shape, expected number of layers
CASES = [
    ("mlp", {"hidden": [16, 16, 8]}, DIGITS, lambda: torch.randn(3, 64), (3, 10), 4),
    ("cnn", {"channels": 8, "blocks": 2}, DIGITS, lambda: torch.randn(3, 64), (3, 10), 4),
    ("cnn", {"channels": 4, "blocks": 1, "in_channels": 3}, {"input_dim": 48, "output_dim": 1},
     lambda: torch.randn(3, 48), (3, 1), 3),
    ("lstm", {"hidden": 16}, DIGITS, lambda: torch.randn(3, 64), (3, 10), 3),
    ("gpt", {"depth": 2, "width": 32, "heads": 4}, TOKENS,
     lambda: torch.randint(0, 11, (3, 6)), (3, 6, 11), 4),
]
IDS = [f"{name}-{i}" for i, (name, *_) in enumerate(CASES)]


def test_registered_names():
    assert sorted(MODEL_REGISTRY) == ["cnn", "gpt", "lstm", "mlp"]


@pytest.mark.parametrize("name,options,data,make_input,out_shape,num_layers", CASES, ids=IDS)
def test_builtin_shapes_and_layers(name, options, data, make_input, out_shape, num_layers):
    torch.manual_seed(0)
    model = build_model(name, options, **data)
    x = make_input()
    out = model(x)
    assert out.shape == out_shape
    assert len(model.layers) == num_layers and model.blocks is model.layers
    # Pipeline stages run the layers one after another; that must be the whole model.
    y = x
    for layer in model.layers:
        y = layer(y)
    assert torch.equal(y, out)


@pytest.mark.parametrize("name,options,data,make_input,out_shape,num_layers", CASES, ids=IDS)
def test_same_seed_same_weights(name, options, data, make_input, out_shape, num_layers):
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        states.append(build_model(name, options, **data).state_dict())
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_import_path_factory():
    model = build_model("tests.test_models:tiny_factory", {"hidden": 3}, input_dim=5, output_dim=2)
    assert model(torch.randn(4, 5)).shape == (4, 2)
    check_model_options("tests.test_models:tiny_factory", {"hidden": 3})


@pytest.mark.parametrize(
    "name,options,key,fragment",
    [
        ("resnet", {}, "model.name", "module:function"),
        ("nope.mod:fn", {}, "model.name", "No module named 'nope'"),
        ("tests.test_models:missing", {}, "model.name", "no attribute 'missing'"),
        ("mlp", {"hiden": [8]}, "model.options.hiden", "'activation'"),
        ("mlp", {"input_dim": 3}, "model.options.input_dim", "derived from the dataset"),
    ],
)
def test_config_errors(name, options, key, fragment):
    with pytest.raises(ModelConfigError) as err:
        check_model_options(name, options)
    assert err.value.key == key and fragment in str(err.value)
    assert str(err.value).startswith(f"{key}: ")


@pytest.mark.parametrize(
    "name,options,data,key",
    [
        ("mlp", {"activation": "swish"}, DIGITS, "model.options.activation"),
        ("cnn", {"in_channels": 3}, DIGITS, "model.options.in_channels"),
        ("lstm", {"steps": 7}, DIGITS, "model.options.steps"),
        ("gpt", {"width": 30, "heads": 4}, TOKENS, "model.options.heads"),
        ("gpt", {}, DIGITS, "model.name"),
    ],
)
def test_bad_values_for_data(name, options, data, key):
    with pytest.raises(ModelConfigError) as err:
        build_model(name, options, **data)
    assert err.value.key == key


def test_duplicate_registration_and_pickling():
    with pytest.raises(ValueError, match="already registered"):
        register_model("mlp")(tiny_factory)
    err = pickle.loads(pickle.dumps(ModelConfigError("model.name", "bad")))
    assert (err.key, err.message, str(err)) == ("model.name", "bad", "model.name: bad")


def test_tensor_plans_name_linears():
    model = build_model("gpt", {"depth": 2, "width": 32}, **TOKENS)
    modules = dict(model.named_modules())
    plan = gpt_tensor_plan(model)
    assert len(plan) == 12
    assert all(isinstance(modules[name], nn.Linear) for name in plan)
    assert plan["layers.1.attn.q_proj"] == "colwise" and plan["layers.2.mlp.fc_out"] == "rowwise"

    model = build_model("mlp", {"hidden": [8, 8, 8]}, **DIGITS)
    assert mlp_tensor_plan(model) == {"layers.0.fc": "colwise", "layers.1.fc": "rowwise"}


def _shard_attention(attn: nn.Module, part: int, parts: int) -> nn.Module:
    """What one tensor-parallel rank holds: some heads of q/k/v, matching out_proj columns."""
    shard = copy.deepcopy(attn)
    size = attn.q_proj.out_features // parts
    cols = slice(part * size, (part + 1) * size)
    for name in ("q_proj", "k_proj", "v_proj"):
        full, local = getattr(attn, name), getattr(shard, name)
        local.weight = nn.Parameter(full.weight[cols].clone())
        local.bias = nn.Parameter(full.bias[cols].clone())
    # Row-wise: each rank's output is a partial sum; the bias is added once, after the sum.
    shard.out_proj.weight = nn.Parameter(attn.out_proj.weight[:, cols].clone())
    shard.out_proj.bias = None
    return shard


def test_attention_runs_with_sharded_heads():
    torch.manual_seed(0)
    attn = build_model("gpt", {"depth": 1, "width": 32, "heads": 4}, **TOKENS).layers[1].attn
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        halves = [_shard_attention(attn, p, 2)(x) for p in range(2)]
        assert halves[0].shape == (2, 5, 32)
        torch.testing.assert_close(halves[0] + halves[1] + attn.out_proj.bias, attn(x))
