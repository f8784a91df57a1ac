"""Models whose layout changes the math without an error: what `orchestrator verify`
must catch. Reached as `tests.verify_models:<factory>`."""
from __future__ import annotations

import torch
from torch import nn

from models import SequentialModel


class TiedDecoder(nn.Module):
    """Input embedding and output layer share one weight; its own tensor plan splits the
    output layer only, which unties them on every rank."""

    def __init__(self, vocab_size: int, width: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.hidden = nn.Linear(width, width)
        self.out = nn.Linear(width, vocab_size, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(self.embed(tokens))))


def tied_decoder(vocab_size: int, width: int = 32) -> nn.Module:
    return TiedDecoder(vocab_size, width)


tied_decoder.tensor_plan = lambda model: {"out": "colwise_gathered"}


class FeatureSoftmax(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=-1)


def split_across_softmax(input_dim: int, output_dim: int, width: int = 32) -> nn.Module:
    """A column/row pair whose plan ignores the softmax between them: each rank
    normalises over its own half of the features."""
    return SequentialModel([nn.Linear(input_dim, width), FeatureSoftmax(), nn.Linear(width, output_dim)])


split_across_softmax.tensor_plan = lambda model: {"layers.0": "colwise", "layers.2": "rowwise"}


class RunningMean(nn.Module):
    """Keeps a running mean of its inputs in a buffer, updated in forward; the output
    does not use it, so losses agree while the buffer does not."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.mean.mul_(0.9).add_(0.1 * x.detach().mean(0))
        return x


def unsynchronised_buffer(input_dim: int, output_dim: int, width: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(input_dim, width), RunningMean(width), nn.ReLU(), nn.Linear(width, output_dim))


class ConstantShift(nn.Module):
    """Adds one learned number to every logit: cross-entropy does not see it, so its
    gradient is mathematically zero and only rounding noise moves it."""

    def __init__(self) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift


def zero_gradient_shift(input_dim: int, output_dim: int, width: int = 32) -> nn.Module:
    return nn.Sequential(nn.Linear(input_dim, width), nn.Tanh(), nn.Linear(width, output_dim), ConstantShift())
