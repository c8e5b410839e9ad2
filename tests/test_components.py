"""Every registered variant of every model family: shape, finiteness, gradients, causality.

New variants are tested by being registered: the parameters come from each registry's names().
"""
import math

import pytest
import torch

from components.model import GPT, PRESETS
from experiments.schema import ModelConfig
from components.positional import alibi_slopes, sinusoid_table
from registry import ATTENTION, BLOCK, FEEDFORWARD, HEAD, NORM, POSITIONAL

VOCAB, T = 50, 16
TINY = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, context_length=T)
FAMILY_FIELDS = {"positional": POSITIONAL, "attention": ATTENTION, "norm": NORM,
                 "block": BLOCK, "feedforward": FEEDFORWARD, "head": HEAD}
CASES = [(field, name) for field, reg in FAMILY_FIELDS.items() for name in reg.names()]


def tiny_model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(ModelConfig(**(TINY | overrides))).eval()


def tokens(batch=2, length=T, seed=1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("field,name", CASES, ids=[f"{f}={n}" for f, n in CASES])
def test_shape_and_finite(field, name):
    logits, loss = tiny_model(**{field: name})(tokens(), tokens(seed=2))
    assert logits.shape == (2, T, VOCAB)
    assert torch.isfinite(logits).all() and torch.isfinite(loss)


@pytest.mark.parametrize("field,name", CASES, ids=[f"{f}={n}" for f, n in CASES])
def test_backward_reaches_every_parameter(field, name):
    model = tiny_model(**{field: name}).train()
    _, loss = model(tokens(), tokens(seed=2))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


@pytest.mark.parametrize("field,name", CASES, ids=[f"{f}={n}" for f, n in CASES])
def test_no_information_from_future_tokens(field, name):
    model = tiny_model(**{field: name})
    x = tokens(batch=1)
    base, _ = model(x)
    for t in (0, 5, T - 2):
        changed = x.clone()
        changed[0, t + 1:] = (changed[0, t + 1:] + 7) % VOCAB
        out, _ = model(changed)
        assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6), f"position <= {t} saw the future"
        assert not torch.allclose(out[:, t + 1:], base[:, t + 1:]), "a changed token changed nothing"


ATTENTIONS = [n for n in ATTENTION.names() if n != "none"]
PAIRS = [(p, a) for p in POSITIONAL.names() for a in ATTENTIONS]


@pytest.mark.parametrize("positional,attention", PAIRS, ids=[f"{p}-{a}" for p, a in PAIRS])
def test_naive_and_sdpa_compute_the_same_function(positional, attention):
    outputs = [tiny_model(positional=positional, attention={"name": attention, "impl": impl})(tokens())[0]
               for impl in ("sdpa", "naive")]
    assert torch.allclose(outputs[0], outputs[1], atol=1e-5)


def test_attention_dropout_is_applied_in_training_for_both_impls():
    for impl in ("sdpa", "naive"):
        model = tiny_model(attention={"name": "multi_head", "impl": impl}, dropout=0.5).train()
        first, second = model(tokens())[0], model(tokens())[0]
        assert not torch.allclose(first, second)


def test_sinusoidal_table_matches_closed_form():
    table = sinusoid_table(50, 16)
    for pos in (0, 1, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    rope = POSITIONAL.build("rope", {"context_length": 32, "d_model": 8, "n_heads": 1})
    q0, k0 = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    q, k = q0.expand(1, 1, 32, 8), k0.expand(1, 1, 32, 8)
    qr, kr = rope.rotate(q, k)
    score = lambda i, j: (qr[0, 0, i] @ kr[0, 0, j]).item()
    assert score(10, 7) == pytest.approx(score(20, 17), abs=1e-5)
    assert qr.norm(dim=-1).allclose(q.norm(dim=-1), atol=1e-5)  # rotation keeps lengths


def test_alibi_slopes_follow_the_paper():
    assert alibi_slopes(8).tolist() == [2.0 ** -k for k in range(1, 9)]
    assert len(alibi_slopes(6)) == 6 and alibi_slopes(6)[:4].tolist() == [2.0 ** -k for k in (2, 4, 6, 8)]


def test_tied_head_shares_storage_and_untied_does_not():
    tied, untied = tiny_model(head="tied"), tiny_model(head="untied")
    assert tied.head.weight.data_ptr() == tied.token_embedding.weight.data_ptr()
    assert untied.head.linear.weight.data_ptr() != untied.token_embedding.weight.data_ptr()
    assert untied.num_params() - tied.num_params() == VOCAB * 32


def test_gpt2_124m_has_the_published_parameter_count():
    with torch.device("meta"):  # sizes only: no memory, no init cost
        model = GPT(ModelConfig(vocab_size=50257, **PRESETS["gpt2-124m"]))
    assert model.num_params() == 124_439_808


def test_flops_per_token_is_six_n_plus_attention():
    model = GPT(ModelConfig(vocab_size=65, **PRESETS["nanogpt-cpu"]))
    n = model.num_params() - 64 * 128  # learned position table is a lookup; the tied token table is the head
    assert model.flops_per_token() == 6 * n + 12 * 4 * 128 * 64
    no_attention = GPT(ModelConfig(vocab_size=65, **PRESETS["nanogpt-cpu"] | {"attention": "none"}))
    assert no_attention.flops_per_token() == 6 * (no_attention.num_params() - 64 * 128)


def test_gpt2_init_scales_residual_projections():
    model = GPT(ModelConfig(**(TINY | {"d_model": 256, "n_layers": 8})))
    proj, qkv = model.blocks[0].attention.proj.weight, model.blocks[0].attention.qkv.weight
    assert qkv.std().item() == pytest.approx(0.02, rel=0.05)
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    # without attention a block has one residual branch (its MLP): 8 in all, not 16
    mlp_only = GPT(ModelConfig(**(TINY | {"d_model": 256, "n_layers": 8, "attention": "none"})))
    assert mlp_only.blocks[0].feedforward.down.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)


@pytest.mark.parametrize("positional", POSITIONAL.names())
def test_generate_runs_far_past_the_context_length(positional):
    model = tiny_model(positional=positional)
    out = model.generate(tokens(batch=1, length=3), max_new_tokens=3 * T, temperature=0.8, top_k=5,
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 3 + 3 * T) and int(out.max()) < VOCAB


def test_greedy_generation_is_deterministic_and_matches_argmax():
    model = tiny_model()
    prompt = tokens(batch=1, length=4)
    first = model.generate(prompt, 10, temperature=0)
    assert torch.equal(first, model.generate(prompt, 10, temperature=0))
    logits, _ = model(first[:, :4])
    assert first[0, 4].item() == logits[0, -1].argmax().item()


def test_top_k_one_is_greedy():
    model = tiny_model()
    prompt = tokens(batch=1, length=4)
    sampled = model.generate(prompt, 8, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sampled, model.generate(prompt, 8, temperature=0))


def test_sequence_longer_than_context_is_refused_in_forward():
    with pytest.raises(ValueError, match="longer than context_length"):
        tiny_model()(tokens(length=T + 1))
