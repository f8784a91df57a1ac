"""LSTM classifier that reads a flat input as a sequence (digits: 8 rows of 8 pixels).

Exercised by ``python -m pytest tests/test_models.py -q``.
"""

import torch
from torch import nn

from models.registry import ModelConfigError, register_model
from models.sequential import SequentialModel


class ToSequence(nn.Module):
    """(B, input_dim) -> (B, steps, input_dim // steps)."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.steps, -1)


class LastStepLSTM(nn.Module):
    """Runs the LSTM and keeps only the last step, so the next layer gets one tensor."""

    def __init__(self, features: int, hidden: int, num_layers: int):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return out[:, -1]


@register_model("lstm")
def lstm(
    input_dim: int, output_dim: int, steps: int = 8, hidden: int = 64, num_layers: int = 1
) -> SequentialModel:
    """Build the classifier: ``ToSequence``, ``LastStepLSTM``, a linear head.

    Args:
        input_dim: number of input features; must divide into ``steps`` equal steps.
        output_dim: number of classes, or 1 for regression.
        steps: sequence length the input is read as.
        hidden: LSTM hidden size.
        num_layers: stacked LSTM layers.

    Returns:
        The model, with three layers.

    Raises:
        ModelConfigError: if ``steps`` does not divide ``input_dim``.
    """
    if input_dim % steps:
        divisors = [d for d in range(1, input_dim + 1) if input_dim % d == 0]
        raise ModelConfigError(
            "model.options.steps",
            f"{steps} does not divide input_dim {input_dim}; choose one of {divisors}",
        )
    return SequentialModel(
        [
            ToSequence(steps),
            LastStepLSTM(input_dim // steps, hidden, num_layers),
            nn.Linear(hidden, output_dim),
        ]
    )
