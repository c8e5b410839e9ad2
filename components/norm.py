"""Normalisation layers, built fresh for every place a block puts one."""
from __future__ import annotations

from typing import Annotated

from torch import nn

from registry import NORM, Range

Epsilon = Annotated[float, Range(0, low_open=True)]  # added to the variance: 0 or less divides by zero


@NORM.register("layernorm")
class LayerNorm(nn.LayerNorm):
    """Layer normalisation with a learned gain and bias (Ba et al. 2016; GPT-2)."""

    def __init__(self, *, d_model: int, eps: Epsilon = 1e-5, bias: bool = True) -> None:
        super().__init__(d_model, eps=eps, bias=bias)


@NORM.register("rmsnorm")
class RMSNorm(nn.RMSNorm):
    """Root-mean-square normalisation: no centring, no bias (Zhang & Sennrich 2019)."""

    def __init__(self, *, d_model: int, eps: Epsilon = 1e-6) -> None:
        super().__init__(d_model, eps=eps)


@NORM.register("none")
class NoNorm(nn.Identity):
    """No normalisation: the input passes through unchanged."""

    def __init__(self) -> None:
        super().__init__()
