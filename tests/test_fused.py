"""The fused CPU kernels compute what the stock ops compute, through the C loops and the torch-op fallback."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from components.kernels import c_loader, fused, settings
from components.attention import naive_attention, share_heads
from components.positional import ALiBi

PATHS = ["c", "torch"]


@pytest.fixture(params=PATHS)
def path(request):
    if request.param == "c" and c_loader.load() is None:
        pytest.skip("no C compiler: the torch-op path serves")
    with settings.using(c_loops=request.param == "c"):
        yield request.param


def with_grads(f, *inputs, seed=1):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    out = f(*inputs)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)))
    return out.detach(), [t.grad for t in inputs]


@pytest.mark.parametrize("T", [16, 64, 100, 200])
@pytest.mark.parametrize("kv_heads", [4, 1])
@pytest.mark.parametrize("alibi", [False, True])
def test_causal_attention_matches_the_explicit_path(path, T, kv_heads, alibi):
    g = torch.Generator().manual_seed(T)
    q = torch.randn(2, 4, T, 16, generator=g)
    k, v = (torch.randn(2, kv_heads, T, 16, generator=g) for _ in range(2))
    bias = ALiBi().attention_bias(q) if alibi else None
    out, grads = with_grads(lambda q, k, v: fused.causal_attention(q, *share_heads(k, v, 4), bias, 0.0), q, k, v)
    ref, ref_grads = with_grads(lambda q, k, v: naive_attention(q, k, v, bias, 0.0), q, k, v)
    assert torch.allclose(out, ref, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-4)


def test_attention_dropout_backward_matches_finite_differences(path):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 80, 8, generator=g) for _ in range(3))
    probe = torch.randn(1, 2, 80, 8, generator=g)

    def loss(q):
        torch.manual_seed(5)  # the same dropout mask in every call
        return (fused.causal_attention(q, k, v, None, 0.3) * probe).sum()

    q1 = q.clone().requires_grad_()
    loss(q1).backward()
    for index in [(0, 0, 3, 1), (0, 1, 70, 5)]:
        dq = torch.zeros_like(q)
        dq[index] = 1e-2
        numeric = (loss(q + dq) - loss(q - dq)) / 2e-2
        assert numeric.item() == pytest.approx(q1.grad[index].item(), abs=2e-3)


def test_tanh_gelu_matches_torch_forward_and_backward(path):
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(0)) * 4
    x[:4] = torch.tensor([0.0, -60.0, 60.0, 1e-30])
    out, (grad,) = with_grads(fused._TanhGELU.apply, x)
    ref, (ref_grad,) = with_grads(lambda t: F.gelu(t, approximate="tanh"), x)
    assert torch.allclose(out, ref, atol=1e-6, rtol=1e-5)
    assert torch.allclose(grad, ref_grad, atol=1e-5, rtol=1e-4)


def test_tanh_gelu_without_grad_matches_torch(path):
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 4
    with torch.no_grad():
        assert torch.allclose(fused.gelu_tanh(x), F.gelu(x, approximate="tanh"), atol=1e-6, rtol=1e-5)


def test_a_nan_stays_a_nan(path):
    x = torch.tensor([float("nan"), 1.0])
    assert torch.isnan(fused._TanhGELU.apply(x.clone().requires_grad_())[0])
    q = torch.randn(1, 1, 4, 8)
    q[0, 0, 2, 0] = float("nan")
    out = fused.causal_attention(q.requires_grad_(), torch.randn(1, 1, 4, 8), torch.randn(1, 1, 4, 8), None, 0.0)
    assert torch.isnan(out[0, 0, 2]).all()


def test_dropout_keeps_one_minus_p_scales_and_backpropagates_its_mask(path):
    x = torch.randn(400_000).requires_grad_()
    torch.manual_seed(3)
    y = fused._Dropout.apply(x, 0.2)
    y.backward(torch.ones_like(y))
    kept = y != 0
    assert kept.float().mean().item() == pytest.approx(0.8, abs=0.005)
    assert torch.allclose(y[kept], x[kept] * 1.25)
    assert torch.equal(x.grad != 0, kept) and torch.allclose(x.grad[kept], torch.tensor(1.25))
    torch.manual_seed(3)
    assert torch.equal(fused._Dropout.apply(x, 0.2), y)  # masks follow torch's seed (so runs resume exactly)


def test_the_kernels_serve_float32_and_bf16_and_the_stock_ops_the_rest():
    x = torch.randn(8, requires_grad=True)
    assert all(fused.kernel_dtype(x, k) == torch.float32 for k in settings.BF16_KERNELS)
    assert all(fused.kernel_dtype(x.bfloat16(), k) == torch.bfloat16 for k in settings.BF16_KERNELS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        # the kernels with matmuls compute in autocast's dtype; elementwise ones in their input's
        assert fused.kernel_dtype(x, "attention") == fused.kernel_dtype(x, "cross_entropy") == torch.bfloat16
        assert fused.kernel_dtype(x, "gelu") == fused.kernel_dtype(x, "dropout") == torch.float32
        with settings.using(bf16=settings.BF16_KERNELS - {"attention"}):  # one bf16 path off: its stock op
            assert fused.kernel_dtype(x, "attention") is None
            assert fused.kernel_dtype(x, "cross_entropy") == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.float16):
        assert not fused.use_fused(x, "attention")
    assert not fused.use_fused(x.double(), "gelu") and not fused.use_fused(x.half(), "gelu")
    with settings.using(fused=False):
        assert not fused.use_fused(x, "gelu") and not fused.use_fused(x.bfloat16(), "gelu")
    assert fused.use_fused(x, "gelu")  # the setting is back once the block ends


def needs_heads_kernel():
    lib = c_loader.load()
    if lib is None or lib.causal_attn_vector_width() < fused.HEADS_MIN_VECTOR:
        pytest.skip("the whole-head attention kernel does not serve this machine (no C compiler or no AVX)")


@pytest.mark.parametrize("T, dropout, dtype, c_loops, kernel", [
    (64, 0.0, torch.float32, True, "heads"),      # float32 without a bias: the whole-head C kernel
    (64, 0.1, torch.float32, True, "heads"),      # with dropout too
    (fused.HEADS_MAX_T, 0.0, torch.float32, True, "heads"),
    (fused.HEADS_MAX_T + 1, 0.0, torch.float32, True, "blocked"),  # longer: the lab's blocked kernel
    (64, 0.0, torch.bfloat16, True, "blocked"),   # bf16 keeps the lab's blocked kernel at any length
    (64, 0.0, torch.float32, False, "sdpa"),      # C loops off: SDPA's flash kernel below ATTENTION_MIN_T
    (64, 0.1, torch.float32, False, "blocked"),   # but not with dropout: SDPA has no fused CPU kernel for it
    (128, 0.0, torch.float32, False, "blocked"),  # and the blocked kernel from ATTENTION_MIN_T on
])
def test_cpu_training_attention_picks_the_kernel_measured_faster(monkeypatch, T, dropout, dtype, c_loops, kernel):
    import components.attention as attention
    if kernel == "heads":
        needs_heads_kernel()
    calls = []
    monkeypatch.setattr(fused, "causal_attention", lambda *a: calls.append("blocked") or a[0])
    monkeypatch.setattr(fused._HeadsAttention, "apply", lambda *a: calls.append("heads") or a[0])
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", lambda *a, **kw: calls.append("sdpa") or a[0])
    q, k, v = (torch.randn(1, 2, T, 8, dtype=dtype, requires_grad=True) for _ in range(3))
    with settings.using(c_loops=c_loops):
        attention.sdpa_attention(q, k, v, None, dropout)
    assert calls == [kernel]


def test_the_whole_head_kernel_steps_aside_where_it_was_not_measured_faster(monkeypatch):
    needs_heads_kernel()
    q = torch.randn(1, 2, 64, 8, requires_grad=True)
    assert fused.heads_lib(q) is not None
    with torch.no_grad():                                  # evaluation and sampling: SDPA
        assert fused.heads_lib(q) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fused.heads_lib(q) is None
    monkeypatch.setattr(c_loader.load(), "causal_attn_vector_width", lambda: 4)  # built without AVX
    assert fused.heads_lib(q) is None


def split_heads(qkv: torch.Tensor, H: int, KV: int, hd: int):
    """q, k, v as the attention module makes them: strided (B, heads, T, hd) views of one projection."""
    B, T, _ = qkv.shape
    q, k, v = qkv.split([H * hd, KV * hd, KV * hd], dim=-1)
    return (q.view(B, T, H, hd).transpose(1, 2), k.view(B, T, KV, hd).transpose(1, 2),
            v.view(B, T, KV, hd).transpose(1, 2))


@pytest.mark.parametrize("B, T, H, KV, hd", [
    (2, 64, 4, 4, 32),    # nanogpt-cpu's heads
    (1, 1, 2, 2, 8),      # one position
    (3, 17, 4, 2, 8),     # grouped heads; T and hd not whole vectors
    (2, 40, 4, 1, 24),    # multi-query
    (1, 100, 2, 2, 64),
    (1, fused.HEADS_MAX_T, 2, 1, 16),
])
def test_the_whole_head_kernel_matches_the_explicit_path(B, T, H, KV, hd):
    needs_heads_kernel()
    qkv = torch.randn(B, T, (H + 2 * KV) * hd, generator=torch.Generator().manual_seed(T), dtype=torch.float64)

    def grads(attend, dtype):
        x = qkv.to(dtype).requires_grad_()
        out = attend(*split_heads(x, H, KV, hd))
        out.backward(torch.ones_like(out) + torch.arange(out.numel(), dtype=dtype).view(out.shape).sin())
        return out.detach().double(), x.grad.double()

    out, grad = grads(lambda q, k, v: fused._HeadsAttention.apply(q, k, v, 0.0, c_loader.load()), torch.float32)
    ref, ref_grad = grads(lambda q, k, v: naive_attention(q, k, v, None, 0.0), torch.float64)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)
    assert torch.allclose(grad, ref_grad, atol=1e-4, rtol=1e-4)


def test_the_whole_head_kernels_dropout_keeps_1_minus_p_and_backpropagates_its_mask():
    """With v the identity (head_dim = T) the output is the dropped probabilities themselves: the mask is
    read off them, and the gradients must be those of softmax -> that mask -> @ v, computed in float64."""
    needs_heads_kernel()
    B, H, KV, T, p = 3, 4, 2, 16, 0.3
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(B, H, T, T, generator=g), torch.randn(B, KV, T, T, generator=g), torch.randn(B, KV, T, T, generator=g)
    lib = c_loader.load()
    torch.manual_seed(7)
    dropped = fused._HeadsAttention.apply(q.requires_grad_(), k, torch.eye(T).expand(B, KV, T, T), p, lib).detach()
    probs = naive_attention(q.double(), k.double(), torch.eye(T, dtype=torch.float64).expand(B, KV, T, T), None, 0.0)
    kept = dropped != 0
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    assert not kept[..., ~causal].any()
    assert kept[..., causal].float().mean().item() == pytest.approx(1 - p, abs=0.05)
    assert torch.allclose(dropped.double(), probs * kept / (1 - p), atol=1e-6)

    def attend_with_that_mask(q, k, v):
        return (naive_attention(q, k, torch.eye(T, dtype=q.dtype).expand(B, KV, T, T), None, 0.0) * kept / (1 - p)
                ) @ share_heads(v, v, H)[0]

    def seeded(q, k, v):
        torch.manual_seed(7)
        return fused._HeadsAttention.apply(q, k, v, p, lib)

    out, grads = with_grads(seeded, q, k, v)
    ref, ref_grads = with_grads(attend_with_that_mask, q.double(), k.double(), v.double())
    assert torch.allclose(out.double(), ref, atol=1e-5)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a.double(), b, atol=1e-4)


def test_the_whole_head_kernel_keeps_a_nan_a_nan():
    needs_heads_kernel()
    q, k, v = (torch.randn(1, 1, 20, 8) for _ in range(3))
    q[0, 0, 2, 0] = float("nan")
    out = fused.causal_attention_heads(q.requires_grad_(), k, v, 0.0)
    assert torch.isnan(out[0, 0, 2]).all() and not torch.isnan(out[0, 0, 3]).any()


def test_the_whole_head_kernel_gives_the_same_bits_on_any_thread_count():
    needs_heads_kernel()
    qkv = torch.randn(6, 50, 3 * 4 * 16, generator=torch.Generator().manual_seed(0))
    threads = torch.get_num_threads()
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        torch.manual_seed(4)  # the same dropout mask
        x = qkv.clone().requires_grad_()
        out = fused.causal_attention_heads(*split_heads(x, 4, 4, 16), 0.2)
        out.sum().backward()
        results.append((out.detach(), x.grad))
    torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_the_setting_switches_the_c_loops_and_restores_them():
    before = settings.current()
    with settings.using(c_loops=False):
        assert fused.c_lib() is None and settings.current().fused == before.fused
    assert settings.current() == before
    previous = settings.configure(settings.KernelSettings(fused=False, c_loops=False))
    try:
        assert previous == before and not fused.use_fused(torch.randn(4), "gelu")
    finally:
        settings.configure(previous)


# -- the training loop's CPU pieces (experiments/optim.py, cpu_runtime.py)------------------------------------
def two_models():
    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    return make(), make()


def groups(model):
    return [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]


def test_fused_adamw_steps_and_saves_like_torchs_fused_adamw():
    from experiments.optim import FusedAdamW

    ours_model, torch_model = two_models()
    ours = FusedAdamW(groups(ours_model), lr=1e-2, betas=(0.9, 0.99))
    theirs = torch.optim.AdamW(groups(torch_model), lr=1e-2, betas=(0.9, 0.99), fused=True)
    x = torch.randn(32, 8, generator=torch.Generator().manual_seed(0))
    for step in range(12):
        for model, opt in ((ours_model, ours), (torch_model, theirs)):
            for g in opt.param_groups:
                g["lr"] = 1e-2 * (step + 1) / 12
            (model(x) ** 2).mean().mul(50).backward()
            if step % 4 == 3:  # some steps update the first layer alone: its step counts run ahead
                model[2].weight.grad = model[2].bias.grad = None
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
    for a, b in zip(ours_model.parameters(), torch_model.parameters()):
        assert torch.equal(a, b)
    assert {i: float(s["step"]) for i, s in ours.state_dict()["state"].items()} == {0: 12, 1: 9, 2: 12, 3: 9}
    restored = FusedAdamW(groups(ours_model), lr=1.0, betas=(0.5, 0.5))
    restored.load_state_dict(theirs.state_dict())  # torch's checkpoints load too
    assert restored.param_groups[0]["betas"] == (0.9, 0.99)
    for i, state in theirs.state_dict()["state"].items():
        assert all(torch.equal(restored.state_dict()["state"][i][k], state[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    (ours_model(x) ** 2).mean().backward()
    restored.step()  # the loaded counts go on from where they were
    assert {i: float(s["step"]) for i, s in restored.state_dict()["state"].items()} == {0: 13, 1: 10, 2: 13, 3: 10}


@pytest.mark.parametrize("c_loops, threads", [(True, 1), (True, 2), (False, 2)])
@pytest.mark.parametrize("max_norm", [1e9, 1.0, 1e-3])
def test_clip_grad_norm_follows_torchs_rule(c_loops, threads, max_norm):
    """The same scale as torch.nn.utils.clip_grad_norm_ (to float rounding of the norm), the norm
    within 1e-6 of float64's, for tensors of many sizes (one larger than the C loops' blocks), on one
    thread and split between two (their shares cut tensors in the middle)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_clip(c_loops, max_norm)
    finally:
        torch.set_num_threads(previous)


