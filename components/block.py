"""Decoder blocks: where the norms sit around the attention and feed-forward sub-layers.

Every variant gets the same sub-layers (attention, feed-forward) and a norm factory, so the
variants differ only in norm placement. Residual dropout lives at the end of each sub-layer
(GPT-2's placement) in every variant. With attention ``none`` a block is its feed-forward part alone.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from registry import BLOCK


class Block(nn.Module):
    """Base: holds the sub-layers and their norms; a variant says where the norms sit (its forward),
    how many each sub-layer has, and whether the backbone adds a norm after the last block."""

    final_norm = True
    norms_per_sublayer = 1

    def __init__(self, *, attention: nn.Module, feedforward: nn.Module, make_norm: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.attention = attention if attention.mixes_tokens else None
        self.feedforward = feedforward
        self.norm = self.make_norms(make_norm)

    def make_norms(self, make_norm: Callable[[], nn.Module]) -> nn.Module:
        count = self.norms_per_sublayer * (1 + (self.attention is not None))
        return nn.ModuleList(make_norm() for _ in range(count))


@BLOCK.register("post")
class PostNorm(Block):
    """Norm after each residual add: x = norm(x + f(x)) (Vaswani et al. 2017; the tutorial's block)."""

    final_norm = False  # the last block's output is already normalised

    def forward(self, x: torch.Tensor, positional: nn.Module) -> torch.Tensor:
        if self.attention is not None:
            x = self.norm[0](x + self.attention(x, positional))
        return self.norm[-1](x + self.feedforward(x))


@BLOCK.register("pre")
class PreNorm(Block):
    """Norm on each sub-layer's input: x = x + f(norm(x)), final norm before the head (GPT-2; Xiong et al. 2020)."""

    def forward(self, x: torch.Tensor, positional: nn.Module) -> torch.Tensor:
        if self.attention is not None:
            x = x + self.attention(self.norm[0](x), positional)
        return x + self.feedforward(self.norm[-1](x))


@BLOCK.register("sandwich")
class SandwichNorm(Block):
    """Norm on each sub-layer's input and output: x = x + norm(f(norm(x))) (Ding et al. 2021, CogView)."""

    norms_per_sublayer = 2  # [in, out] for each sub-layer

    def forward(self, x: torch.Tensor, positional: nn.Module) -> torch.Tensor:
        if self.attention is not None:
            x = x + self.norm[1](self.attention(self.norm[0](x), positional))
        return x + self.norm[-1](self.feedforward(self.norm[-2](x)))


@BLOCK.register("parallel")
class ParallelBlock(Block):
    """Attention and MLP side by side on one norm: x = x + attn(norm(x)) + mlp(norm(x)) (Wang & Komatsuzaki 2021, GPT-J)."""

    def make_norms(self, make_norm: Callable[[], nn.Module]) -> nn.Module:
        return make_norm()  # one norm, shared by both sub-layers

    def forward(self, x: torch.Tensor, positional: nn.Module) -> torch.Tensor:
        h = self.norm(x)
        mixed = self.attention(h, positional) if self.attention is not None else 0
        return x + mixed + self.feedforward(h)
