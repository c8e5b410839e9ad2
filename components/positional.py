"""Positional information: added to the token embeddings, or applied inside attention.

Every variant offers three hooks; the backbone and the attention call them without knowing which
encoding they hold:
  forward(x)                    (B, T, d_model) embeddings -> the same with positions added
  rotate(q, k)                  queries and keys -> rotated ones (RoPE), or unchanged
  attention_bias(q)             (n_heads, T, T) additive score bias for q's heads with the causal
                                mask folded in (-inf above the diagonal; ALiBi), or None
and one the backbone calls once, when the attention's sizes are known:
  prepare(n_heads, head_dim, context_length)
                                build the tables (RoPE's cos/sin, ALiBi's masked bias) at
                                context_length, as non-persistent buffers

Why buffers built up front rather than caches filled on first use: a cache keyed by sequence length
grows by one table per length while generation feeds growing windows (ALiBi's reached ~17 GB at
context 1024), and every lazily filled cache costs torch.compile a recompile. A forward slices the
tables to its length.
"""
from __future__ import annotations

import math
from typing import Annotated

import torch
from torch import nn

from registry import POSITIONAL, Range


class Positional(nn.Module):
    """Base: adds nothing, rotates nothing, biases nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return q, k

    def attention_bias(self, q: torch.Tensor) -> torch.Tensor | None:
        return None

    def prepare(self, *, n_heads: int, head_dim: int, context_length: int) -> None:
        """Build whatever tables the attention's sizes call for (nothing here)."""