def check_clip(c_loops: bool, max_norm: float) -> None:
    from experiments.optim import clip_grad_norm

    gen = torch.Generator().manual_seed(0)
    shapes = [(3,), (128, 512), (512,), (65, 128), (40_000,), (7,)]
    ours = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    theirs = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
    for a, b in zip(ours, theirs):
        a.grad = torch.randn(a.shape, generator=gen) * 3
        b.grad = a.grad.clone()
    before = [a.grad.clone() for a in ours]
    exact = torch.cat([b.grad.double().flatten() for b in theirs]).norm().item()
    with settings.using(c_loops=c_loops):
        norm = float(clip_grad_norm(ours, max_norm))
    torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert norm == pytest.approx(exact, rel=1e-6)
    for a, b, old in zip(ours, theirs, before):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)
        assert torch.equal(a.grad, old) == (max_norm > exact)  # untouched unless clipped
    clipped = torch.cat([a.grad.double().flatten() for a in ours]).norm().item()
    assert clipped == pytest.approx(min(exact, max_norm), rel=1e-5)


def test_thread_policy(monkeypatch):
    from experiments import cpu_runtime as train

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert train.CpuThreads(1e12).reason == "OMP_NUM_THREADS"
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert train.CpuThreads(1e6).reason == "small model" and torch.get_num_threads() == 1
    monkeypatch.setattr(train, "DEFAULT_THREADS", 2)
    monkeypatch.setattr(train.os, "cpu_count", lambda: 2)
    samples = iter([(0, 0, 0), (100, 200, 0),     # (busy, total, own) jiffies: another process kept a CPU busy
                    (100, 400, 0)])               # then it left
    monkeypatch.setattr(train, "cpu_jiffies", lambda: next(samples))
    monkeypatch.setattr(train.time, "sleep", lambda s: None)
    policy = train.CpuThreads(1e12)
    assert torch.get_num_threads() == 1 and policy.reason == "1 of 2 cores free"
    policy.update()
    assert torch.get_num_threads() == 2 and policy.reason == "2 of 2 cores free"
    torch.set_num_threads(1)


