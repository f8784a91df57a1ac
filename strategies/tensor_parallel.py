"""Tensor (intra-layer) parallelism: Megatron-style sharding of nn.Linear layers with DTensor.

A plan maps a module's fully-qualified name to how it is split over the "tp" mesh dimension:

    colwise                  output features split; the output stays split (a Megatron pair's first half)
    rowwise                  input features split; partial outputs summed (the pair's second half)
    colwise_gathered         output features split, then gathered: a lone layer, full output
    rowwise_from_replicated  a full input split locally, partial outputs summed: a lone layer

A plan comes from the model (`gpt.tensor_plan`: heads and the MLP; `mlp.tensor_plan`) or from
`auto_plan`, which needs no change to the model's code: every nn.Linear the model calls is split,
consecutive layers paired column-then-row where the data flows from one to the next through
element-wise operations only, the others split alone.

Exercised by: pytest tests/test_strategy_parity.py -k tensor; pytest tests/test_model_parallel.py
"""
from __future__ import annotations

import copy
from collections import Counter
from typing import Iterable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from strategies.compat import torch as compat_torch
from strategies.sharing import modules_sharing_weights

PLAN_STYLES = ("colwise", "rowwise", "colwise_gathered", "rowwise_from_replicated")
# Which dimension of nn.Linear a style splits: output features or input features.
SPLITS_OUTPUT = {"colwise": True, "colwise_gathered": True, "rowwise": False, "rowwise_from_replicated": False}

# Autograd nodes of element-wise operations with a single input: between a column-wise layer
# and the next layer, features may pass through these and stay split, since no feature
# depends on another one. Anything else (a LayerNorm, a reshape, a residual sum) ends a pair.
POINTWISE_NODES = frozenset(
    f"{name}Backward0"
    for name in (
        "Relu", "Gelu", "Tanh", "Sigmoid", "Silu", "LeakyRelu", "Elu", "Hardtanh", "Hardswish",
        "Hardsigmoid", "Softplus", "Mish", "Celu", "Selu", "NativeDropout", "Clone", "ToCopy", "Alias",
    )
) | {"MulBackward1", "DivBackward1"}  # times or over a Python number
# Times or over a tensor that needs no gradient: element-wise when that tensor is a number
# or has the activation's own shape (a dropout mask drawn for it), not when it broadcasts a
# full-width vector over split features.
MASK_NODES = frozenset({"MulBackward0", "DivBackward0"})


class PlanError(ValueError):
    """A tensor plan that cannot be made or applied for this model."""


def _style(name: str):
    # New objects each time: parallelize_module keeps state on some styles.
    return {
        "colwise": lambda: ColwiseParallel(),
        "rowwise": lambda: RowwiseParallel(),
        "colwise_gathered": lambda: ColwiseParallel(output_layouts=Replicate()),
        "rowwise_from_replicated": lambda: RowwiseParallel(input_layouts=Replicate()),
    }[name]()


def model_plan(model: nn.Module) -> dict[str, str]:
    """The plan the model's factory wrote (`model.tensor_plan`, attached by `build_model`).

    Raises:
        PlanError: when the model has none.
    """
    plan = getattr(model, "tensor_plan", None)
    if plan is None:
        raise PlanError(
            f"strategy.plan: the model ({type(model).__name__}) has no tensor plan of its own; "
            "set strategy.plan: auto to split every nn.Linear"
        )
    return dict(plan)


def resolve_plan(model: nn.Module, kind: str, tp: int) -> dict[str, str]:
    """`kind` is "model" (the model's own plan) or "auto" (`auto_plan`)."""
    return model_plan(model) if kind == "model" else auto_plan(model, tp)


# ---- the automatic plan ------------------------------------------------------------------
def auto_plan(model: nn.Module, tp: int) -> dict[str, str]:
    """Split every nn.Linear the model calls, pairing consecutive ones column-then-row.

    One forward pass of a copy on the meta device (no memory, no real compute) records the
    order in which the Linear modules run and the autograd graph between them. Layer B pairs
    with layer A just before it when B's input is A's output passed only through element-wise
    operations and used nowhere else, and the shared width divides by `tp`: A's split output
    then feeds B without any communication. A layer left without a partner is split alone, its
    output gathered (or, when only its input width divides, its input split). A Linear whose
    module is never called (its weight used by functional code), one called more than once
    and one whose weight another module shares (tied embeddings) stay replicated.

    Args:
        model: any nn.Module; its code is not changed.
        tp: the tensor-parallel degree.

    Returns:
        Fully-qualified module name -> one of PLAN_STYLES.

    Raises:
        PlanError: when no example input can be made for the model or its forward fails on it.
    """
    return _pair(_probe(model), tp)


