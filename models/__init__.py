"""Models, each a flat list of layers, and the registry that builds them by name.

Importing this package registers the built-ins: ``mlp``, ``cnn``, ``lstm``, ``gpt``.

Exercised by ``python -m pytest tests/test_models.py -q``.
"""

from models.errors import ModelConfigError
from models.registry import (
    MODEL_REGISTRY,
    build_model,
    check_model_options,
    register_model,
    resolve_model_factory,
)
from models.sequential import SequentialModel

# Imported for their registration side effect.
from models import cnn, gpt, lstm, mlp  # noqa: F401

__all__ = [
    "MODEL_REGISTRY",
    "ModelConfigError",
    "SequentialModel",
    "build_model",
    "check_model_options",
    "register_model",
    "resolve_model_factory",
]
