"""Small ResNet-style CNN for square images given as flat feature vectors.

Sized for the 8x8 sklearn digits (``input_dim=64``). Normalisation is GroupNorm, not
BatchNorm: batch statistics depend on the per-rank batch, so BatchNorm would train
differently at each data-parallel world size, and results must not change on a resize.

Exercised by ``python -m pytest tests/test_models.py -q``.
"""

import math

import torch
from torch import nn

from models.registry import ModelConfigError, register_model
from models.sequential import SequentialModel


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(channels, 8), channels)


class ImageStem(nn.Module):
    """Reads the flat input as images, then applies the first convolution."""

    def __init__(self, in_channels: int, side: int, channels: int):
        super().__init__()
        self.shape = (in_channels, side, side)
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.norm = _norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(x.shape[0], *self.shape)
        return torch.relu(self.norm(self.conv(x)))


class ResidualBlock(nn.Module):
    """conv-norm-relu-conv-norm plus the identity, as in ResNet's basic block."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = _norm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = _norm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(x + self.norm2(self.conv2(y)))


class PoolHead(nn.Module):
    """Global average pool, then a linear classifier."""

    def __init__(self, channels: int, output_dim: int):
        super().__init__()
        self.fc = nn.Linear(channels, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


@register_model("cnn")
def cnn(
    input_dim: int, output_dim: int, channels: int = 16, blocks: int = 2, in_channels: int = 1
) -> SequentialModel:
    """Build the CNN: ``ImageStem``, ``blocks`` x ``ResidualBlock``, ``PoolHead``.

    Args:
        input_dim: flat size of one image, ``in_channels * side * side``.
        output_dim: number of classes.
        channels: feature maps in every block.
        blocks: number of residual blocks.
        in_channels: image channels (1 for grey, 3 for colour).

    Returns:
        The model; ``len(model.layers) == blocks + 2``.

    Raises:
        ModelConfigError: if the input is not ``in_channels`` square images.
    """
    side = math.isqrt(input_dim // in_channels)
    if in_channels * side * side != input_dim:
        raise ModelConfigError(
            "model.options.in_channels",
            f"{input_dim} input features are not {in_channels} square image channel(s); "
            "set in_channels to match the data, or use the 'mlp' model",
        )
    return SequentialModel(
        [
            ImageStem(in_channels, side, channels),
            *(ResidualBlock(channels) for _ in range(blocks)),
            PoolHead(channels, output_dim),
        ]
    )
