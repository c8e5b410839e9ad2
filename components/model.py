"""The backbone: token embedding -> positional -> dropout -> blocks -> final norm -> head.

It builds every part through the registries and never looks at a component's name. Its config is
a `ModelConfig` (experiments/schema.py: the spec's model fields, with their defaults, plus the
vocabulary size); any object with those fields and `dims()` will do.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from components import attention, block, feedforward, head, norm, positional  # noqa: F401  (registers)
from components.attention import with_head_size
from components.kernels import fused
from registry import ATTENTION, BLOCK, FEEDFORWARD, HEAD, NORM, POSITIONAL

# Presets are data: sizes and, where a preset stands for a known model, its components.
# Parameter counts are for a 65-symbol char vocabulary (tiny shakespeare) unless stated.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny":            dict(d_model=64, n_layers=2, n_heads=4, context_length=64),     # 0.11M
    "small":           dict(d_model=128, n_layers=4, n_heads=4, context_length=128),   # 0.82M
    "nanogpt-cpu":     dict(d_model=128, n_layers=4, n_heads=4, context_length=64),    # 0.81M
    "shakespeare-cpu": dict(d_model=384, n_layers=6, n_heads=6, context_length=256, dropout=0.2),  # 10.77M
    "seed-final":      dict(d_model=512, n_layers=1, n_heads=4, context_length=512, positional="sinusoidal",
                            block="post", head="tied"),                                # 3.19M
    "gpt2-124m":       dict(d_model=768, n_layers=12, n_heads=12, context_length=1024, positional="learned",
                            block="pre", head="tied"),                                 # 124,439,808 with gpt2 BPE
}


class GPT(nn.Module):
    """A decoder-only transformer assembled from registered components."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config, dims = config, config.dims()
        self.context_length = config.context_length
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.positional = POSITIONAL.build(config.positional, with_head_size(dims, config.attention),
                                           path="model.positional")
        self.dropout = fused.Dropout(config.dropout)
        self.blocks = nn.ModuleList(self._block(dims) for _ in range(config.n_layers))
        attention = self.blocks[0].attention  # every layer's has the same sizes; None without attention
        if attention is not None:  # the positional's tables, built once here (no cache filled in forward)
            self.positional.prepare(n_heads=attention.n_heads, head_dim=attention.head_dim,
                                    context_length=config.context_length)
        self.final_norm = NORM.build(config.norm, dims, "model.norm") if self.blocks[0].final_norm else nn.Identity()
        self.head = HEAD.build(config.head, dims | {"embedding": self.token_embedding}, path="model.head")
        if config.init == "gpt2":
            # GPT-2 scales each residual projection by 1/sqrt(N), N the residual branches: 2 per block there,
            # 1 in blocks without attention (attention: none)
            self.residual_branches = sum(getattr(m, "residual_projection", False) for m in self.modules())
            self.apply(self._gpt2_init)

    def _block(self, dims: dict[str, Any]) -> nn.Module:
        c = self.config
        return BLOCK.build(c.block, dims | {
            "attention": ATTENTION.build(c.attention, dims, path="model.attention"),
            "feedforward": FEEDFORWARD.build(c.feedforward, dims, path="model.feedforward"),
            "make_norm": lambda: NORM.build(c.norm, dims, path="model.norm"),
        }, path="model.block")

    def _gpt2_init(self, module: nn.Module) -> None:
        """N(0, 0.02) weights and embeddings (nanoGPT's and Hugging Face's GPT-2 init; OpenAI's own code drew the
        position table from N(0, 0.01)), zero biases; residual projections scaled by 1/sqrt(residual branches),
        which is GPT-2's 1/sqrt(2 * n_layers) for blocks of attention and MLP (Radford et al. 2019, section 2.3)."""
        if isinstance(module, nn.Linear):
            scale = 1 / math.sqrt(self.residual_branches) if getattr(module, "residual_projection", False) else 1.0
            nn.init.normal_(module.weight, mean=0.0, std=0.02 * scale)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # -- forward ------------------------------------------------------------------------------
    def hidden(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, d_model) final hidden states."""
        T = idx.shape[1]
        if T > self.context_length:
            raise ValueError(f"sequence of {T} tokens is longer than context_length = {self.context_length}")
        x = self.dropout(self.positional(self.token_embedding(idx)))         # (B, T, d_model)
        for layer in self.blocks:
            x = layer(x, self.positional)
        return self.final_norm(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, return_logits: bool = True):
        """Logits (B, T, vocab) and, given targets (B, T), the mean cross-entropy in nats/token.
        Training passes return_logits=False: the head may then compute the loss without ever holding
        all the logits (None is returned for them), which is faster for large vocabularies."""
        hidden = self.hidden(idx)                                              # (B, T, d_model)
        head_loss = getattr(self.head, "loss", None)  # optional: a head without one gets the plain path
        if targets is not None and not return_logits and head_loss is not None:
            return None, head_loss(hidden, targets)
        logits = self.head(hidden)                                             # (B, T, vocab_size)
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None,
                 stop_token: int | None = None) -> torch.Tensor:
        """Append up to max_new_tokens tokens to idx (B, T); temperature 0 is greedy; only the last
        context_length tokens are fed back, so any length is fine. With `stop_token`, stop once every
        row has drawn it (a row that has keeps drawing until then: cut each row at its first one)."""
        was_training = self.training
        self.eval()
        stopped = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)   # (B,)
        for _ in range(max_new_tokens):
            window = idx[:, -self.context_length:]                             # (B, <= context_length)
            logits = self.head(self.hidden(window)[:, -1]).float()             # (B, vocab_size)
            if not bool(logits.isfinite().all()):  # weights that overflow (a run about to diverge)
                raise FloatingPointError("the model's next-token logits are not finite: it cannot be sampled")
            if temperature == 0:
                next_token = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k:
                    kth = logits.topk(min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                next_token = torch.multinomial(logits.softmax(dim=-1), 1, generator=generator)
            idx = torch.cat([idx, next_token], dim=1)                          # (B, T + 1)
            if stop_token is not None:
                stopped |= next_token[:, 0] == stop_token
                if bool(stopped.all()):
                    break
        self.train(was_training)
        return idx

    # -- accounting ---------------------------------------------------------------------------
    def num_params(self) -> int:
        """Trainable parameters, each shared one (a tied head) counted once."""
        return sum(p.numel() for p in self.parameters())

    def matmul_params(self) -> int:
        """N of the 6 N FLOPs rule: every parameter but the lookup tables (position tables, and the token
        embedding unless the head reuses it as its output matrix), as Kaplan et al. count non-embedding
        parameters: the matmuls' matrices plus their biases and the norms' gains (1-3% at d_model 32-128)."""
        lookups = [p for p in self.positional.parameters()]
        if not any(p is self.token_embedding.weight for p in self.head.parameters()):
            lookups.append(self.token_embedding.weight)
        return self.num_params() - sum(p.numel() for p in lookups)

    def flops_per_token(self) -> int:
        """Training FLOPs per token, forward + backward: 6 * N + attention.

        N = matmul_params() (Kaplan et al. 2020); attention = 12 * n_layers * d_attn * context_length
        for the score and weighted-sum matmuls at full context (PaLM, Chowdhery et al. 2022, app. B).
        """
        attention_flops = sum(layer.attention.flops_per_token(self.context_length)
                              for layer in self.blocks if layer.attention is not None)
        return 6 * self.matmul_params() + attention_flops
