"""Fused CPU training kernels: dropout, tanh-GELU, causal attention and the output layer's
cross-entropy, with fewer memory passes.

Each computes the function of the stock op it stands in for (to float rounding; dropout draws other
masks from the same distribution) with a hand-written backward that keeps only what it needs. They
serve the CPU in eager mode, in float32 and in bfloat16 (a bf16 tensor, or the CPU's bf16 autocast);
elsewhere (CUDA, compiled graphs) the stock ops run, because fused kernels exist there already.

bfloat16: the matmuls run in bf16 (oneDNN accumulates them in float32), everything between them in
float32 (softmax, the cross-entropy, GELU, the dropout scale; dk, dv and the head's weight gradient
summed over blocks in float32), and each tensor handed to a matmul or to the next layer is rounded
to bf16 once. So the activations between the matmuls of a sub-layer stay bf16 (half the memory
traffic) while the residual stream, the norms and the weights stay float32 as under plain autocast.
Each bf16 path can be switched off alone (settings.py; the bench's --without bf16_<kernel>).

Two levels: single-pass C loops (cpu_kernels.c, built once with the system compiler by c_loader.py)
and, where no compiler is found, the same algorithms as chains of torch ops; settings.py switches
either off. Why each (measured with `python -m experiments.bench --without ...` on a 2-core AVX2
EPYC; see the bench's notes):
- dropout: `bernoulli_` is ~2.5x slower than other draws and the stock op stores its mask; here the
  mask is a hash of (seed, index), regenerated in the backward.
- GELU, tanh form: `tanh` is slow here and 0.5 x (1 + tanh u) = x sigmoid(2u); one pass each way.
- attention: SDPA has no fused CPU kernel for dropout or an additive bias (ALiBi) and falls back to
  its math path (bernoulli, NaN checks, the full T x T matrix). Here queries go in blocks that skip
  the causal mask's upper triangle, and softmax + scale + mask + dropout is one pass each way.
- attention without a bias (float32 training, context <= 384): whole heads in C, transposed scores
  softmaxed down full vectors, only the log-sum-exp and the dropout seed kept; 1.2-1.8x SDPA's flash
  kernel and the blocked kernel at contexts 64-384 on a 2-core AVX-512 Xeon (with the C loops off,
  short contexts without dropout keep SDPA's flash kernel).
- output cross-entropy: with GPT-2's vocabulary the logits are the largest tensor of a small model;
  in blocks of rows they stay in cache, and softmax, loss and gradient are one pass (the
  seed-ladder's BPE rung stepped 2.5x faster: 684 -> 277 ms).
"""
from __future__ import annotations

import contextlib
import ctypes
import math

import torch
import torch.nn.functional as F
from torch import nn

from components.kernels import c_loader, chunked, settings

ATTENTION_CHUNK = 64  # queries per block: small enough to skip most of the masked triangle, big enough for the GEMMs
ATTENTION_MAX_T = 512  # longer contexts without dropout keep SDPA's flash kernel, whose memory is O(T)
ATTENTION_MIN_T = 128  # shorter float32 ones too: SDPA was faster at 32-96, the lab's kernel from 128 on
MATMUL_KERNELS = ("attention", "cross_entropy")  # under autocast these compute in its dtype, as the stock ops would


def kernel_dtype(x: torch.Tensor, kernel: str) -> torch.dtype | None:
    """The dtype the fused `kernel` (one of settings.BF16_KERNELS) computes x's op in, or None where the
    stock op serves: float32 for float32; bfloat16 for bf16 tensors and, for the kernels with matmuls,
    for any input under the CPU's bf16 autocast. CPU and eager mode only."""
    current = settings.current()
    if (not current.fused or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16)
            or torch.compiler.is_compiling()):
        return None
    dtype = x.dtype
    if kernel in MATMUL_KERNELS and torch.is_autocast_enabled("cpu"):
        if torch.get_autocast_dtype("cpu") != torch.bfloat16:
            return None
        dtype = torch.bfloat16
    return dtype if dtype == torch.float32 or kernel in current.bf16 else None


