"""Decoder-only transformer language model (GPT-2 style, pre-LayerNorm) and its tensor plan.

Layers: ``Embedding`` -> ``depth`` x ``TransformerBlock`` -> ``LMHead``. The token
embedding and the output projection are not tied, as GPT-2's are: tying would make the
first and last layers share a weight, and pipeline parallelism puts them on different ranks.

Exercised by ``python -m pytest tests/test_models.py -q``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.registry import ModelConfigError, register_model
from models.sequential import SequentialModel


class Embedding(nn.Module):
    """Token plus learned position embeddings: (B, T) ids -> (B, T, width)."""

    def __init__(self, vocab_size: int, context: int, width: int):
        super().__init__()
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(context, width)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        return self.token(idx) + self.position(positions)


class Attention(nn.Module):
    """Causal multi-head self-attention with separate q/k/v projections.

    Tensor parallelism shards q/k/v column-wise, so each rank holds whole heads but only
    some of them; the head count is therefore read from the projected size, never from
    the configured ``heads``.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.head_dim = width // heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        local_heads = q.shape[-1] // self.head_dim
        q, k, v = (
            t.view(batch, seq, local_heads, self.head_dim).transpose(1, 2) for t in (q, k, v)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(batch, seq, local_heads * self.head_dim)
        return self.out_proj(y)


class FeedForward(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc_in = nn.Linear(width, hidden)
        self.fc_out = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x), approximate="tanh"))


class TransformerBlock(nn.Module):
    """Pre-LayerNorm residual block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.attn_norm = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp = FeedForward(width, mlp_ratio * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class LMHead(nn.Module):
    """Final LayerNorm and projection to vocabulary logits."""

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x))


def _init_weights(model: SequentialModel, depth: int) -> None:
    # GPT-2 initialisation, drawn from torch's RNG so a seeded build is reproducible.
    # Projections that write into the residual stream are scaled down by sqrt(2 * depth)
    # (two per block) so the stream's variance does not grow with depth.
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = 0.02
            if name.endswith(("attn.out_proj", "mlp.fc_out")):
                std /= math.sqrt(2 * depth)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


@register_model("gpt")
def gpt(
    vocab_size: int,
    context: int,
    depth: int = 2,
    width: int = 64,
    heads: int = 4,
    mlp_ratio: int = 4,
) -> SequentialModel:
    """Build the language model.

    Args:
        vocab_size: number of token ids.
        context: longest sequence the model accepts.
        depth: number of transformer blocks.
        width: embedding size.
        heads: attention heads; must divide ``width``.
        mlp_ratio: feed-forward hidden size as a multiple of ``width``.

    Returns:
        The model, mapping (B, T) token ids with T <= context to (B, T, vocab_size) logits;
        ``len(model.layers) == depth + 2``.

    Raises:
        ModelConfigError: if ``heads`` does not divide ``width``.
    """
    if width % heads:
        divisors = [h for h in range(1, width + 1) if width % h == 0]
        raise ModelConfigError(
            "model.options.heads",
            f"{heads} does not divide width {width}; choose one of {divisors}",
        )
    model = SequentialModel(
        [
            Embedding(vocab_size, context, width),
            *(TransformerBlock(width, heads, mlp_ratio) for _ in range(depth)),
            LMHead(width, vocab_size),
        ]
    )
    _init_weights(model, depth)
    return model


def gpt_tensor_plan(model: SequentialModel) -> dict[str, str]:
    """Megatron-style sharding of every transformer block.

    q/k/v and ``fc_in`` are split column-wise, so each rank computes whole heads and a
    slice of the feed-forward features locally; ``out_proj`` and ``fc_out`` are split
    row-wise and sum those partial results back, one all-reduce per sub-layer.

    Returns:
        Fully-qualified module name -> ``"colwise"`` or ``"rowwise"``.
    """
    plan = {}
    for i, layer in enumerate(model.layers):
        if isinstance(layer, TransformerBlock):
            for name in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "mlp.fc_in"):
                plan[f"layers.{i}.{name}"] = "colwise"
            for name in ("attn.out_proj", "mlp.fc_out"):
                plan[f"layers.{i}.{name}"] = "rowwise"
    return plan


gpt.tensor_plan = gpt_tensor_plan
