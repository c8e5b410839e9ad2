"""The output layer's cross-entropy in chunks, with the vocabulary padded for the matmul (CUDA's path),
checked on the CPU: the same loss and gradients as the plain op, padded logits in neither the loss nor
sampling, parameter counts unchanged."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from components.kernels import chunked, settings
from components.model import GPT, PRESETS
from experiments.schema import ModelConfig


def inputs(n: int, d: int, vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g).requires_grad_(), torch.randn(vocab, d, generator=g).requires_grad_(),
            torch.randint(0, vocab, (n,), generator=g))


def loss_and_grads(f, x, w, y):
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    loss = f(x, w, y)
    loss.backward()
    return loss.detach(), x.grad, w.grad


@pytest.mark.parametrize("vocab", [50, 64, 65])          # padded to 64, not padded, padded to 128
@pytest.mark.parametrize("multiple", [1, 64])
@pytest.mark.parametrize("rows", [1, 7, None])            # one row per chunk, several chunks, one chunk
def test_chunked_padded_cross_entropy_equals_the_plain_one(vocab, multiple, rows):
    x, w, y = inputs(37, 16, vocab)
    ref = loss_and_grads(lambda x, w, y: F.cross_entropy(x @ w.t(), y), x, w, y)
    got = loss_and_grads(lambda x, w, y: chunked.linear_cross_entropy(x, w, y, multiple=multiple, rows=rows), x, w, y)
    assert got[0].dtype == torch.float32
    assert got[0].item() == pytest.approx(ref[0].item(), abs=1e-6)
    for a, b in zip(got[1:], ref[1:]):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-6)
    with torch.no_grad():  # evaluation: the loss alone
        assert chunked.linear_cross_entropy(x, w, y, multiple=multiple, rows=rows).item() == pytest.approx(
            ref[0].item(), abs=1e-6)


def test_under_bf16_autocast_the_matmul_is_bf16_and_the_softmax_float32():
    x, w, y = inputs(40, 32, 50)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = chunked.linear_cross_entropy(x, w, y, multiple=64, rows=9)
        ref = F.cross_entropy((x @ w.t()).float(), y)  # autocast: bf16 logits, float32 loss
    assert got.item() == pytest.approx(ref.item(), abs=1e-5)


def test_padded_logits_are_the_vocabularys_own():
    x, w, _ = inputs(5, 16, 50)
    logits = chunked.linear_logits(x, w, multiple=64)
    assert logits.shape == (5, 50) and torch.allclose(logits, x @ w.t(), atol=1e-6)


@pytest.fixture
def padded_everywhere(monkeypatch):
    """The CUDA path on the CPU: the vocabulary padded to 64 in several chunks, the fused kernels off."""
    monkeypatch.setitem(chunked.VOCAB_MULTIPLE, "cpu", 64)
    monkeypatch.setattr(chunked, "DEFAULT_CHUNK_BYTES", 4 * 64 * 10)  # 10 rows per chunk
    with settings.using(fused=False):
        yield


def test_a_model_with_the_padded_head_trains_as_without(padded_everywhere, monkeypatch):
    config = ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=2, context_length=16)
    torch.manual_seed(0)
    model = GPT(config)
    x, y = (torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    _, loss = model(x, y, return_logits=False)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    monkeypatch.delitem(chunked.VOCAB_MULTIPLE, "cpu")
    with settings.using(fused=True):  # the CPU's own path: the fused kernel, no padding
        _, plain = model(x, y, return_logits=False)
    plain.backward()
    assert loss.item() == pytest.approx(plain.item(), abs=1e-6)
    for name, p in model.named_parameters():
        assert torch.allclose(grads[name], p.grad, atol=1e-6), name


def test_sampling_never_draws_a_padded_token(padded_everywhere):
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=2, context_length=16))
    with torch.no_grad():
        model.head.weight.normal_(0, 5)  # sharp, varied logits
    out = model.generate(torch.zeros((4, 1), dtype=torch.long), 60, temperature=3.0, top_k=None,
                         generator=torch.Generator().manual_seed(1))
    assert int(out.max()) < 50 and model(out[:, :16])[0].shape[-1] == 50


def test_parameter_counts_are_the_true_ones_with_the_padded_head(padded_everywhere):
    with torch.device("meta"):
        model = GPT(ModelConfig(vocab_size=50257, **PRESETS["gpt2-124m"]))
    assert model.num_params() == 124_439_808 and model.token_embedding.weight.shape[0] == 50257