def use_fused(x: torch.Tensor, kernel: str) -> bool:
    return kernel_dtype(x, kernel) is not None


def c_lib():
    """The C loops, or None for their torch-op versions (switched off, or no compiler here)."""
    return c_loader.load() if settings.current().c_loops else None


def c_loop(lib, name: str, dtype: torch.dtype):
    """The C loop `name` for tensors of `dtype`: float32's, or its bf16 form (`name`_bf16)."""
    return getattr(lib, name if dtype == torch.float32 else f"{name}_bf16")


def cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in dtype; skips the ~5 us a no-op .to() costs, since the float32 steps of a small model feel it."""
    return t if t.dtype == dtype else t.to(dtype)


def no_autocast():
    """Inside a kernel every dtype is chosen explicitly: autocast must not recast its matmuls' inputs.
    (Entering autocast costs ~15 us: float32 steps, outside it, skip that.)"""
    return torch.autocast("cpu", enabled=False) if torch.is_autocast_enabled("cpu") else contextlib.nullcontext()


def draw_seed() -> int:
    """A 63-bit seed from torch's generator: the kernels' masks follow torch.manual_seed and resume."""
    return int(torch.empty((), dtype=torch.int64).random_())


def keep_threshold(p: float) -> int:
    """Elements whose 32-bit draw is below this are dropped: probability p to 2^-32."""
    return min(round(p * 2**32), 2**32 - 1)


def keep_mask(shape, p: float) -> torch.Tensor:
    """Torch-op fallback: 1/(1-p) where kept, 0 where dropped, in float32 (a bf16 1/(1-p) would be off
    by up to 0.4%), from 31-bit integer draws (integer random_ runs in parallel and ~1.4x faster than
    float rand on the CPU)."""
    bits = torch.empty(shape, dtype=torch.int32).random_()                        # uniform on [0, 2^31)
    return bits.ge_(round(p * 2**31)).to(torch.float32).mul_(1.0 / (1.0 - p))


def ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


# -- dropout -------------------------------------------------------------------------------------
class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        lib = c_lib()
        if lib is None:
            mask = keep_mask(x.shape, p)
            ctx.save_for_backward(mask)
            ctx.lib = None
            return (x * mask).to(x.dtype)
        x = x.contiguous()
        ctx.lib, ctx.seed, ctx.threshold, ctx.scale = lib, draw_seed(), keep_threshold(p), 1.0 / (1.0 - p)
        y = torch.empty_like(x)
        c_loop(lib, "dropout", x.dtype)(ptr(x), ptr(y), x.numel(), ctx.seed, ctx.threshold, ctx.scale)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.lib is None:
            (mask,) = ctx.saved_tensors
            return (grad * mask).to(grad.dtype), None
        grad = grad.contiguous()
        dx = torch.empty_like(grad)
        c_loop(ctx.lib, "dropout", grad.dtype)(ptr(grad), ptr(dx), grad.numel(), ctx.seed, ctx.threshold,
                                               ctx.scale)  # the same mask
        return dx, None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0:
        return x
    if use_fused(x, "dropout") and torch.is_grad_enabled() and x.requires_grad:
        return _Dropout.apply(x, p)
    return F.dropout(x, p, training=True)


class Dropout(nn.Dropout):
    """nn.Dropout with the fused CPU path (same module interface and state)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


# -- GELU, tanh approximation --------------------------------------------------------------------
_C = 2.0 * math.sqrt(2.0 / math.pi)  # 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2/pi) (x + 0.044715 x^3)
_A = 0.044715


