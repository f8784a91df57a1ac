"""Hugging Face decoder-only language models as a pipeline's sequence of blocks.

A `*ForCausalLM` of a family whose forward is its blocks applied in order,

    token ids -> model.embed_tokens -> model.layers[0..n-1] -> model.norm -> lm_head -> logits

carries that sequence as data, for strategies/ (which never import a model) to cut:

    model.pipeline_blocks = ["model.embed_tokens", "model.layers.0", ..., "model.norm", "lm_head"]
    model.pipeline_shared = ["model.rotary_emb"]   # held by every stage, never run as a block

A pipeline stage calls each block with one tensor. The model's own forward passes each
decoder layer two more things: the rotary position embeddings and the causal mask. A
forward pre-hook on every decoder layer makes them when the caller did not pass them,
the way the model's forward makes them for token ids without padding: positions 0..T-1,
`model.rotary_emb(hidden, positions)`, and the modeling module's own `create_causal_mask`
with no padding mask (None under sdpa, whose kernel then masks by `is_causal`; an additive
mask under eager). The model's forward passes both, so on the whole model the hooks do
nothing.

A model of that shape whose stages could not compute exactly what the whole model computes
(tied input and output embeddings, sliding-window attention, another attention kernel, a
family whose forward does more than run its blocks) gets `model.pipeline_refusal` instead:
the reason `validate` reports under strategy.pp.

Exercised by: pytest tests/test_hf_pipeline.py
"""
from __future__ import annotations

import inspect
from functools import partial
from typing import Any, Callable

import torch
from torch import nn

# Families whose `*Model.forward` is embed -> decoder layers (rotary embeddings, causal mask)
# -> norm, and whose `*ForCausalLM.forward` adds lm_head alone: read in transformers 5.25's
# modeling files; tests/test_hf_pipeline.py checks each against the whole model.
PIPELINED_FAMILIES = ("llama", "mistral", "qwen2", "qwen3")
# Attention kernels whose mask `create_causal_mask` makes the same for a stage as for the model.
EXACT_ATTENTION = ("sdpa", "eager")


def mark_pipeline_blocks(model: nn.Module) -> nn.Module:
    """Give a decoder-only Hugging Face model its pipeline blocks, or the reason it has none.

    Models of any other shape are returned untouched (a pipeline refuses them for lacking
    blocks).

    Returns:
        `model`, with `pipeline_blocks`, `pipeline_shared` and a pre-hook on each decoder
        layer; or with `pipeline_refusal`.
    """
    if not _has_decoder_shape(model):
        return model
    reason = _refusal(model)
    if reason is not None:
        model.pipeline_refusal = reason
        return model
    decoder = model.model
    make_mask = inspect.getmodule(type(decoder)).create_causal_mask
    for layer in decoder.layers:
        layer.register_forward_pre_hook(
            partial(_fill_decoder_inputs, decoder.rotary_emb, model.config, make_mask), with_kwargs=True
        )
    layers = [f"model.layers.{i}" for i in range(len(decoder.layers))]
    model.pipeline_blocks = ["model.embed_tokens", *layers, "model.norm", "lm_head"]
    model.pipeline_shared = ["model.rotary_emb"]
    return model


def _has_decoder_shape(model: nn.Module) -> bool:
    decoder = getattr(model, "model", None)
    return (
        type(model).__name__.endswith("ForCausalLM")
        and isinstance(getattr(model, "lm_head", None), nn.Linear)
        and isinstance(getattr(decoder, "embed_tokens", None), nn.Embedding)
        and isinstance(getattr(decoder, "layers", None), nn.ModuleList)
        and isinstance(getattr(decoder, "norm", None), nn.Module)
        and isinstance(getattr(decoder, "rotary_emb", None), nn.Module)
    )


def _refusal(model: nn.Module) -> str | None:
    """Why a stage could not compute what the whole model computes, or None."""
    config = model.config
    family = getattr(config, "model_type", None)
    if family not in PIPELINED_FAMILIES:
        return (
            f"its family ({family}) is not one whose forward is known to be its blocks in order "
            f"(those are {', '.join(PIPELINED_FAMILIES)})"
        )
    if model.lm_head.weight is model.model.embed_tokens.weight:
        return (
            "its input embedding and lm_head share one weight, which the first and the last stage "
            "would each hold; set model.options.tie_word_embeddings: false"
        )
    if getattr(config, "sliding_window", None) is not None:
        return (
            f"sliding-window attention (sliding_window {config.sliding_window}) is masked by the "
            "model's forward, not by its layers; set model.options.sliding_window: null"
        )
    kinds = sorted(set(getattr(config, "layer_types", None) or ["full_attention"]) - {"full_attention"})
    if kinds:
        return f"layers of kind {', '.join(kinds)} are masked by the model's forward; use full attention only"
    if len(model.model.layers) != config.num_hidden_layers:
        return f"it holds {len(model.model.layers)} decoder layers and runs {config.num_hidden_layers}"
    attention = config._attn_implementation
    if attention not in EXACT_ATTENTION:
        return f"attention implementation {attention!r}: stages make the mask of {' and '.join(EXACT_ATTENTION)} only"
    return None


def _fill_decoder_inputs(
    rotary: nn.Module, config: Any, make_mask: Callable, layer: nn.Module, args: tuple, kwargs: dict
) -> tuple[tuple, dict] | None:
    """Forward pre-hook: a decoder layer called with its hidden states alone gets the
    positions, rotary embeddings and causal mask the model's forward would pass it."""
    if kwargs.get("position_embeddings") is not None:
        return None
    hidden = args[0] if args else kwargs["hidden_states"]
    positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    mask = make_mask(config=config, inputs_embeds=hidden, attention_mask=None, cache=None, position_ids=positions)
    filled = {**kwargs, "attention_mask": mask, "position_ids": positions,
              "position_embeddings": rotary(hidden, positions)}
    return args, filled
