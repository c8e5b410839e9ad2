"""The output layer and its cross-entropy in torch ops, for CUDA, bf16 autocast and compiled graphs
(where the fused CPU kernel of fused.py does not serve): the loss in chunks of rows, and the
vocabulary padded for the matmul on CUDA.

Chunks: the logits are the largest tensor of a GPT-2-sized model. Built whole, gpt2-124m at
32 x 1024 tokens holds its 50,257-wide logits in bf16, again in float32, their log-softmax and their
gradients: ~0.6 MB per token, ~20 GB. Here each chunk's logits, softmax and gradient live only while
that chunk is processed. The loss ends the graph, so its gradient is a scalar known up to the factor
the backward brings: the gradients of x and W are formed in the forward, and nothing of size
(tokens, vocabulary) is kept for the backward.

Padding: a vocabulary of 50,257 makes the logits' rows an odd number of bf16 elements, which keeps
cuBLAS off its fastest tensor-core kernels; on CUDA the output matrix is padded with zero rows to a
multiple of 64 (50,304, as nanoGPT does) for the matmul. The padded logits are set to -inf before
the softmax, so they take no probability, add nothing to the loss and get no gradient, and the logits
a caller sees (sampling included) are the true vocabulary's only. Parameters keep their true size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

VOCAB_MULTIPLE = {"cuda": 64}          # rows of the output matrix padded to a multiple of this, per device type
CHUNK_BYTES = {"cuda": 512 << 20}      # float32 logits per chunk, per device type ...
DEFAULT_CHUNK_BYTES = 32 << 20         # ... and elsewhere (the CPU under autocast or compile)


def vocab_multiple(device: torch.device) -> int:
    return VOCAB_MULTIPLE.get(device.type, 1)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The matmuls' dtype: autocast's where it is on for x's device, else x's own."""
    kind = x.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else x.dtype


def padded_weight(weight: torch.Tensor, multiple: int, dtype: torch.dtype) -> torch.Tensor:
    """(V', d): weight (V, d) cast to dtype, with zero rows up to V' = V rounded up to `multiple`."""
    w = weight.to(dtype)
    extra = -weight.shape[0] % multiple
    return F.pad(w, (0, 0, 0, extra)) if extra else w                       # (V', d)


def chunk_rows(device: torch.device, padded_vocab: int) -> int:
    return max(1, CHUNK_BYTES.get(device.type, DEFAULT_CHUNK_BYTES) // (4 * padded_vocab))


def linear_logits(x: torch.Tensor, weight: torch.Tensor, multiple: int | None = None) -> torch.Tensor:
    """x (..., d) @ weight (V, d)^T -> (..., V), the matmul done on the padded matrix."""
    multiple = vocab_multiple(x.device) if multiple is None else multiple
    if multiple == 1:
        return F.linear(x, weight)
    w = padded_weight(weight, multiple, compute_dtype(x))
    return F.linear(x.to(w.dtype), w)[..., :weight.shape[0]]                 # (..., V): the padding sliced off


def chunk_logits(xc: torch.Tensor, w: torch.Tensor, vocab: int) -> torch.Tensor:
    """(rows, V') float32 logits of a chunk, the padded columns -inf."""
    logits = (xc @ w.t()).float()                                             # (rows, V')
    if w.shape[0] > vocab:
        logits[:, vocab:] = float("-inf")
    return logits


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum_i CE(x_i W^T, y_i) for x: (N, d), W: (V, d), y: (N,), chunk by chunk; returns the sum of the
    losses (float64) and keeps only dx (N, d) and dW (V, d) for the backward."""

    @staticmethod
    def forward(ctx, x, weight, targets, multiple: int, rows: int | None, dtype: torch.dtype):
        vocab, n = weight.shape[0], x.shape[0]
        with torch.autocast(x.device.type, enabled=False):                    # the casts below are explicit
            w = padded_weight(weight.detach(), multiple, dtype)              # (V', d)
            xs = x.detach().to(dtype)                                         # (N, d)
            step = rows or chunk_rows(x.device, w.shape[0])
            dx = torch.empty_like(x)
            dw = torch.zeros(w.shape, dtype=torch.float32, device=x.device)   # (V', d)
            total = torch.zeros((), dtype=torch.float64, device=x.device)
            for start in range(0, n, step):
                xc, ys = xs[start:start + step], targets[start:start + step, None]  # (rows, d), (rows, 1)
                logits = chunk_logits(xc, w, vocab)                           # (rows, V')
                lse = torch.logsumexp(logits, dim=-1, keepdim=True)           # (rows, 1)
                total += (lse - logits.gather(1, ys)).sum(dtype=torch.float64)
                grad = logits.sub_(lse).exp_().scatter_add_(1, ys, logits.new_full(ys.shape, -1.0))
                grad = grad.to(dtype)                                         # softmax - one-hot, (rows, V')
                dx[start:start + step] = grad @ w                             # (rows, d)
                dw += (grad.t() @ xc).float()                                 # (V', d)
        ctx.save_for_backward(dx, dw[:vocab].to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad):
        dx, dw = ctx.saved_tensors
        return dx * grad.to(dx.dtype), dw * grad.to(dw.dtype), None, None, None, None


@torch.no_grad()
def _chunked_loss_sum(x, weight, targets, multiple: int, rows: int | None, dtype: torch.dtype) -> torch.Tensor:
    vocab = weight.shape[0]
    with torch.autocast(x.device.type, enabled=False):
        w = padded_weight(weight, multiple, dtype)                             # (V', d)
        xs, step = x.to(dtype), rows or chunk_rows(x.device, w.shape[0])
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for start in range(0, x.shape[0], step):
            logits = chunk_logits(xs[start:start + step], w, vocab)           # (rows, V')
            total += F.cross_entropy(logits, targets[start:start + step], reduction="sum").double()
    return total


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         multiple: int | None = None, rows: int | None = None) -> torch.Tensor:
    """F.cross_entropy(x @ weight.T, targets) (mean, float32) for x: (N, d), weight: (V, d),
    targets: (N,), in chunks of `rows` rows (default: CHUNK_BYTES of float32 logits), the vocabulary
    padded to `multiple` (default: VOCAB_MULTIPLE of x's device) for the matmul."""
    multiple = vocab_multiple(x.device) if multiple is None else multiple
    dtype, targets = compute_dtype(x), targets.long()
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        total = _ChunkedLinearCrossEntropy.apply(x, weight, targets, multiple, rows, dtype)
    else:
        total = _chunked_loss_sum(x, weight, targets, multiple, rows, dtype)
    return (total / x.shape[0]).float()
