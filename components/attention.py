"""Causal self-attention: none, single-head, multi-head, multi-query and grouped-query.

Every variant is causal, has attention dropout, residual (output) dropout and an output projection,
and takes ``impl``: ``sdpa`` (the fastest fused kernel for the case: torch's scaled_dot_product_attention,
or on the CPU the lab's own, components/kernels/fused.py) or ``naive`` (the explicit matmul -> causal mask ->
softmax -> dropout -> matmul path). Both compute the same function.
Positional encodings that act inside attention reach it through ``positional.rotate`` and
``positional.attention_bias``; the attention never knows which encoding it has.
"""
from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from components.kernels import fused
from registry import ATTENTION

Impl = Literal["sdpa", "naive"]


def sdpa_attention(q, k, v, bias: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """q: (B, H, T, hd); k, v: (B, KV, T, hd) with H % KV == 0; bias: (H, T, T) with the causal
    mask folded in, or None.

    The fastest fused path for each case: SDPA's own kernels on CUDA and for inference; on the CPU
    (float32 or bf16) training goes through the lab's fused kernels, which SDPA lacks for attention dropout and
    ALiBi's bias (it falls back to its unfused math path, 2x slower at dropout 0.2):
    - float32 without a bias, context up to 384: the whole-head C kernel (fused.causal_attention_heads:
      strided heads as they are, grouped key/value heads unrepeated, O(T) memory, dropout included),
      1.2-1.8x SDPA's flash kernel and the blocked kernel there;
    - the rest (bf16, ALiBi, longer contexts): the blocked kernel (fused.causal_attention), which beat
      SDPA's flash kernel by ~25% at context 256 (it skips the masked blocks and keeps the softmax).
    Where the C loops are off, short float32 contexts without dropout or bias keep SDPA's flash kernel,
    which takes the heads' strided views as they are where the blocked kernel copies them into its layout.
    """
    if bias is None and q.requires_grad:  # float32 training up to fused.HEADS_MAX_T
        out = fused.causal_attention_heads(q, k, v, dropout_p)
        if out is not None:
            return out
    # without dropout or bias: only while its saved probabilities (~T^2 / 2 per head) stay small, and in
    # float32 only from ATTENTION_MIN_T on
    T = q.shape[2]
    short_fp32 = T < fused.ATTENTION_MIN_T and q.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    training = torch.is_grad_enabled() and q.requires_grad and T <= fused.ATTENTION_MAX_T and not short_fp32
    if (dropout_p > 0 or bias is not None or training) and fused.use_fused(q, "attention"):
        k, v = share_heads(k, v, q.shape[1])
        return fused.causal_attention(q, k, v, bias, dropout_p)
    grouped = q.shape[1] != k.shape[1]
    if grouped and expand_kv_heads(q.device.type, q.dtype, bias is not None):
        k, v = share_heads(k, v, q.shape[1])
        grouped = False
    if bias is None:  # the kernel builds the causal mask itself
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, enable_gqa=grouped)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout_p, enable_gqa=grouped)


def expand_kv_heads(device_type: str, dtype: torch.dtype, has_bias: bool) -> bool:
    """Whether grouped key/value heads are repeated before SDPA, for queries of this device and dtype.

    On CUDA only the flash kernel takes grouped heads (enable_gqa), and it refuses an additive bias
    (ALiBi) and float32; SDPA then falls back to its math kernel, which stores all B x H x T^2 scores.
    Repeating the heads first lets the memory-efficient kernel take those cases instead."""
    return device_type == "cuda" and (has_bias or dtype == torch.float32)


