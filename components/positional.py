"""Positional information: added to the token embeddings, or applied inside attention.

Every variant offers three hooks; the backbone and the attention call them without knowing which
encoding they hold:
  forward(x)                    (B, T, d_model) embeddings -> the same with positions added
  rotate(q, k)                  queries and keys -> rotated ones (RoPE), or unchanged
  attention_bias(q)             (n_heads, T, T) additive score bias for q's heads (ALiBi), or None
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


@POSITIONAL.register("rope")
class Rotary(Positional):
    """Rotary position embedding on queries and keys (Su et al. 2021, RoFormer)."""

    def __init__(self, *, context_length: int, base: Annotated[float, Range(1, low_open=True)] = 10000.0) -> None:
        super().__init__()
        self.context_length, self.base = context_length, base
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _cos_sin(self, head_dim: int, T: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Built per head size on first use (single-head and multi-head attention differ), then cached.
        key = (head_dim, like.device, like.dtype)
        if key not in self._tables:
            inv_freq = self.base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
            angles = torch.arange(self.context_length, dtype=torch.float64)[:, None] * inv_freq
            angles = torch.cat([angles, angles], dim=-1)                      # (T_max, head_dim)
            self._tables[key] = (angles.cos().to(like), angles.sin().to(like))
        cos, sin = self._tables[key]
        return cos[:T], sin[:T]

    @staticmethod
    def _half_turn(x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=-1)
        return torch.cat([-second, first], dim=-1)

    def rotate(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self._cos_sin(q.shape[-1], q.shape[-2], q)                 # (T, head_dim)
        return q * cos + self._half_turn(q) * sin, k * cos + self._half_turn(k) * sin

    @classmethod
    def check_dims(cls, dims: dict, options: dict) -> list[str]:
        head_dim = dims["d_model"] // dims["n_heads"]
        return [] if head_dim % 2 == 0 else [f"rope needs an even head size; d_model / n_heads = {head_dim}"]


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
        self._bias: dict[tuple, torch.Tensor] = {}

    def attention_bias(self, q: torch.Tensor) -> torch.Tensor:
        n_heads, T = q.shape[1], q.shape[2]                                    # q: (B, n_heads, T, head_dim)
        key = (n_heads, T, q.device, q.dtype)
        if key not in self._bias:                                              # built once per shape, then reused
            distance = torch.arange(T)[None, :] - torch.arange(T)[:, None]     # (T, T): j - i, <= 0 for the past
            bias = alibi_slopes(n_heads)[:, None, None] * distance.clamp(max=0)  # (n_heads, T, T)
            self._bias[key] = bias.to(q)
        return self._bias[key]
