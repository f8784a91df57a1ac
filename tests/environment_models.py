"""A model that records the environment of each process that builds it, for the tests of
what a run's processes start with: `tests.environment_models:records_environment`."""
import json
import os
from pathlib import Path

from torch import nn


def records_environment(input_dim: int, output_dim: int, folder: str, names: list[str]) -> nn.Module:
    """A linear model; first writes `names`' values in this process's environment to
    `folder`/PID.json."""
    Path(folder, f"{os.getpid()}.json").write_text(json.dumps({name: os.environ.get(name) for name in names}))
    return nn.Linear(input_dim, output_dim)