class _TanhGELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        ctx.lib = c_lib()
        if ctx.lib is not None:
            y = torch.empty_like(x)
            c_loop(ctx.lib, "gelu_fwd", x.dtype)(ptr(x), ptr(y), x.numel())
            ctx.save_for_backward(x)
            return y
        # torch ops in float32: in-place chains on one fresh buffer (x * x would take a slow self-aliased path)
        xf = x.float()
        s = torch.square(xf).mul_(xf).mul_(_A * _C).add_(xf, alpha=_C).sigmoid_()  # sigmoid(C (x + A x^3))
        ctx.save_for_backward(x, s)
        return (xf * s).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        if ctx.lib is not None:
            (x,) = ctx.saved_tensors
            grad, dx = cast(grad.contiguous(), x.dtype), torch.empty_like(x)
            c_loop(ctx.lib, "gelu_bwd", x.dtype)(ptr(x), ptr(grad), ptr(dx), x.numel())
            return dx
        x, s = ctx.saved_tensors
        xf = x.float()
        # d/dx [x s(z)] = s + x s (1 - s) dz/dx, with dz/dx = C (1 + 3 A x^2)
        d = torch.square(xf).mul_(3 * _A * _C).add_(_C).mul_(xf).mul_(s)     # x s dz/dx
        d.sub_(d * s)                                                          # x s (1 - s) dz/dx
        return d.add_(s).mul_(grad).to(x.dtype)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    if use_fused(x, "gelu"):
        if torch.is_grad_enabled() and x.requires_grad:
            return _TanhGELU.apply(x)
        lib = c_lib()
        if lib is not None:  # evaluation and sampling: the forward loop alone
            x = x.contiguous()
            y = torch.empty_like(x)
            c_loop(lib, "gelu_fwd", x.dtype)(ptr(x), ptr(y), x.numel())
            return y
    return F.gelu(x, approximate="tanh")


# -- causal attention ----------------------------------------------------------------------------
_causal: dict[tuple, torch.Tensor] = {}


def causal_bias(T: int, like: torch.Tensor) -> torch.Tensor:
    """(T, T) additive mask, -inf above the diagonal: a slice of the largest one built so far for this
    device and dtype (one mask per device, not one per length)."""
    key = (like.device, like.dtype)
    if key not in _causal or _causal[key].shape[0] < T:
        _causal[key] = torch.full((T, T), float("-inf"), device=like.device, dtype=like.dtype).triu_(1)
    return _causal[key][:T, :T]


def chunks(T: int):
    """(start, end) of each block of queries; block [start, end) sees keys [0, end)."""
    return [(s, min(s + ATTENTION_CHUNK, T)) for s in range(0, T, ATTENTION_CHUNK)]


def softmax_chunk(q, k, bias, start: int, end: int, p: float, scale: float, lib):
    """(probs, dropped) of one block of queries, in q's dtype: softmax(q k^T scale + bias + causal mask)
    and its dropout. The scores come from a matmul in q's dtype; the softmax is always float32."""
    q_block, keys = q[:, start:end], k[:, :end].transpose(1, 2)
    if lib is None and q.dtype == torch.float32:  # the scale and the mask inside the matmul
        s = torch.baddbmm(bias[:, start:end, :end], q_block, keys, alpha=scale)
    else:
        s = torch.bmm(q_block, keys)                                           # (N, chunk, end)
        if lib is not None:  # scores -> (in place) probabilities, dropped, in one pass
            dropped = torch.empty_like(s) if p > 0 else s
            c_loop(lib, "attn_softmax", s.dtype)(
                ptr(s), ptr(dropped), s.shape[0] * s.shape[1], end - start, end, start, scale,
                draw_seed() if p > 0 else 0, keep_threshold(p), 1.0 / (1.0 - p), int(p > 0))
            return s, dropped
        s = s.float().mul_(scale).add_(bias[:, start:end, :end])
    probs = torch.softmax(s, dim=-1)
    dropped = keep_mask(probs.shape, p).mul_(probs) if p > 0 else probs
    return probs.to(q.dtype), dropped.to(q.dtype)