def _pair(probe, tp: int) -> dict[str, str]:
    order, linears, inputs, outputs, consumers = probe
    plan: dict[str, str] = {}
    i = 0
    while i < len(order):
        a = order[i]
        if i + 1 < len(order):
            b = order[i + 1]
            width = linears[a].out_features
            if (
                width == linears[b].in_features
                and width % tp == 0
                and _flows_pointwise(outputs[a], inputs[b], consumers)
            ):
                plan[a], plan[b] = "colwise", "rowwise"
                i += 2
                continue
        if linears[a].out_features % tp == 0:
            plan[a] = "colwise_gathered"
        elif linears[a].in_features % tp == 0:
            plan[a] = "rowwise_from_replicated"
        i += 1
    return plan


def example_input(model: nn.Module, batch: int = 2) -> torch.Tensor:
    """A small input on the meta device, read off the first layer that holds parameters:
    token ids for an nn.Embedding, features for an nn.Linear; or flat rows of
    `model.input_features` for a model that says what it reads."""
    if isinstance(getattr(model, "input_features", None), int):
        return torch.zeros(batch, model.input_features, device="meta")
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            return torch.zeros(batch, 4, dtype=torch.long, device="meta")
        if isinstance(module, nn.Linear):
            return torch.zeros(batch, module.in_features, device="meta")
        if any(True for _ in module.parameters(recurse=False)):
            raise PlanError(
                f"strategy.plan: auto cannot make an example input for a model whose first layer "
                f"is {type(module).__name__} (it reads nn.Embedding and nn.Linear inputs); "
                "give the model's factory a tensor_plan and set strategy.plan: model"
            )
    raise PlanError("strategy.plan: auto found no layer with parameters in the model")


