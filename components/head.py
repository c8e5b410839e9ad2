"""Output heads: hidden states -> next-token logits."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from registry import HEAD


@HEAD.register("tied")
class TiedHead(nn.Module):
    """Output weight is the token-embedding weight (Press & Wolf 2017; GPT-2)."""

    def __init__(self, *, embedding: nn.Embedding) -> None:
        super().__init__()
        self.weight = embedding.weight  # the same Parameter: one storage, trained by both uses

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)                                        # (B, T, vocab_size)


@HEAD.register("untied")
class UntiedHead(nn.Module):
    """A separate output matrix, no bias."""

    def __init__(self, *, d_model: int, vocab_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)                                                  # (B, T, vocab_size)