class _CausalAttention(torch.autograd.Function):
    """q, k, v: (N, T, hd) contiguous, float32 or bf16; bias: (N or 1, T, T) float32 with the causal -inf
    in it, or None for causal attention through the C kernels (which mask by position themselves)."""

    @staticmethod
    def forward(ctx, q, k, v, bias, p: float):
        scale = q.shape[-1] ** -0.5
        lib = c_lib() if bias is None else None
        outs, saved = [], []
        with no_autocast():
            for start, end in chunks(q.shape[1]):
                probs, dropped = softmax_chunk(q, k, bias, start, end, p, scale, lib)
                outs.append(torch.bmm(dropped, v[:, :end]))
                saved += [probs, dropped]
        ctx.save_for_backward(q, k, v, *saved)
        ctx.scale, ctx.lib = scale, lib
        return torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]

    @staticmethod
    def backward(ctx, grad):
        q, k, v, *saved = ctx.saved_tensors
        grad, lib = cast(grad.contiguous(), q.dtype), ctx.lib
        # dk and dv gather one product per block: summed in float32 (bf16 sums would lose bits per block)
        dq = torch.empty_like(q)
        dk, dv = (torch.zeros_like(t, dtype=torch.float32) for t in (k, v))
        for i, (start, end) in enumerate(chunks(q.shape[1])):
            probs, dropped = saved[2 * i], saved[2 * i + 1]                    # dropped = probs * mask / (1-p)
            g = grad[:, start:end]
            dv[:, :end] += torch.bmm(dropped.transpose(1, 2), g)  # (baddbmm_ into a strided slice loops per matrix)
            # softmax backward through the mask: ds = P (dP - rowsum(P dP)), dP = mask dD, so
            # P dP = dropped dD and ds = dropped dD - P rowsum(dropped dD)
            ds = torch.bmm(g, v[:, :end].transpose(1, 2))
            if lib is not None:  # in place, times the score scale
                c_loop(lib, "attn_softmax_bwd", ds.dtype)(ptr(ds), ptr(probs), ptr(dropped),
                                                          ds.shape[0] * ds.shape[1], end, ctx.scale)
            else:
                ds = ds.float().mul_(dropped)
                ds = ds.addcmul_(probs.float(), ds.sum(dim=-1, keepdim=True), value=-1).mul_(ctx.scale).to(q.dtype)
            dq[:, start:end] = torch.bmm(ds, k[:, :end])
            dk[:, :end] += torch.bmm(ds.transpose(1, 2), q[:, start:end])
        return dq, cast(dk, k.dtype), cast(dv, v.dtype), None, None