def share_heads(k: torch.Tensor, v: torch.Tensor, n_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, KV, T, hd) key/value heads repeated so each of n_heads query heads has its own."""
    if k.shape[1] == n_heads:
        return k, v
    return k.repeat_interleave(n_heads // k.shape[1], dim=1), v.repeat_interleave(n_heads // v.shape[1], dim=1)


def naive_attention(q, k, v, bias: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """The explicit path, step by step (same shapes as sdpa_attention)."""
    B, H, T, hd = q.shape
    k, v = share_heads(k, v, H)                                               # each of KV heads serves H // KV queries
    scores = (q @ k.transpose(-2, -1)) * hd ** -0.5                           # (B, H, T, T)
    if bias is not None:
        scores = scores + bias.to(scores.dtype)
    # The (T, T) mask is built per call, not cached per length: tiny next to the scores it masks.
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)       # True above the diagonal
    weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    weights = F.dropout(weights, p=dropout_p, training=dropout_p > 0)
    return weights @ v                                                        # (B, H, T, hd)


KERNELS = {"sdpa": sdpa_attention, "naive": naive_attention}


def with_head_size(dims: dict, attention: Any) -> dict:
    """dims plus head_dim, the width of the heads the attention spec `attention` builds (None: no heads)."""
    return dims | {"head_dim": ATTENTION.get(ATTENTION.split(attention)[0]).head_size(dims)}


class CausalSelfAttention(nn.Module):
    """Shared machinery: n_heads query heads over n_kv_heads key/value heads of head_dim each."""

    mixes_tokens = True  # a block adds this sub-layer

    def __init__(self, *, d_model: int, n_heads: int, n_kv_heads: int, dropout: float, impl: Impl) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, d_model // n_heads
        # One fused projection for q, k and v: for multi_head this is GPT-2's c_attn layout [q | k | v].
        self.qkv = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * self.head_dim)
        self.proj = nn.Linear(n_heads * self.head_dim, d_model)
        self.proj.residual_projection = True  # GPT-2 init scales it by 1/sqrt(residual branches)
        self.dropout = dropout
        self.resid_dropout = fused.Dropout(dropout)
        self.kernel = KERNELS[impl]

    def forward(self, x: torch.Tensor, positional: nn.Module) -> torch.Tensor:
        B, T, _ = x.shape
        sizes = [self.n_heads * self.head_dim] + [self.n_kv_heads * self.head_dim] * 2
        q, k, v = self.qkv(x).split(sizes, dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)        # (B, n_heads, T, head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)     # (B, n_kv_heads, T, head_dim)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)     # (B, n_kv_heads, T, head_dim)
        q, k = positional.rotate(q, k)
        y = self.kernel(q, k, v, positional.attention_bias(q), self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)     # (B, T, n_heads * head_dim)
        return self.resid_dropout(self.proj(y))

    @classmethod
    def head_size(cls, dims: dict) -> int | None:
        """How wide the heads are that this variant builds with these sizes (positional checks read it)."""
        return dims["d_model"] // dims["n_heads"]

    def flops_per_token(self, context_length: int) -> int:
        """Scores and weighted sum, forward and backward: 2 matmuls x 2 FLOPs x 3 passes, per head dim."""
        return 12 * self.n_heads * self.head_dim * context_length


@ATTENTION.register("none")
class NoAttention(nn.Module):
    """No attention sub-layer: each position sees only itself (the tutorial's first step: embedding + positions + MLP)."""

    mixes_tokens = False  # blocks leave the attention sub-layer (and its norm) out

    def __init__(self) -> None:
        super().__init__()

    @classmethod
    def head_size(cls, dims: dict) -> int | None:
        return None  # no heads

    def flops_per_token(self, context_length: int) -> int:
        return 0


@ATTENTION.register("single_head")
class SingleHead(CausalSelfAttention):
    """One attention head as wide as the model (the tutorial's masked self-attention)."""

    def __init__(self, *, d_model: int, dropout: float, impl: Impl = "sdpa") -> None:
        super().__init__(d_model=d_model, n_heads=1, n_kv_heads=1, dropout=dropout, impl=impl)

    @classmethod
    def head_size(cls, dims: dict) -> int | None:
        return dims["d_model"]  # model.n_heads does not apply


@ATTENTION.register("multi_head")
class MultiHead(CausalSelfAttention):
    """n_heads heads, each with its own queries, keys and values (Vaswani et al. 2017; GPT-2)."""

    def __init__(self, *, d_model: int, n_heads: int, dropout: float, impl: Impl = "sdpa") -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, n_kv_heads=n_heads, dropout=dropout, impl=impl)


@ATTENTION.register("multi_query")
class MultiQuery(CausalSelfAttention):
    """n_heads query heads sharing one key/value head (Shazeer 2019, "Fast Transformer Decoding")."""

    def __init__(self, *, d_model: int, n_heads: int, dropout: float, impl: Impl = "sdpa") -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, n_kv_heads=1, dropout=dropout, impl=impl)


@ATTENTION.register("grouped_query")
class GroupedQuery(CausalSelfAttention):
    """n_heads query heads in n_kv_heads groups, each group sharing a key/value head (Ainslie et al. 2023, GQA)."""

    def __init__(self, *, d_model: int, n_heads: int, dropout: float, impl: Impl = "sdpa",
                 n_kv_heads: int = 2) -> None:
        super().__init__(d_model=d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, dropout=dropout, impl=impl)

    @classmethod
    def check_dims(cls, dims: dict, options: dict) -> list[str]:
        n_heads, n_kv = dims["n_heads"], options["n_kv_heads"]
        if n_kv < 1 or n_heads % n_kv:
            return [f"n_kv_heads = {n_kv} must be a positive divisor of n_heads = {n_heads}"]
        return []
