"""What the CUDA paths decide, checked without a GPU (issue 18): the positional tables built once and
sliced (bounded memory in generation, float32 RoPE), grouped heads expanded where CUDA's fused kernels
would refuse them, each local search worker on its own GPU, the datasheet peaks and the bench's clock."""
from __future__ import annotations

import gc
import types

import pytest
import torch

from components import attention
from components.kernels import fused
from components.model import GPT
from experiments import bench, benchmark
from experiments.datasheets import datasheet_peak
from experiments.schema import ModelConfig
from experiments.search import cli as search_cli
from registry import POSITIONAL


def live_tensor_bytes() -> int:
    """Bytes of every tensor storage alive in this process (each storage once)."""
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if not issubclass(type(obj), torch.Tensor):  # type(): no __class__ lookups on other objects
            continue
        try:
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        except (RuntimeError, NotImplementedError):  # meta and fake tensors (left by compiled graphs) hold no data
            continue
    return sum(storages.values())


@pytest.mark.parametrize("impl", ["sdpa", "naive"])
def test_generation_holds_no_mask_per_length(impl):
    """Growing windows, then a full one sliding: what stays alive does not grow with the tokens made
    (a cache per length held one (heads, T, T) mask for every T: ~17 GB at context 1024)."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, context_length=64, positional="alibi",
                            attention={"name": "grouped_query", "impl": impl})).eval()
    prompt = torch.zeros((1, 1), dtype=torch.long)
    model.generate(prompt, 8)  # first calls: whatever one-off state a kernel keeps
    before = live_tensor_bytes()
    out = model.generate(prompt, 3 * 64, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert out.shape == (1, 1 + 3 * 64)
    del out
    assert live_tensor_bytes() == before
    assert len(fused._causal) <= 1  # one causal mask per device and dtype, sliced, if any


def test_alibi_mask_is_one_buffer_sliced_not_saved_and_holds_the_causal_mask():
    model = GPT(ModelConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=4, context_length=16, positional="alibi"))
    mask = model.positional.mask
    assert mask.shape == (4, 16, 16) and "positional.mask" not in model.state_dict()
    q = torch.zeros(2, 4, 10, 8)
    bias = model.positional.attention_bias(q)
    assert bias.shape == (4, 10, 10) and bias.untyped_storage().data_ptr() == mask.untyped_storage().data_ptr()
    assert torch.isinf(bias[:, 0, 1:]).all() and torch.isfinite(bias.tril()).all()
    assert bias[0, 5, 2].item() == pytest.approx(-3 * 0.25)  # slope 2^(-8/4) of head 0, distance 3


def test_rope_tables_are_buffers_built_for_the_attentions_head_size():
    for attention_name, head_dim in (("multi_head", 8), ("single_head", 32)):
        model = GPT(ModelConfig(vocab_size=50, d_model=32, n_layers=1, n_heads=4, context_length=16,
                                positional="rope", attention=attention_name))
        assert model.positional.cos.shape == (16, head_dim) and model.positional.cos.dtype == torch.float32
        assert not any(k.startswith("positional.") for k in model.state_dict())


def test_rope_rotates_in_float32_under_bf16_autocast():
    """One rounding to bf16, of the float32 rotation: bf16 tables put errors of up to ~0.4% on the angles."""
    rope = POSITIONAL.build("rope", {"context_length": 512, "d_model": 64, "n_heads": 4})
    rope.prepare(n_heads=4, head_dim=16, context_length=512)
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 4, 512, 16, generator=g).bfloat16() for _ in range(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        qr, kr = rope.rotate(q, k)
    assert qr.dtype == kr.dtype == torch.bfloat16
    angles = torch.arange(512, dtype=torch.float64)[:, None] * 10000.0 ** (-torch.arange(0, 16, 2, dtype=torch.float64) / 16)
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    qd = q.double()
    exact = qd * cos + torch.cat([-qd[..., 8:], qd[..., :8]], -1) * sin
    assert ((qr.double() - exact).abs() <= exact.abs() * 2 ** -8 + 1e-6).all()  # within one bf16 rounding
    # (bf16 tables, as before, miss that bound on ~7,000 of these 32,768 values)


@pytest.mark.parametrize("device, dtype, bias, expand", [
    ("cuda", torch.bfloat16, False, False),   # flash takes grouped heads
    ("cuda", torch.bfloat16, True, True),     # ALiBi: flash refuses a bias; memory-efficient needs full heads
    ("cuda", torch.float32, False, True),     # float32: flash refuses it
    ("cpu", torch.float32, True, False), ("cpu", torch.bfloat16, False, False)])
def test_grouped_heads_are_expanded_where_cudas_fused_kernels_would_refuse_them(device, dtype, bias, expand):
    assert attention.expand_kv_heads(device, dtype, bias) is expand


@pytest.mark.parametrize("device, runs, visible, expected", [
    (None, {"auto"}, ["0", "1"], ["0", "1"]),
    ("cuda", {"cpu"}, ["2", "3", "5"], ["2", "3", "5"]),
    (None, {"cuda", "cpu"}, ["0", "1"], ["0", "1"]),
    (None, {"auto"}, ["0"], []),                      # one GPU: shared, as before
    ("cuda:1", {"auto"}, ["0", "1"], []),             # an explicit device is kept
    (None, {"cuda:0"}, ["0", "1"], []), (None, {"cpu"}, ["0", "1"], []), ("cpu", {"auto"}, ["0", "1"], [])])
def test_local_workers_take_a_gpu_each(device, runs, visible, expected):
    assert search_cli.worker_gpus(device, runs, visible) == expected


def test_spawned_workers_see_one_gpu_each(monkeypatch, tmp_path, spawned):
    monkeypatch.setattr(search_cli, "visible_gpus", lambda: ["0", "1"])
    run = types.SimpleNamespace(train=types.SimpleNamespace(device="auto"))
    plan = types.SimpleNamespace(args=types.SimpleNamespace(spec=tmp_path / "s.yaml", results=str(tmp_path), device=None),
                                 storage_url="sqlite:///x.db", spec=types.SimpleNamespace(runs=[run]))
    assert search_cli.spawn_workers(plan, 3) == 0
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in spawned] == ["0", "1", "0"]


@pytest.mark.parametrize("name, precision, gflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989_400), ("NVIDIA H100 PCIe", "bf16", 756_500),
    ("NVIDIA H200", "bf16", 989_400), ("NVIDIA A100-SXM4-80GB", "fp32", 156_000),  # fp32 runs as TF32
    ("NVIDIA L4", "bf16", 121_000), ("NVIDIA L40S", "bf16", 362_050), ("NVIDIA A10", "bf16", 125_000),
    ("NVIDIA A10G", "bf16", None), ("AMD EPYC avx2", "fp32", None)])
def test_datasheet_peaks(name, precision, gflops):
    assert datasheet_peak(name, precision) == (pytest.approx(gflops) if gflops else None)


def test_the_bench_row_reports_mfu_against_the_datasheet_too():
    result = {"step_s": 0.1, "step_iqr_s": 0.0, "batch_s": 0.0, "tokens_per_step": 1000, "flops_per_token": 10**9,
              "matmul_params": 1, "peak_mem_mb": 1.0, "threads": None, "device": "NVIDIA H100 80GB HBM3",
              "dims": {"n_layers": 1, "d_model": 1, "context_length": 1}}
    cfg = {"preset": "p", "precision": "bf16", "impl": "sdpa", "compile": True, "without": None, "batch_size": 1}
    row = bench.row_for(cfg, result, peak=800_000.0)
    assert row["gflops"] == 10_000.0 and row["mfu"] == pytest.approx(10_000 / 800_000, abs=1e-3)
    assert row["datasheet_gflops"] == pytest.approx(989_400) and row["mfu_datasheet"] == pytest.approx(0.0101, abs=1e-4)


def test_the_clock_times_each_key_in_order():
    clock = benchmark.Clock(torch.device("cpu"))
    for key in ("a", "b", "a"):
        clock.time(key, lambda: sum(range(1000)))
    times = clock.seconds()
    assert list(times) == ["a", "b"] and len(times["a"]) == 2 and all(t >= 0 for t in times["a"] + times["b"])
