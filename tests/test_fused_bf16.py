"""The fused CPU kernels' bfloat16 paths compute what float32 computes, within bf16's rounding.

Each reference is the float32 computation on the same (bf16-representable) inputs, so what is
measured is the kernels' own error: one rounding per stored result, ~2^-9 relative, plus what a bf16
matmul adds. The checks hold on any CPU: without bf16 units the matmuls are emulated, but they round
the same way.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from components.attention import naive_attention, sdpa_attention
from components.kernels import c_loader, fused, settings
from components.positional import ALiBi, alibi_mask

BF16 = torch.bfloat16
BF16_EPS = 2.0 ** -8  # bf16's spacing at 1: a result rounded once is within half of it, relative


@pytest.fixture(params=["c", "torch"])
def path(request):
    if request.param == "c" and c_loader.load() is None:
        pytest.skip("no C compiler: the torch-op path serves")
    with settings.using(c_loops=request.param == "c"):
        yield request.param


def bf16_values(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    """float32 values that bf16 holds exactly."""
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).to(BF16).float()


def grads_of(f, inputs, grad_out, dtype=None):
    """(output, input gradients) of f, its inputs first cast to dtype (kept float32 when None)."""
    leaves = [t.detach().to(dtype or t.dtype).requires_grad_() for t in inputs]
    out = f(*leaves)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), [t.grad for t in leaves]


def within(actual: torch.Tensor, expected: torch.Tensor, rel: float) -> bool:
    """Every element within rel of the expected tensor's largest magnitude."""
    return (actual.float() - expected.float()).abs().max().item() <= rel * expected.abs().max().item()


def test_bf16_gelu_rounds_the_float32_result_once(path):
    x = bf16_values(100_000, seed=0, scale=4)
    grad = bf16_values(100_000, seed=1)
    out, (dx,) = grads_of(fused.gelu_tanh, [x], grad, BF16)
    ref, (ref_dx,) = grads_of(lambda t: F.gelu(t, approximate="tanh"), [x], grad)
    assert out.dtype == dx.dtype == BF16
    # rtol: one rounding; atol: torch's tanh form loses float32 digits to cancellation at large negative x
    assert torch.allclose(out.float(), ref, rtol=BF16_EPS, atol=1e-5)
    assert torch.allclose(dx.float(), ref_dx, rtol=BF16_EPS, atol=1e-5)
    with torch.no_grad():  # evaluation: the C forward alone, or torch's own bf16 GELU
        assert torch.allclose(fused.gelu_tanh(x.to(BF16)).float(), ref, rtol=BF16_EPS, atol=1e-5)


def test_bf16_dropout_draws_float32s_mask_and_rounds_to_nearest_even(path):
    x = bf16_values(300_000, seed=2)
    x[x == 0] = 1.0
    results = {}
    for dtype in (torch.float32, BF16):
        leaf = x.to(dtype, copy=True).requires_grad_()
        torch.manual_seed(3)
        y = fused._Dropout.apply(leaf, 0.2)
        y.backward(torch.ones_like(y))
        results[dtype] = (y.detach(), leaf.grad)
    (y32, g32), (y16, g16) = results[torch.float32], results[BF16]
    assert y16.dtype == g16.dtype == BF16
    assert torch.equal(y16 != 0, y32 != 0) and torch.equal(g16 != 0, g32 != 0)  # the same mask
    # x * 1.25 needs two more bits than bf16 has: ties occur, and must round as torch rounds
    assert torch.equal(y16, y32.to(BF16)) and torch.equal(g16, g32.to(BF16))
    assert (y16 != 0).float().mean().item() == pytest.approx(0.8, abs=0.005)


@pytest.mark.parametrize("T", [16, 100, 200])
@pytest.mark.parametrize("alibi", [False, True])
def test_bf16_attention_under_autocast_matches_float32(path, T, alibi):
    """As the model calls it: float32 q, k, v under bf16 autocast (the kernel rounds them to bf16)."""
    q, k, v = (bf16_values(2, 4, T, 16, seed=T + i) for i in range(3))
    grad = bf16_values(2, 4, T, 16, seed=T + 3)
    bias = ALiBi().attention_bias(q) if alibi else None

    def attention(q, k, v):
        with torch.autocast("cpu", dtype=BF16):
            return fused.causal_attention(q, k, v, bias, 0.0)

    out, grads = grads_of(attention, [q, k, v], grad)
    ref, ref_grads = grads_of(lambda q, k, v: naive_attention(q, k, v, bias, 0.0), [q, k, v], grad)
    assert out.dtype == BF16 and all(g.dtype == torch.float32 for g in grads)
    assert within(out, ref, 2e-2)
    for g, r in zip(grads, ref_grads):
        assert within(g, r, 2e-2)


def test_alibi_bias_reaches_the_kernels_in_float32_for_bf16_queries(monkeypatch):
    """bf16 queries (a linear's output under autocast): the bias stays the float32 table (in bf16, 512
    positions away on a steep head, it was off by up to 0.5); the stock kernels take it in their dtype."""
    alibi = ALiBi()
    alibi.prepare(n_heads=4, head_dim=8, context_length=512)
    q, k, v = (torch.randn(1, 4, 512, 8).to(BF16) for _ in range(3))
    bias = alibi.attention_bias(q)
    assert bias.dtype == torch.float32 and torch.equal(bias, alibi_mask(4, 512))
    seen = []
    monkeypatch.setattr(fused, "causal_attention", lambda q, k, v, bias, p: seen.append(bias.dtype) or q)
    sdpa_attention(q.detach().requires_grad_(), k, v, bias, 0.0)
    assert seen == [torch.float32]
    monkeypatch.undo()
    with torch.no_grad(), settings.using(fused=False):  # the stock kernels: SDPA, the explicit path, in bf16
        out, ref = sdpa_attention(q, k, v, bias, 0.0), naive_attention(q, k, v, bias, 0.0)
    assert out.dtype == ref.dtype == BF16 and within(out.float(), ref.float(), 2e-2)


