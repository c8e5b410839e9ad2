"""Output heads: hidden states -> next-token logits, and the training loss straight from the hidden states."""
from __future__ import annotations

import torch
from torch import nn

from components.kernels import chunked, fused
from registry import HEAD


class LinearHead(nn.Module):
    """Shared: logits = x W^T with W: (vocab_size, d_model), and the loss computed without holding
    every logit at once (components/kernels/: fused.py on the CPU, chunked.py elsewhere). On CUDA the
    matmul runs on W padded to a multiple of 64 rows; the logits returned are the vocabulary's own."""

    weight: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return chunked.linear_logits(x, self.weight)                           # (B, T, vocab_size)

    def loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (nats/token) of the next-token logits of x (B, T, d) against targets (B, T)."""
        return fused.linear_cross_entropy(x.flatten(0, 1), self.weight, targets.flatten())  # (B * T, d)


@HEAD.register("tied")
class TiedHead(LinearHead):
    """Output weight is the token-embedding weight (Press & Wolf 2017; GPT-2)."""

    def __init__(self, *, embedding: nn.Embedding) -> None:
        super().__init__()
        self.weight = embedding.weight  # the same Parameter: one storage, trained by both uses


@HEAD.register("untied")
class UntiedHead(LinearHead):
    """A separate output matrix, no bias."""

    def __init__(self, *, d_model: int, vocab_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_model, vocab_size, bias=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight
