"""The benchmark's behaviour (no timing asserts: timings are benchmark results, not test outcomes)."""
from __future__ import annotations

import csv
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments import bench, benchmark
from components.model import GPT, PRESETS
from experiments.schema import ModelConfig

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def cache(lab_cache):
    return lab_cache


def test_matmul_peak_measures_each_size_and_reports_the_best_size():
    peak = benchmark.matmul_peak(torch.device("cpu"), torch.float32, sizes=(32, 64), seconds=0.01)
    assert set(peak["by_size"]) == {32, 64}
    assert peak["gflops"] > 0 and peak["gflops"] == pytest.approx(max(peak["by_size"].values()), rel=0.01)


def test_a_size_that_would_take_too_long_is_skipped():
    peak = benchmark.matmul_peak(torch.device("cpu"), torch.float32, sizes=(32, 4096), seconds=0.01, max_single_s=1e-9)
    assert list(peak["by_size"]) == [32]


def test_mfu_is_achieved_flops_over_the_peak_with_the_models_formula():
    model = GPT(ModelConfig(vocab_size=65, **PRESETS["nanogpt-cpu"]))
    n, layers, d, t = model.matmul_params(), 4, 128, 64
    result = {"step_s": 0.05, "step_iqr_s": 0.001, "batch_s": 0.0001, "tokens_per_step": 12 * 64,
              "flops_per_token": model.flops_per_token(), "matmul_params": n, "peak_mem_mb": 10.0, "threads": 2,
              "dims": {"n_layers": layers, "d_model": d, "context_length": t}, "device": "cpu"}
    cfg = {"preset": "nanogpt-cpu", "precision": "fp32", "impl": "sdpa", "compile": False, "without": None,
           "batch_size": 12}
    row = bench.row_for(cfg, result, peak=200.0)
    flops_per_s = (6 * n + 12 * layers * d * t) * 12 * 64 / 0.05
    assert row["gflops"] == pytest.approx(flops_per_s / 1e9, abs=0.05)
    assert row["mfu"] == pytest.approx(flops_per_s / 1e9 / 200.0, abs=1e-3)
    assert row["tokens_per_s"] == round(12 * 64 / 0.05)
    assert row["batch_frac"] == pytest.approx(0.0001 / 0.05, abs=1e-4)
    assert row["formula"] == f"6*{n} + 12*4*128*64"


@pytest.mark.parametrize("flags, expected", [
    ({"avx2", "avx512f", "avx512bw"}, False),      # AVX-512 without bf16 units (oneDNN still says "supported")
    ({"avx512f", "avx512_bf16"}, True), ({"avx512f", "amx_bf16", "amx_tile"}, True), (set(), False)])
def test_bf16_units_are_read_from_the_cpu_flags(flags, expected):
    from experiments.hardware import cpu_has_bf16_units
    assert cpu_has_bf16_units(flags) is expected