def sinusoid_table(context_length: int, d_model: int) -> torch.Tensor:
    """PE[t, 2i] = sin(t / 10000^(2i/d)), PE[t, 2i+1] = cos(t / 10000^(2i/d))."""
    position = torch.arange(context_length, dtype=torch.float64)[:, None]     # (T, 1)
    inv_freq = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    angles = position * inv_freq                                               # (T, ceil(d/2))
    table = torch.zeros(context_length, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles[:, : d_model // 2])
    return table.float()


@POSITIONAL.register("none")
class NoPositional(Positional):
    """No positional information: the causal mask alone tells positions apart (NoPE)."""

    def __init__(self) -> None:
        super().__init__()


@POSITIONAL.register("sinusoidal")
class Sinusoidal(Positional):
    """Fixed sin/cos table added to the embeddings (Vaswani et al. 2017, "Attention Is All You Need")."""

    def __init__(self, *, context_length: int, d_model: int, scale_embeddings: bool = True) -> None:
        super().__init__()
        # The paper multiplies the embeddings by sqrt(d_model) (sec. 3.4): with GPT-2's N(0, 0.02)
        # init, unscaled tokens would be ~50x smaller than the unit-sized table and drown in it.
        self.embedding_scale = math.sqrt(d_model) if scale_embeddings else 1.0
        self.register_buffer("table", sinusoid_table(context_length, d_model), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.embedding_scale + self.table[: x.shape[1]]


@POSITIONAL.register("learned")
class Learned(Positional):
    """A trained embedding per position, added to the token embeddings (GPT-2)."""

    def __init__(self, *, context_length: int, d_model: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(context_length, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.embedding.weight[: x.shape[1]]


@POSITIONAL.register("learned_scaled")
class LearnedScaled(Learned):
    """Learned positions with the tokens times sqrt(d_model), as sinusoidal scales them: the control arm
    that tells sinusoidal's positions apart from its token scale (sinusoidal vs learned compares both)."""

    def __init__(self, *, context_length: int, d_model: int) -> None:
        super().__init__(context_length=context_length, d_model=d_model)
        self.embedding_scale = math.sqrt(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * self.embedding_scale)


@POSITIONAL.register("rope")
class Rotary(Positional):
    """Rotary position embedding on queries and keys (Su et al. 2021, RoFormer), GPT-NeoX/Llama's half-split pairing.

    Dimension i turns with i + head_dim/2 (RoFormer pairs neighbours 2i, 2i+1): the same function up to a
    fixed permutation of the q/k features, which a model trained from scratch absorbs; it matters only
    when moving rotary weights between the two conventions."""

    def __init__(self, *, base: Annotated[float, Range(1, low_open=True)] = 10000.0) -> None:
        super().__init__()
        self.base = base
        self.head_dim = None  # the tables' head size, once prepare() has built them

    def prepare(self, *, n_heads: int, head_dim: int, context_length: int) -> None:
        cos, sin = rope_tables(context_length, head_dim, self.base)
        self.register_buffer("cos", cos, persistent=False)                   # (context_length, head_dim)
        self.register_buffer("sin", sin, persistent=False)
        self.head_dim = head_dim

    def _cos_sin(self, head_dim: int, T: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if head_dim == self.head_dim:
            return self.cos[:T], self.sin[:T]
        cos, sin = rope_tables(T, head_dim, self.base)  # not prepared for this size: built for this call only
        return cos.to(like.device), sin.to(like.device)

    @staticmethod
    def _half_turn(x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=-1)
        return torch.cat([-second, first], dim=-1)

    def rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """In float32 whatever q's dtype (under bf16 autocast too): bf16 tables would put errors of up
        to ~0.4% on every angle; the rotated result is rounded once, to q's dtype."""
        cos, sin = self._cos_sin(q.shape[-1], q.shape[-2], q)                 # (T, head_dim), float32
        qf, kf = q.float(), k.float()
        return ((qf * cos + self._half_turn(qf) * sin).to(q.dtype),
                (kf * cos + self._half_turn(kf) * sin).to(k.dtype))

    @classmethod
    def check_dims(cls, dims: dict, options: dict) -> list[str]:
        head_dim = dims.get("head_dim", dims["d_model"] // dims["n_heads"])  # the attention's (with_head_size)
        return [] if head_dim is None or head_dim % 2 == 0 else [f"rope turns pairs of features, so it needs "
                                                                 f"an even head size, and the heads are {head_dim} wide"]


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Head h of n gets slope 2^(-8(h+1)/n); for n not a power of two, interleave as the paper does."""
    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]
    if math.log2(n_heads).is_integer():
        return torch.tensor(power_of_two(n_heads))
    lower = 2 ** math.floor(math.log2(n_heads))
    return torch.tensor(power_of_two(lower) + power_of_two(2 * lower)[0::2][: n_heads - lower])


@POSITIONAL.register("alibi")
class ALiBi(Positional):
    """Per-head linear distance penalty on attention scores (Press et al. 2022, "Train Short, Test Long")."""

    def __init__(self) -> None:
        super().__init__()
        self.n_heads = None  # the mask's heads, once prepare() has built it

    def prepare(self, *, n_heads: int, head_dim: int, context_length: int) -> None:
        # Built once at context_length, float32; a forward slices it (one mask for every length).
        self.register_buffer("mask", alibi_mask(n_heads, context_length), persistent=False)
        self.n_heads = n_heads

    def attention_bias(self, q: torch.Tensor) -> torch.Tensor:
        n_heads, T = q.shape[1], q.shape[2]                                    # q: (B, n_heads, T, head_dim)
        mask = self.mask[:, :T, :T] if n_heads == self.n_heads else alibi_mask(n_heads, T).to(q.device)
        return mask                       # (n_heads, T, T) float32, a view: each kernel takes it in the dtype it needs


def rope_tables(length: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (length, head_dim) float32: angle t * base^(-2i/head_dim), the halves repeated."""
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.arange(length, dtype=torch.float64)[:, None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)                              # (length, head_dim)
    return angles.cos().float(), angles.sin().float()


def alibi_mask(n_heads: int, length: int) -> torch.Tensor:
    """(n_heads, length, length) float32: slope_h * (j - i) at and below the diagonal, -inf above it."""
    distance = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # (T, T): j - i, <= 0 for the past
    bias = alibi_slopes(n_heads)[:, None, None] * distance.clamp(max=0)       # (n_heads, T, T)
    return bias.masked_fill(distance > 0, float("-inf"))