def causal_attention(q, k, v, bias: torch.Tensor | None, dropout_p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd) + bias), dropout, @ v; q: (B, H, T, hd), k, v: (B, H, T, hd)
    (key/value heads already shared out), bias: (H, T, T) with the causal mask in it, or None (causal).
    Computed in q's dtype, or under bf16 autocast in bf16 (the inputs rounded as the stock matmuls would
    round them); the masks stay float32."""
    B, H, T, hd = q.shape
    dtype = torch.bfloat16 if torch.is_autocast_enabled("cpu") else q.dtype   # callers have checked use_fused
    mask = None
    if bias is not None:
        mask = bias.float().repeat(B, 1, 1)                                    # (B * H, T, T), batch-major like q
    elif c_lib() is None:
        mask = causal_bias(T, torch.empty(0, device=q.device))[None]           # (1, T, T) float32, broadcast over B * H
    out = _CausalAttention.apply(*(cast(t, dtype).reshape(B * H, T, hd) for t in (q, k, v)), mask, dropout_p)
    return out.view(B, H, T, hd)


# -- causal attention without a bias: whole heads in C --------------------------------------------
HEADS_MAX_T = 384  # it beat SDPA's flash kernel and the blocked kernel at 64-448; at 512 without dropout it lost
HEADS_MIN_VECTOR = 8  # floats per vector register it was built with; 4-wide (no AVX) it lost to SDPA


def heads_lib(q: torch.Tensor):
    """The C library when causal_attention_heads serves q (CPU float32 training within HEADS_MAX_T,
    no autocast, the setting on, C loops built with wide enough vectors), else None."""
    if (q.shape[2] > HEADS_MAX_T or kernel_dtype(q, "attention") != torch.float32
            or not settings.current().heads_attention or torch.is_autocast_enabled("cpu") or not torch.is_grad_enabled()):
        return None
    lib = c_lib()
    return lib if lib is not None and lib.causal_attn_vector_width() >= HEADS_MIN_VECTOR else None


def head_strides(*tensors: torch.Tensor):
    """The [batch, head, position] strides of each (B, heads, T, hd) tensor, in elements, as a C array."""
    values = [n for t in tensors for n in t.stride()[:3]]
    return (ctypes.c_int64 * len(values))(*values)


def by_position(B: int, heads: int, T: int, hd: int, like: torch.Tensor) -> torch.Tensor:
    """A new (B, heads, T, hd) tensor laid out as (B, T, heads, hd): merging its heads is then free."""
    return like.new_empty(B, T, heads, hd).transpose(1, 2)


def check_memory(failed: int) -> None:
    if failed:
        raise MemoryError("the attention kernel could not allocate its per-thread work buffers")


class _HeadsAttention(torch.autograd.Function):
    """dropout(softmax(q k^T / sqrt(hd), causal), p) @ v one (batch row, key/value head) at a time in C
    (cpu_kernels.c: causal_attn_fwd / _bwd); q: (B, H, T, hd), k, v: (B, KV, T, hd), any strides with a
    contiguous last dimension. Saves each query's log-sum-exp and the mask's seed, nothing T x T."""

    @staticmethod
    def forward(ctx, q, k, v, p: float, lib):
        B, H, T, hd = q.shape
        q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
        out, lse = by_position(B, H, T, hd, q), q.new_empty(B, H, T)
        ctx.dropout = (draw_seed() if p > 0 else 0, keep_threshold(p), 1.0 / (1.0 - p), int(p > 0))
        check_memory(lib.causal_attn_fwd(ptr(q), ptr(k), ptr(v), ptr(out), ptr(lse), B, H, k.shape[1], T, hd,
                                         head_strides(q, k, v, out), hd ** -0.5, *ctx.dropout))
        ctx.save_for_backward(q, k, v, lse)
        ctx.lib = lib
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, lse = ctx.saved_tensors
        B, H, T, hd = q.shape
        KV = k.shape[1]
        grad = grad if grad.stride(-1) == 1 else grad.contiguous()
        dq, dk, dv = by_position(B, H, T, hd, q), by_position(B, KV, T, hd, k), by_position(B, KV, T, hd, v)
        check_memory(ctx.lib.causal_attn_bwd(ptr(q), ptr(k), ptr(v), ptr(lse), ptr(grad), ptr(dq), ptr(dk), ptr(dv),
                                             B, H, KV, T, hd, head_strides(q, k, v, grad),  # 4th unused
                                             head_strides(grad, dq, dk, dv), hd ** -0.5, *ctx.dropout))
        return dq, dk, dv, None, None


def causal_attention_heads(q, k, v, dropout_p: float) -> torch.Tensor | None:
    """Causal attention without a bias through the whole-head C kernel (grouped key/value heads as they
    are), or None where it does not serve (see heads_lib): the caller's kernel then runs."""
    lib = heads_lib(q)
    return None if lib is None else _HeadsAttention.apply(q, k, v, dropout_p, lib)


# -- output layer and cross-entropy --------------------------------------------------------------
CROSS_ENTROPY_CHUNK_BYTES = 8 << 20  # logits per block: stays in the last-level cache, under glibc's mmap threshold


