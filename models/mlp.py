"""Multi-layer perceptron for tabular features, and its tensor-parallel plan.

Exercised by ``python -m pytest tests/test_models.py -q``.
"""

from torch import nn

from models.registry import ModelConfigError, register_model
from models.sequential import SequentialModel

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MLPBlock(nn.Module):
    """One hidden layer; ``fc`` is its own attribute so a tensor plan can name it."""

    def __init__(self, in_dim: int, out_dim: int, activation: str):
        super().__init__()
        self.fc = nn.Linear(in_dim, out_dim)
        self.act = ACTIVATIONS[activation]()

    def forward(self, x):
        return self.act(self.fc(x))


@register_model("mlp")
def mlp(
    input_dim: int, output_dim: int, hidden: tuple[int, ...] = (64, 64), activation: str = "relu"
) -> SequentialModel:
    """Build an MLP: one ``MLPBlock`` per hidden width, then a linear output layer.

    Args:
        input_dim: number of input features.
        output_dim: number of classes, or 1 for regression.
        hidden: widths of the hidden layers.
        activation: one of ``relu``, ``gelu``, ``tanh``.

    Returns:
        The model; ``len(model.layers) == len(hidden) + 1``.

    Raises:
        ModelConfigError: for an unknown activation.
    """
    if activation not in ACTIVATIONS:
        raise ModelConfigError(
            "model.options.activation", f"{activation!r} is not one of {sorted(ACTIVATIONS)}"
        )
    dims = [input_dim, *hidden]
    blocks = [MLPBlock(d_in, d_out, activation) for d_in, d_out in zip(dims, dims[1:])]
    return SequentialModel([*blocks, nn.Linear(dims[-1], output_dim)])


def mlp_tensor_plan(model: SequentialModel) -> dict[str, str]:
    """Shard hidden layers in column-then-row pairs.

    A column-wise layer leaves each rank a slice of the features, the activation works on
    that slice alone, and the row-wise layer after it sums the slices back; so each pair
    costs one all-reduce. A hidden layer left without a partner stays replicated.

    Returns:
        Fully-qualified module name -> ``"colwise"`` or ``"rowwise"``.
    """
    hidden = [i for i, layer in enumerate(model.layers) if isinstance(layer, MLPBlock)]
    plan = {}
    for col, row in zip(hidden[0::2], hidden[1::2]):
        plan[f"layers.{col}.fc"] = "colwise"
        plan[f"layers.{row}.fc"] = "rowwise"
    return plan


mlp.tensor_plan = mlp_tensor_plan