def _probe(model: nn.Module):
    meta = copy.deepcopy(model).to("meta")  # deepcopy keeps shared weights shared
    tied = modules_sharing_weights(meta)
    linears = {name: m for name, m in meta.named_modules() if isinstance(m, nn.Linear) and name not in tied}
    calls: Counter[str] = Counter()
    order: list[str] = []
    inputs: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}

    def before(name):
        def hook(_module, args):
            inputs[name] = args[0]
        return hook

    def after(name):
        def hook(_module, _args, output):
            calls[name] += 1
            outputs[name] = output
            if calls[name] == 1:
                order.append(name)
        return hook

    handles = []
    for name, module in linears.items():
        handles.append(module.register_forward_pre_hook(before(name)))
        handles.append(module.register_forward_hook(after(name)))
    try:
        result = meta(example_input(meta))
    except PlanError:
        raise
    except Exception as error:  # a model the probe input does not fit: say so, with why
        raise PlanError(
            f"strategy.plan: auto could not run the model on an example input "
            f"({type(error).__name__}: {error}); give its factory a tensor_plan and set strategy.plan: model"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    once = [name for name in order if calls[name] == 1]
    roots = [t.grad_fn for t in _tensors(result) if t.grad_fn is not None]
    return once, linears, inputs, outputs, _count_consumers(roots)


def _tensors(value) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _count_consumers(roots) -> Counter:
    """How many autograd nodes take each node's output as an input."""
    consumers: Counter = Counter()
    seen, stack = set(), list(roots)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for upstream, _ in node.next_functions:
            if upstream is not None:
                consumers[upstream] += 1
                stack.append(upstream)
    return consumers


def _flows_pointwise(a_output: torch.Tensor, b_input: torch.Tensor, consumers: Counter) -> bool:
    """Whether `b_input` is `a_output` after element-wise operations only, each result used once."""
    target, node = a_output.grad_fn, b_input.grad_fn
    while node is not None:
        if consumers[node] != 1:
            return False
        if node is target:
            return True
        kind = type(node).__name__
        if kind in POINTWISE_NODES and len(node.next_functions) == 1:
            node = node.next_functions[0][0]
        elif kind in MASK_NODES and _is_mask(node, b_input.shape):
            node = node.next_functions[0][0]
        else:
            return False
    return False


def _is_mask(node, shape: torch.Size) -> bool:
    (flowing, _), (constant_edge, _) = node.next_functions
    if flowing is None or constant_edge is not None:
        return False
    constant = compat_torch.saved_other(node)
    return isinstance(constant, torch.Tensor) and (constant.numel() == 1 or constant.shape == shape)


# ---- checks and application --------------------------------------------------------------
def plan_problems(model: nn.Module, plan: dict[str, str], tp: int) -> list[str]:
    """Why `plan` cannot split `model` `tp` ways (empty when it can).

    Checks that every entry names an nn.Linear, that the split width divides by `tp`, and
    that a module with a `head_dim` (attention) keeps whole heads on each rank.
    """
    modules = dict(model.named_modules())
    problems = []
    for name, style in plan.items():
        module = modules.get(name)
        if style not in PLAN_STYLES:
            problems.append(f"tensor plan: {name!r} has style {style!r}; styles are {', '.join(PLAN_STYLES)}")
        elif not isinstance(module, nn.Linear):
            problems.append(f"tensor plan: {name!r} is not an nn.Linear of the model")
        else:
            width = module.out_features if SPLITS_OUTPUT[style] else module.in_features
            if width % tp:
                side = "output" if SPLITS_OUTPUT[style] else "input"
                problems.append(f"strategy.tp: {tp} does not divide the {width} {side} features of {name}")
    for name, module in modules.items():
        head_dim = getattr(module, "head_dim", None)
        if not isinstance(head_dim, int):
            continue
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            # Only a split output that stays split ("colwise") divides the heads among ranks.
            if isinstance(child, nn.Linear) and plan.get(full) == "colwise":
                heads = child.out_features // head_dim
                if heads % tp:
                    problems.append(f"strategy.tp: {tp} does not divide the {heads} attention heads of {name}")
                break
    return problems


def unsplit_layers(model: nn.Module) -> list[str]:
    """What the automatic plan leaves whole, and why: tied layers by name, other
    weight-matrix layers by type (e.g. transformers' Conv1D), with a few names each."""
    tied = modules_sharing_weights(model)
    by_type: dict[str, list[str]] = {}
    reasons = []
    for name, module in model.named_modules():
        if name in tied and isinstance(module, nn.Linear):
            reasons.append(f"{name} ({tied[name]})")
        elif not isinstance(module, (nn.Linear, nn.Embedding)) and _has_weight_matrix(module):
            by_type.setdefault(type(module).__name__, []).append(name)
    for kind, names in by_type.items():
        shown = ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")
        reasons.append(f"{len(names)} {kind} layers, not nn.Linear ({shown})")
    return reasons


def _has_weight_matrix(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.dim() == 2 and not list(module.children())


def fitting_degrees(model: nn.Module, kind: str, limit: int = 64) -> list[int]:
    """Tensor degrees up to `limit` that split the model under plan `kind`."""
    try:
        probe = _probe(model) if kind == "auto" else None
        own = model_plan(model) if kind == "model" else None
    except PlanError:
        return []
    fits = []
    for tp in range(1, limit + 1):
        plan = own if own is not None else _pair(probe, tp)
        if tp == 1 or (plan and not plan_problems(model, plan, tp)):
            fits.append(tp)
    return fits


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh, plan: dict[str, str]) -> nn.Module:
    """Shard the plan's layers of `model` in place over `tp_mesh`.

    Entries naming modules the model does not hold are skipped, so one whole-model plan
    serves every pipeline stage (a stage keeps the original module names).
    """
    present = {name for name, _ in model.named_modules()}
    local_plan = {name: _style(style) for name, style in plan.items() if name in present}
    if local_plan:
        parallelize_module(model, tp_mesh, local_plan)
    return model


def sharded_parameters(model: nn.Module, plan: dict[str, str], tp: int) -> int:
    """Parameters one tensor-parallel rank holds under `plan` (plan's widths divide `tp`)."""
    sharded: dict[int, int] = {}
    modules = dict(model.named_modules())
    for name, style in plan.items():
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            continue
        sharded[id(module.weight)] = module.weight.numel() // tp
        if module.bias is not None and SPLITS_OUTPUT[style]:
            sharded[id(module.bias)] = module.bias.numel() // tp
    return sum(sharded.get(id(p), p.numel()) for p in model.parameters())