@pytest.mark.parametrize("bf16_units", [False, True])
def test_bench_times_a_tiny_config_and_writes_the_table(tmp_path, capsys, monkeypatch, bf16_units):
    """The default precisions follow the CPU: fp32, plus bf16 where the CPU has bf16 units (with its own
    --without rows: the kernels serve bf16 too). Both answers are pinned here, so the test says the same
    on every CPU."""
    from experiments import hardware
    monkeypatch.setattr(hardware, "bf16_is_fast", lambda device: bf16_units)
    # the peak at small sizes, briefly: five 4096^3 products per precision (emulated bf16: ~1 GFLOP/s) add nothing here
    monkeypatch.setattr(bench, "matmul_peak", lambda device, dtype, sizes: benchmark.matmul_peak(
        device, dtype, (128, 256), seconds=0.05))
    out = tmp_path / "bench.csv"
    assert bench.main(["--preset", "tiny", "--steps", "2", "--warmup", "1", "--batch-size", "4", "--threads", "1",
                       "--device", "cpu", "--no-fixed-cost", "--without", "fused_kernels", "--csv", str(out),
                       "--breakdown", "1"]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == bench.COLUMNS
    assert [(r["preset"], r["precision"], r["impl"], r["without"]) for r in rows] == [
        ("tiny", "fp32", "sdpa", "-"), ("tiny", "fp32", "sdpa", "fused_kernels")] + (
        [("tiny", "bf16", "sdpa", "-"), ("tiny", "bf16", "sdpa", "fused_kernels")] if bf16_units else [])
    for r in rows:
        assert float(r["step_ms"]) > 0 and float(r["tokens_per_s"]) > 0
        # mfu is rounded from the unrounded figures; gflops and peak_gflops are shown to 0.1, which on a slow
        # or loaded machine (a few GFLOP/s) moves their ratio by far more than mfu's own rounding.
        gflops, peak = float(r["gflops"]), float(r["peak_gflops"])
        shown_rounding = 0.05 * (1 + gflops / peak) / max(peak - 0.05, 0.05)  # both off by up to 0.05
        assert float(r["mfu"]) == pytest.approx(gflops / peak, abs=5e-4 + 1.2 * shown_rounding)
        assert int(r["threads"]) == 1
    printed = capsys.readouterr().out
    assert "matmul peak fp32" in printed and "6*N + 12*L*d*T" in printed and "loadavg" in printed
    # --breakdown: one per combination (its base row), each with the matmuls among its kinds
    assert printed.count("ms per profiled step") == (2 if bf16_units else 1) and "  matmul " in printed


def test_fixed_cost_reports_imports_data_and_build(tmp_path):
    cfg = {"preset": "tiny", "impl": "sdpa", "corpus": "embedded", "tokenizer": "char", "batch_size": 4,
           "precision": "fp32", "compile": False, "device": "cpu", "warmup": 1, "steps": 1}
    cost = benchmark.fixed_cost(cfg)
    assert set(cost) == {"imports_s", "data_s", "build_s"} and all(v >= 0 for v in cost.values())


def test_runtime_knobs_switch_one_kernel_off_each():
    import types

    from components.kernels import settings

    args = bench.parse_args(["--preset", "tiny", "--without", "bf16_attention", "fused_kernels", "allocator"])
    cfgs = bench.combos(args, torch.device("cpu"), ["fp32", "bf16"])
    assert [(c["precision"], c["without"], c["interleave"]) for c in cfgs] == [
        ("fp32", None, ["fused_kernels"]), ("fp32", "allocator", []),
        ("bf16", None, ["bf16_attention", "fused_kernels"]), ("bf16", "allocator", [])]
    before = settings.current()
    switch = benchmark.Switch(types.SimpleNamespace(optimizer=None))
    try:
        for kernel in settings.BF16_KERNELS:
            switch.set(f"bf16_{kernel}")
            assert settings.current().bf16 == settings.BF16_KERNELS - {kernel} and settings.current().fused
        switch.set("heads_attention")  # the whole-head attention alone off
        assert settings.current() == dataclasses.replace(before, heads_attention=False)
        switch.set(None)
        assert settings.current() == before
    finally:
        settings.configure(before)


def test_the_breakdown_sorts_ops_into_kinds_and_keeps_the_rest_between_ops():
    import torch

    from experiments import step_profile
    kinds = {name: step_profile.kind_of(name) for name in (
        "aten::addmm", "_HeadsAttentionBackward", "aten::native_layer_norm_backward", "aten::_fused_adamw_",
        "aten::linalg_vector_norm", "aten::copy_", "AddmmBackward0", "autograd::engine::evaluate_function: MmBackward0",
        "_TanhGELU", "aten::sum", "aten::view")}
    assert kinds == {"aten::addmm": "matmul", "_HeadsAttentionBackward": "attention",
                     "aten::native_layer_norm_backward": "norms", "aten::_fused_adamw_": "optimizer + clipping",
                     "aten::linalg_vector_norm": "optimizer + clipping", "aten::copy_": "casts + copies",
                     "AddmmBackward0": step_profile.FRAMEWORK_KIND,
                     "autograd::engine::evaluate_function: MmBackward0": step_profile.FRAMEWORK_KIND,
                     "_TanhGELU": "activation + dropout", "aten::sum": "reductions (bias gradients)",
                     "aten::view": step_profile.FRAMEWORK_KIND}
    a = torch.randn(256, 256)

    def step():
        torch.mm(a, a)
        time.sleep(0.005)  # Python between ops: in no op's self time

    profile = step_profile.profile_steps(step, steps=3, cuda=False)
    assert profile["kinds"]["matmul"] > 0 and profile["top"][0][1] == "matmul"
    assert profile["kinds"][step_profile.BETWEEN_OPS] >= 4.5
    assert sum(profile["kinds"].values()) == pytest.approx(profile["step_ms"])
    assert "between ops" in step_profile.format_breakdown("tiny", profile)


# -- bad input: one "error: " paragraph and exit status 2, before the seconds of peak timing -----
def not_now(*args, **kwargs):
    raise AssertionError("timed before the command line was checked")


@pytest.fixture
def untimed(monkeypatch):
    """bench.main with the timing and the workers failing the test if reached: it must stop first."""
    for name in ("matmul_peak", "measure_peaks", "in_subprocess"):
        monkeypatch.setattr(bench, name, not_now)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same answers on a GPU machine


@pytest.mark.parametrize("argv, message", [
    (["--preset", "bogus"], "--preset = 'bogus' is not a preset — presets: tiny, small, nanogpt-cpu"),
    (["--preset", "tiny", "nanogpt-cpuu"], "--preset = 'nanogpt-cpuu' is not a preset — did you mean 'nanogpt-cpu'?"),
    (["--steps", "0"], "--steps = 0 must be a positive integer"),
    (["--steps", "-1"], "--steps = -1 must be a positive integer"),
    (["--warmup", "-1"], "--warmup = -1 must be an integer >= 0"),
    (["--batch-size", "0"], "--batch-size = 0 must be a positive integer"),
    (["--threads", "0"], "--threads = 0 must be a positive integer"),
    (["--threads", "-4"], "--threads = -4 must be a positive integer"),
    (["--breakdown", "-1"], "--breakdown = -1 must be an integer >= 0"),
    (["--device", "tpu"], "--device = 'tpu' must be auto, cpu, cuda, cuda:N or mps"),
    (["--device", "cuda"], "--device 'cuda' is not available on this machine"),
    (["--corpus", "missing.txt"], "data.corpus = 'missing.txt': no such file"),
    (["--tokenizer", "bpe"], "unknown tokenizer 'bpe' at data.tokenizer — registered: byte, char, gpt2"),
    (["--preset", "tiny", "tiny"], "--preset lists 'tiny' twice: each is timed once"),
    (["--precision", "fp32", "--without", "bf16_gelu"], "--without bf16_gelu switches a bf16 kernel off, but no bf16 row"),
])
def test_a_bad_option_is_one_error_before_anything_is_timed(untimed, capsys, argv, message):
    assert bench.main(["--preset", "tiny", "--device", "cpu", *argv]) == 2  # the last --preset / --device counts
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and out == ""


def test_every_bad_option_is_named_at_once(untimed, capsys):
    assert bench.main(["--preset", "bogus", "--steps", "0", "--warmup", "-1", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 3 problems: ") and all(f"--{o} = " in err for o in ("preset", "steps", "warmup"))


@pytest.mark.parametrize("where, message", [
    (".", "is a folder; give the path of a file"),
    ("missing/bench.csv", "its folder"),
    ("a-file/bench.csv", "cannot be written: a part of the path is a file, not a folder"),
])
def test_a_csv_that_cannot_be_written_is_refused_before_the_timing(untimed, capsys, tmp_path, where, message):
    (tmp_path / "a-file").write_text("")
    before = sorted(tmp_path.rglob("*"))
    assert bench.main(["--preset", "tiny", "--device", "cpu", "--csv", str(tmp_path / where)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --csv = ") and message in err and "Traceback" not in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing made, not even the missing folder


def test_a_table_that_cannot_be_written_at_the_end_is_an_error_not_a_traceback(monkeypatch, capsys, tmp_path):
    import errno

    from experiments import files

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bench, "measure_peaks", lambda device, precisions: {})
    monkeypatch.setattr(bench, "time_combos", lambda *args: [])
    monkeypatch.setattr(bench, "print_summary", lambda rows: None)
    monkeypatch.setattr(files, "write_csv", full)
    assert bench.main(["--preset", "tiny", "--device", "cpu", "--no-fixed-cost", "--csv",
                       str(tmp_path / "bench.csv")]) == 1
    assert capsys.readouterr().err.startswith("error: cannot write the table to --csv = ")


def test_the_command_exits_2_without_a_traceback():
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-m", "experiments.bench", "--steps", "0"], capture_output=True,
                          text=True, cwd=Path(bench.__file__).resolve().parent.parent, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: --steps = 0 ") and "Traceback" not in proc.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_workers_peak_memory_is_its_own_not_its_parents():
    """The bench times each combination in a child process; Linux carries the parent's ru_maxrss over to
    the child, so the child reads its own high-water mark (VmHWM) instead."""
    held = torch.ones(300 * 2**20 // 4)  # ~300 MB in this process
    code = ("import resource; from experiments import resources; resources.reset_peak_rss(); "
            "print(resources.peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    own, inherited = map(float, subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               check=True, cwd=ROOT).stdout.split())
    parent = benchmark.resources.rss_mb()  # torch and ~300 MB more; the child imports torch alone
    assert own < parent - 200 < inherited and held.sum() > 0
    quantiles = benchmark.statistics.quantiles([40.0, 80.0], n=4, method="inclusive")
    assert 40 <= quantiles[0] <= quantiles[2] <= 80  # the IQR stays within the times measured