def test_bf16_attention_fuses_float32s_dropout_mask(path):
    """With dropout the bf16 kernel drops what the float32 kernel drops for the same seed."""
    q, k, v = (bf16_values(1, 2, 150, 8, seed=10 + i) for i in range(3))
    grad = bf16_values(1, 2, 150, 8, seed=13)
    runs = {}
    for dtype in (torch.float32, BF16):
        torch.manual_seed(5)
        runs[dtype] = grads_of(lambda q, k, v: fused.causal_attention(q, k, v, None, 0.3), [q, k, v], grad, dtype)
    (out32, grads32), (out16, grads16) = runs[torch.float32], runs[BF16]
    assert out16.dtype == BF16 and within(out16, out32, 2e-2)
    for g16, g32 in zip(grads16, grads32):
        assert g16.dtype == BF16 and within(g16, g32, 2e-2)


@pytest.mark.parametrize("vocab", [65, 50257])
def test_bf16_cross_entropy_under_autocast_matches_float32(path, vocab, monkeypatch):
    monkeypatch.setattr(fused, "CROSS_ENTROPY_CHUNK_BYTES", 4 * vocab * 7)  # blocks of 7 rows: a ragged last one
    x, weight = bf16_values(30, 16, seed=vocab), bf16_values(vocab, 16, seed=vocab + 1, scale=0.3)
    targets = torch.randint(vocab, (30,), generator=torch.Generator().manual_seed(0))
    one = torch.tensor(1.0)

    def loss(x, w):
        with torch.autocast("cpu", dtype=BF16):
            return fused.linear_cross_entropy(x, w, targets)

    out, grads = grads_of(loss, [x, weight], one)
    ref, ref_grads = grads_of(lambda x, w: F.cross_entropy(x @ w.t(), targets), [x, weight], one)
    assert out.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)  # x's and W's own
    assert out.item() == pytest.approx(ref.item(), rel=2e-3)
    for g, r in zip(grads, ref_grads):
        assert within(g, r, 2e-2)
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        assert fused.linear_cross_entropy(x, weight, targets).item() == pytest.approx(out.item(), rel=1e-6)


def test_bf16_nans_stay_nans(path):
    x = torch.tensor([float("nan"), 1.0], dtype=BF16)
    assert torch.isnan(fused._TanhGELU.apply(x.clone().requires_grad_())[0])
    torch.manual_seed(0)
    assert torch.isnan(fused._Dropout.apply(x.repeat(64).requires_grad_(), 0.01)[::2]).all()
    q = torch.randn(1, 1, 4, 8, dtype=BF16)
    q[0, 0, 2, 0] = float("nan")
    k, v = torch.randn(1, 1, 4, 8, dtype=BF16), torch.randn(1, 1, 4, 8, dtype=BF16)
    out = fused.causal_attention(q.requires_grad_(), k, v, None, 0.0)
    assert torch.isnan(out[0, 0, 2]).all() and not torch.isnan(out[0, 0, :2]).any()


def tiny_model(dropout: float = 0.0):
    from components.model import GPT
    from experiments.schema import ModelConfig
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=65, d_model=32, n_layers=2, n_heads=2, context_length=32, dropout=dropout))


def loss_and_grads(model, idx, targets, dtype):
    model.zero_grad()
    with torch.autocast("cpu", dtype=BF16, enabled=dtype == BF16):
        _, loss = model(idx, targets, return_logits=False)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_a_model_step_in_bf16_matches_float32_with_the_fused_kernels_and_with_stock_ops():
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    idx, targets = torch.randint(65, (4, 32), generator=g), torch.randint(65, (4, 32), generator=g)
    ref_loss, ref_grads = loss_and_grads(model, idx, targets, torch.float32)
    for fused_on in (True, False):
        with settings.using(fused=fused_on):
            loss, grads = loss_and_grads(model, idx, targets, BF16)
        assert loss == pytest.approx(ref_loss, rel=5e-3), fused_on
        for name, grad in grads.items():
            assert within(grad, ref_grads[name], 3e-2), (fused_on, name)


def test_bf16_training_follows_float32_training():
    """Forty AdamW steps with dropout: the bf16 run's loss stays beside the float32 run's."""
    from experiments.optim import make_optimizer
    from experiments.schema import TrainSettings
    losses = {}
    for dtype in (torch.float32, BF16):
        model = tiny_model(dropout=0.1)
        optimizer = make_optimizer(model, TrainSettings(lr=3e-3), torch.device("cpu"))
        g = torch.Generator().manual_seed(2)
        for _ in range(40):
            idx = torch.randint(8, (8, 32), generator=g)  # a learnable stream: next token = this + 1 mod 8
            losses[dtype], _ = loss_and_grads(model, idx, (idx + 1) % 8, dtype)
            optimizer.step()
    assert losses[torch.float32] < 1.5  # it learned (log 65 = 4.17 at the start)
    assert losses[BF16] == pytest.approx(losses[torch.float32], abs=0.02)
