"""Models users bring from the ecosystem, built from a config with random weights.

    model.name: transformers:LlamaForCausalLM       a Hugging Face model class; model.options
                                                    are its config's keys
    model.name: torchvision.models:resnet18         a torchvision builder; model.options are
                                                    its keyword arguments

Nothing is downloaded: a Hugging Face model starts from random weights, or from a local
directory written by `save_pretrained` (`model.pretrained`); torchvision's `weights=`
is refused. The dataset fills in what it knows: a Hugging Face config gets `vocab_size`
and, for sequence classification, `num_labels`; a torchvision builder gets
`num_classes`.

Both libraries are optional (`pip install -e .[hf]`) and imported only when named.

Exercised by: pytest tests/test_ecosystem_parity.py tests/test_export.py
"""
from __future__ import annotations

import difflib
import math
from functools import partial
from typing import Any

import torch
from torch import nn

from models.errors import ModelConfigError
from models.hf_decoder import mark_pipeline_blocks

HF_INSTALL_HINT = "install the Hugging Face extra: pip install -e .[hf]"


def is_hf_model_class(obj: Any) -> bool:
    """A `transformers.PreTrainedModel` subclass (it has a config class to build from)."""
    return isinstance(obj, type) and issubclass(obj, nn.Module) and hasattr(obj, "config_class")


def is_torchvision_builder(obj: Any) -> bool:
    return callable(obj) and getattr(obj, "__module__", "").startswith("torchvision.models")


def check_hf_options(cls: type, options: dict[str, Any]) -> None:
    """Every option must be a key of the model's config.

    Raises:
        ModelConfigError: naming the unknown key, with the closest config keys.
    """
    known = set(cls.config_class().to_dict()) | {"num_labels"}
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; {cls.config_class.__name__} has no such key"
            raise ModelConfigError(f"model.options.{key}", f"not a key of {cls.__name__}'s config{hint}")


def build_hf_model(cls: type, options: dict[str, Any], data: dict[str, int | None],
                   pretrained: str | None = None) -> nn.Module:
    """Build `cls` from its config (or load a local `save_pretrained` directory).

    Args:
        cls: a `transformers.PreTrainedModel` subclass.
        options: config keys, overriding the defaults (or the pretrained config).
        data: the dataset's facts (`vocab_size`, `output_dim`, `context`).
        pretrained: a local directory written by `save_pretrained`, or None.
    """
    check_hf_options(cls, options)
    settings = dict(options)
    if data.get("vocab_size") is not None:
        settings.setdefault("vocab_size", data["vocab_size"])
    if data.get("output_dim") is not None and _classifies(cls):
        settings.setdefault("num_labels", data["output_dim"])
    if pretrained is None:
        config = cls.config_class(**settings)
    else:
        config = cls.config_class.from_pretrained(pretrained, local_files_only=True, **settings)
    _check_context(cls, config, data.get("context"))
    # Under `torch.device("meta")` (validate and plan look at shapes only) no weights load.
    if pretrained is None or torch.get_default_device().type == "meta":
        model = cls(config)
    else:
        model = cls.from_pretrained(pretrained, config=config, local_files_only=True)
    # A decoder-only language model says which blocks a pipeline cuts it into.
    return mark_pipeline_blocks(model)


def _classifies(cls: type) -> bool:
    """A model with a classification head, whose width the config's `num_labels` sets."""
    return "Classification" in cls.__name__


def _check_context(cls: type, config: Any, context: int | None) -> None:
    limit = getattr(config, "max_position_embeddings", None)
    if context is not None and limit is not None and context > limit:
        raise ModelConfigError(
            "model.options.max_position_embeddings",
            f"{cls.__name__} takes at most {limit} positions and the data's context is {context}; "
            "raise it or lower data.options.context",
        )


def build_torchvision_model(builder, options: dict[str, Any], output_dim: int | None) -> nn.Module:
    if "weights" in options:
        raise ModelConfigError(
            "model.options.weights",
            "weights are never downloaded; remove it (models start from random weights)",
        )
    settings = dict(options)
    if output_dim is not None:
        settings.setdefault("num_classes", output_dim)
    return builder(**settings)


def logits_of(output: Any) -> Any:
    """The logits of a model output: the tensor itself, or `.logits` / `["logits"]` of a
    Hugging Face `ModelOutput` (a dataclass that is also a dict)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict) and "logits" in output:
        return output["logits"]
    logits = getattr(output, "logits", None)
    if logits is None:
        raise TypeError(
            f"the model returned {type(output).__name__}, not a tensor or an output with `logits`; "
            "return the logits from forward"
        )
    return logits


def outputs_logits(model: nn.Module) -> nn.Module:
    """Make `model(x)` return logits, whatever its own output type; parameter names and
    the class stay as they are, so its weights load back into a fresh instance."""
    model.register_forward_hook(_logits_hook)
    return model


def _logits_hook(module: nn.Module, inputs: Any, output: Any) -> Any:
    return logits_of(output)


def reshape_inputs(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Make `model` take flat rows and see them as `shape` (e.g. [3, 32, 32] images)."""
    model.register_forward_pre_hook(partial(_reshape_hook, tuple(shape)))
    # What the model reads, for code that probes it with an example input.
    model.input_features = math.prod(shape)
    return model


def _reshape_hook(shape: tuple[int, ...], module: nn.Module, args: tuple) -> tuple:
    return (args[0].reshape(-1, *shape), *args[1:])
