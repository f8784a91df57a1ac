"""A model the project has never seen, as a user would write it: plain torch, no plan, no
`layers`. The automatic tensor plan splits it; reached as `tests.user_models:linear_stack`."""
from torch import nn


def linear_stack(input_dim: int, output_dim: int, width: int = 32) -> nn.Module:
    return nn.Sequential(
        nn.Linear(input_dim, width),
        nn.GELU(),
        nn.Linear(width, width),
        nn.Tanh(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, output_dim),
    )