@pytest.mark.parametrize("vocab", [65, 50257])
def test_linear_cross_entropy_matches_logits_then_cross_entropy(path, vocab, monkeypatch):
    monkeypatch.setattr(fused, "CROSS_ENTROPY_CHUNK_BYTES", 4 * vocab * 7)  # blocks of 7 rows: a ragged last one
    g = torch.Generator().manual_seed(vocab)
    x, weight = torch.randn(30, 16, generator=g), torch.randn(vocab, 16, generator=g) * 0.3
    targets = torch.randint(vocab, (30,), generator=g)
    out, grads = with_grads(lambda x, w: fused.linear_cross_entropy(x, w, targets) * 3.0, x, weight)
    ref, ref_grads = with_grads(lambda x, w: F.cross_entropy(x @ w.t(), targets) * 3.0, x, weight)
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        assert fused.linear_cross_entropy(x, weight, targets).item() == pytest.approx(ref.item() / 3, rel=1e-6)


@pytest.mark.parametrize("head", ["tied", "untied"])
def test_model_loss_without_logits_matches_the_logits_path(head):
    from components.model import GPT
    from experiments.schema import ModelConfig
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=300, d_model=32, n_layers=1, n_heads=2, context_length=16, head=head))
    idx, targets = torch.randint(300, (3, 16)), torch.randint(300, (3, 16))
    logits, loss = model(idx, targets)
    loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    none, fast = model(idx, targets, return_logits=False)
    fast.backward()
    assert none is None and fast.item() == pytest.approx(loss.item(), rel=1e-6)
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, expected[name], atol=1e-6, rtol=1e-5), name
