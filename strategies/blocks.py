"""Which modules of a model are its blocks: the units sharding and pipelining work in.

Two questions, answered here only:

- `repeated_blocks(model)`: the modules FSDP shards as units of their own. Each unit is
  gathered whole just before it runs and freed after, so the largest unit, not the model,
  bounds the memory of whole parameters.
- `named_blocks(model)`: the ordered sequence a pipeline cuts into stages, each block
  with its path in the model. Stages keep the blocks under those paths (checkpoints load
  under any layout), so a model can be pipelined when it is its blocks applied in order,
  each taking the previous one's output as its only input: `model.layers`
  (models/sequential.py), or the paths the model lists in `model.pipeline_blocks` (a
  Hugging Face decoder: models/hf_decoder.py). `model.pipeline_shared` names modules
  every stage holds beside its blocks without running them (rotary embeddings the blocks
  call); `model.pipeline_refusal` says why a model of that shape cannot be cut exactly.

Exercised by: pytest tests/test_strategy_layout.py
"""
from __future__ import annotations

from typing import Callable, Sequence

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


def blocks_of(model: nn.Module) -> Sequence[nn.Module]:
    """The block sequence pipeline stages are cut from: `model.layers` itself, or the
    modules `model.pipeline_blocks` names, in order.

    Raises:
        ValueError: when the model is not a sequence of blocks, naming strategy.pp and what
            would make it one.
    """
    paths = getattr(model, "pipeline_blocks", None)
    if paths is not None:
        return [model.get_submodule(path) for path in paths]
    refusal = getattr(model, "pipeline_refusal", None)
    if refusal is not None:
        raise ValueError(
            f"strategy.pp: the model ({type(model).__name__}) cannot be cut into pipeline stages: "
            f"{refusal}; or set strategy.pp: 1"
        )
    layers = getattr(model, "layers", None)
    if not isinstance(layers, (nn.ModuleList, nn.Sequential)):
        raise ValueError(
            f"strategy.pp: the model ({type(model).__name__}) has no `layers` sequence of blocks "
            "to cut into stages, nor `pipeline_blocks` naming them; build it as "
            "models.SequentialModel, use a Hugging Face decoder built like Llama "
            "(transformers:LlamaForCausalLM), give it `pipeline_blocks` (the paths of modules "
            "that applied in order, each to the previous one's output alone, are the model), "
            "or set strategy.pp: 1"
        )
    return layers


def named_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """`blocks_of(model)`, each block with its path in the model (`layers.3`,
    `model.layers.0`): the names a pipeline stage keeps it under."""
    blocks = blocks_of(model)
    paths = getattr(model, "pipeline_blocks", None) or [f"layers.{i}" for i in range(len(blocks))]
    return list(zip(paths, blocks))


def shared_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules every pipeline stage holds beside its blocks (`model.pipeline_shared`), by
    path: what blocks call without being blocks (a decoder's rotary embeddings)."""
    return [(path, model.get_submodule(path)) for path in getattr(model, "pipeline_shared", None) or ()]


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