def rows_per_chunk(vocab_size: int) -> int:
    return max(1, CROSS_ENTROPY_CHUNK_BYTES // (4 * vocab_size))


def _cross_entropy_blocks(x, weight, targets, gradient: bool):
    """Per block of rows of x: (the rows, their summed cross-entropy in float64, and with `gradient`
    their float32 logits turned in place into d CE / d logits, else possibly None). The logits come
    from a matmul in x's dtype (weight's must match); the softmax is always float32."""
    step, lib, targets = rows_per_chunk(weight.shape[0]), c_lib(), targets.contiguous().long()
    for start in range(0, x.shape[0], step):
        rows = slice(start, start + step)
        logits, ys = cast(x[rows] @ weight.t(), torch.float32), targets[rows]  # (rows, V), (rows,)
        if lib is not None:  # softmax, loss and gradient in one pass (the gradient costs nothing extra)
            losses = torch.empty(len(ys), dtype=torch.float32)
            lib.softmax_xent(ptr(logits), ptr(ys), ptr(losses), *logits.shape)
            yield rows, losses.sum(dtype=torch.float64), logits
        elif not gradient:
            yield rows, F.cross_entropy(logits, ys, reduction="sum").double(), None
        else:
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)                # (rows, 1)
            loss = (lse.squeeze(1) - logits.gather(1, ys[:, None]).squeeze(1)).sum(dtype=torch.float64)
            logits.sub_(lse).exp_().scatter_add_(1, ys[:, None], logits.new_full((len(ys), 1), -1.0))
            yield rows, loss, logits


def add_product(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """out += a @ b; a bf16 product is summed into a float32 `out` after its matmul."""
    if out.dtype == a.dtype:
        out.addmm_(a, b)
    else:
        out += a @ b


class _LinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(x_i W^T, y_i) for x: (N, d), W: (V, d), y: (N,), in blocks of rows, the matmuls in
    `dtype`; the gradients are formed in the forward (the loss ends the graph: its gradient is a
    scalar known up to the factor the backward brings), so the (N, V) logits, their log-softmax and
    its gradient never exist. dx and dW come out in x's and W's own dtypes."""

    @staticmethod
    def forward(ctx, x, weight, targets, dtype):
        with no_autocast():
            xc, wc = cast(x, dtype), cast(weight, dtype)
            dx, dw = torch.empty_like(x), torch.zeros_like(weight)
            total = torch.zeros((), dtype=torch.float64)
            for rows, loss, grad_logits in _cross_entropy_blocks(xc, wc, targets, gradient=True):
                total += loss
                g = cast(grad_logits, dtype)
                if dx.dtype == dtype:
                    torch.mm(g, wc, out=dx[rows])
                else:
                    dx[rows] = g @ wc
                add_product(dw, g.t(), xc[rows])
        ctx.save_for_backward(dx, dw)
        return (total / x.shape[0]).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        dx, dw = ctx.saved_tensors
        scale = grad / dx.shape[0]
        return dx * scale, dw * scale, None, None


@torch.no_grad()
def _blocked_cross_entropy(x, weight, targets, dtype) -> torch.Tensor:
    with no_autocast():
        blocks = _cross_entropy_blocks(cast(x, dtype), cast(weight, dtype), targets, gradient=False)
        total = sum(loss for _, loss, _ in blocks)
    return (total / x.shape[0]).to(x.dtype)


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(x @ weight.T, targets) (mean) for x: (N, d), weight: (V, d), targets: (N,).

    On the CPU the logits go in blocks of rows: a GPT-2 vocabulary makes them the largest tensor of a
    small model by far (batch 16 x 64 tokens x 50,257 = 206 MB, each pass of softmax, its backward
    and the zero-filled gradient a trip through main memory and fresh pages)."""
    dtype = kernel_dtype(x, "cross_entropy")
    if dtype is None:  # CUDA, compiled graphs, a kernel switched off: chunks of rows in torch ops (chunked.py)
        return chunked.linear_cross_entropy(x, weight, targets)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(x.contiguous(), weight, targets, dtype)
    return _blocked_cross_entropy(x, weight, targets, dtype)
