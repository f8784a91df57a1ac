"""Which modules of a model are its blocks: the units sharding and pipelining work in.

Two questions, answered here only:

- `repeated_blocks(model)`: the modules FSDP shards as units of their own. Each unit is
  gathered whole just before it runs and freed after, so the largest unit, not the model,
  bounds the memory of whole parameters.
- `blocks_of(model)`: the ordered sequence a pipeline cuts into stages. Stages keep the
  blocks under their `layers.<i>` names (checkpoints load under any layout), so only a
  model that is its `layers` applied in order (models/sequential.py) can be pipelined.

Exercised by: pytest tests/test_strategy_layout.py
"""
from __future__ import annotations

from typing import Callable

from torch import nn


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules of `model` to shard as units of their own, in the order it holds them.

    Found by the first of these that applies:

    1. the model's own block sequence, `model.layers`: an nn.ModuleList or nn.Sequential
       (models/sequential.py), or the nn.ModuleDict a pipeline stage keeps its blocks in.
       Every layer is a block, as that module promises.
    2. the classes a Hugging Face model names in `_no_split_modules` (its decoder layers),
       outermost first.
    3. modules of one class repeated in an nn.ModuleList (a transformer's blocks under
       another attribute name), outermost first.

    The first rule comes first so that the project's models are cut exactly where they
    always were; the others let a model written elsewhere be sharded block by block.

    Returns:
        The blocks; empty for a model with none (a plain nn.Sequential of layers), which
        is then one unit: sharded at rest, gathered whole to run.
    """
    layers = getattr(model, "layers", None)
    if isinstance(layers, nn.ModuleDict):
        return list(layers.values())
    if isinstance(layers, (nn.ModuleList, nn.Sequential)):
        return list(layers)
    no_split = set(getattr(model, "_no_split_modules", None) or ())
    if no_split:
        found = _outermost(model, lambda module, parent: type(module).__name__ in no_split)
        if found:
            return found
    return _outermost(model, _repeated_in_module_list)


def blocks_of(model: nn.Module) -> nn.ModuleList:
    """The block sequence pipeline stages are cut from.

    Raises:
        ValueError: when the model is not a sequence of blocks.
    """
    layers = getattr(model, "layers", None)
    if not isinstance(layers, (nn.ModuleList, nn.Sequential)):
        raise ValueError(
            f"strategy.pp: the model ({type(model).__name__}) has no `layers` sequence of blocks "
            "to cut into stages; build it as models.SequentialModel or set strategy.pp: 1"
        )
    return layers


def _repeated_in_module_list(module: nn.Module, parent: nn.Module) -> bool:
    return isinstance(parent, nn.ModuleList) and sum(type(m) is type(module) for m in parent) > 1


def _outermost(model: nn.Module, selected: Callable[[nn.Module, nn.Module], bool]) -> list[nn.Module]:
    """Modules below the root that `selected(module, parent)` picks, depth first, without
    looking inside a picked one: a block's own repeated parts (attention heads, experts)
    belong to its unit. A module reached twice (tied) is listed once."""
    found: list[nn.Module] = []
    seen: set[int] = set()

    def visit(parent: nn.Module) -> None:
        for child in parent.children():
            if id(child) in seen:
                continue
            seen.add(id(child))
            if selected(child, parent):
                found.append(child)
            else:
                visit(child)

    visit(model)
    return found
