"""Model registry: names and import paths to factories, and the checks on their options.

A factory is a plain function that returns an ``nn.Module``. Its signature is the
contract: the dataset supplies ``input_dim``, ``output_dim``, ``context`` and
``vocab_size`` to the factories that ask for them, and the job spec's ``model.options``
supply the rest as keyword arguments. Options are checked against the signature when the
job spec loads, so a typo fails before any worker starts.

Exercised by ``python -m pytest tests/test_models.py -q``.
"""

import difflib
import importlib
import json
import inspect
from typing import Any, Callable

from torch import nn

from models.ecosystem import (
    build_hf_model,
    build_torchvision_model,
    check_hf_options,
    is_hf_model_class,
    is_torchvision_builder,
    outputs_logits,
    reshape_inputs,
)
from models.errors import ModelConfigError

MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

# Arguments derived from the dataset rather than written by the user.
DATA_ARGS = ("input_dim", "output_dim", "context", "vocab_size")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a model factory under ``name``.

    Raises:
        ValueError: if ``name`` is already registered.
    """

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in MODEL_REGISTRY:
            other = MODEL_REGISTRY[name]
            raise ValueError(
                f"model {name!r} is already registered by {other.__module__}.{other.__qualname__}; "
                "register the new factory under another name"
            )
        MODEL_REGISTRY[name] = factory
        return factory

    return decorator


def resolve_model_factory(name: str) -> Callable[..., nn.Module]:
    """Find the factory for a registered name or a ``package.module:function`` path.

    Raises:
        ModelConfigError: for ``model.name`` if the name is unknown or the path does not resolve.
    """
    if ":" not in name:
        if name not in MODEL_REGISTRY:
            close = difflib.get_close_matches(name, list(MODEL_REGISTRY), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ModelConfigError(
                "model.name",
                f"unknown model {name!r}{hint}; registered models are {sorted(MODEL_REGISTRY)}, "
                "or give your own factory as 'package.module:function'",
            )
        return MODEL_REGISTRY[name]
    module_name, _, attr = name.partition(":")
    if not module_name or not attr.isidentifier():
        raise ModelConfigError("model.name", f"{name!r}: write a factory as 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or the module's own code failing on import
        raise ModelConfigError(
            "model.name", f"cannot import {module_name!r}: {type(e).__name__}: {e}; check the module path"
        ) from None
    if not hasattr(module, attr):
        raise ModelConfigError(
            "model.name",
            f"module {module_name!r} has no attribute {attr!r}; check the function name",
        )
    factory = getattr(module, attr)
    # Only code written to build a model is called: a Python function or a module class,
    # never a builtin (os:system) or some other object of the module.
    if not (inspect.isfunction(factory) or (inspect.isclass(factory) and issubclass(factory, nn.Module))):
        raise ModelConfigError(
            "model.name", f"{name!r} is a {type(factory).__name__}, not a Python function or an "
            "nn.Module class that builds a model",
        )
    return factory


def _check_options(
    name: str, factory: Callable[..., nn.Module], options: dict[str, Any]
) -> dict[str, inspect.Parameter]:
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    accepted = [k for k, p in params.items() if k not in DATA_ARGS and p.kind is not p.VAR_KEYWORD]
    for key in options:
        if key in DATA_ARGS:
            raise ModelConfigError(
                f"model.options.{key}", "is derived from the dataset; remove it from the options"
            )
        if key not in params and not takes_any:
            raise ModelConfigError(
                f"model.options.{key}",
                f"model {name!r} has no option {key!r}; its options are {accepted}",
            )
        if key in params:
            _check_type(factory, key, params[key], options[key])
    return params


def _check_type(factory: Callable[..., nn.Module], key: str, param: inspect.Parameter, value: Any) -> None:
    """Refuse an option whose value does not fit the factory's annotation of it (an
    annotation that cannot be read, or none, accepts anything)."""
    from pydantic import TypeAdapter, ValidationError

    try:
        annotation = inspect.signature(factory, eval_str=True).parameters[key].annotation
        adapter = TypeAdapter(annotation) if annotation is not param.empty else None
    except Exception:  # an annotation pydantic cannot read, or names missing at run time
        return
    if adapter is None:
        return
    try:
        # As JSON, strictly: a YAML list may fill a tuple and an int a float, but "32" is no int.
        adapter.validate_json(json.dumps(value), strict=True)
    except (TypeError, ValueError) as error:
        if not isinstance(error, ValidationError):
            return  # not a JSON value (a YAML date): nothing to say about it
        shown = str(annotation) if getattr(annotation, "__args__", None) else getattr(annotation, "__name__", str(annotation))
        raise ModelConfigError(f"model.options.{key}", f"expects {shown}, got {value!r}") from None


def check_model_options(name: str, options: dict[str, Any]) -> None:
    """Check that ``name`` resolves and accepts ``options``, without building the model.

    Raises:
        ModelConfigError: naming ``model.name`` or the offending ``model.options.<key>``.
    """
    factory = resolve_model_factory(name)
    if is_hf_model_class(factory):
        check_hf_options(factory, options)
    elif not is_torchvision_builder(factory):
        _check_options(name, factory, options)


def build_model(
    name: str,
    options: dict[str, Any],
    *,
    input_dim: int | None,
    output_dim: int | None,
    context: int | None = None,
    vocab_size: int | None = None,
    pretrained: str | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> nn.Module:
    """Build a model, passing the factory only the dataset facts its signature asks for.

    Args:
        name: a registered name or a ``package.module:function`` path.
        options: keyword arguments from ``model.options``.
        input_dim: number of input features.
        output_dim: number of classes, or 1 for regression.
        context: longest token sequence, for language models.
        vocab_size: number of token ids, for language models.
        pretrained: a local ``save_pretrained`` directory to start a Hugging Face model from.
        input_shape: the shape each flat input row is seen as (e.g. ``(3, 32, 32)``).

    Returns:
        The model, with weights drawn from torch's global RNG; ``model.tensor_plan``
        holds the factory's tensor plan when it has one.

    Raises:
        ModelConfigError: if the name or an option is bad, or the model needs a dataset
            fact this dataset does not have.
    """
    factory = resolve_model_factory(name)
    data = dict(input_dim=input_dim, output_dim=output_dim, context=context, vocab_size=vocab_size)
    if is_hf_model_class(factory):
        model = build_hf_model(factory, options, data, pretrained)
    elif is_torchvision_builder(factory):
        model = build_torchvision_model(factory, options, output_dim)
    else:
        model = _build_from_factory(name, factory, options, data)
    if ":" in name:  # the user's own or the ecosystem's: outputs may be ModelOutputs
        outputs_logits(model)
    if input_shape:
        _check_input_shape(input_shape, input_dim)
        reshape_inputs(model, input_shape)
    return model


def _check_input_shape(shape: tuple[int, ...], input_dim: int | None) -> None:
    size = 1
    for n in shape:
        size *= n
    if input_dim is not None and size != input_dim:
        raise ModelConfigError(
            "model.input_shape",
            f"{list(shape)} holds {size} values and each input row has {input_dim}; "
            "give a shape whose product is the number of features",
        )


def _build_from_factory(
    name: str, factory: Callable[..., nn.Module], options: dict[str, Any], data: dict[str, int | None]
) -> nn.Module:
    params = _check_options(name, factory, options)
    wanted = {k: v for k, v in data.items() if k in params}
    missing = [k for k, v in wanted.items() if v is None and params[k].default is params[k].empty]
    if missing:
        raise ModelConfigError(
            "model.name",
            f"model {name!r} needs {missing}, which this dataset does not provide; "
            "pick a model that fits the dataset",
        )
    given = {k: v for k, v in wanted.items() if v is not None}
    model = factory(**given, **options)
    # A factory may say how its model splits for tensor parallelism (``gpt.tensor_plan``);
    # the plan travels with the model so strategies need not know which factory built it.
    plan = getattr(factory, "tensor_plan", None)
    if plan is not None:
        model.tensor_plan = plan(model)
    return model
