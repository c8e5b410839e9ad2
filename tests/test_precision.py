"""What `precision: auto` resolves to (experiments/hardware.py), and that the run id holds the answer.

The device and the CPU measurement are mocked both ways, so every branch is checked on any machine.
"""
from __future__ import annotations

import json

import pytest
import torch

from components.kernels import c_loader
from experiments import hardware
from experiments.hardware import resolve_precision
from experiments.spec import parse_spec
from registry import SpecError

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def measured(monkeypatch, tmp_path):
    """A CPU with bf16 units whose step times are what the test sets (`times`); counts the measurements;
    the cache goes to a fresh folder and $LAB_CPU_PRECISION (conftest's fp32) is unset."""
    monkeypatch.delenv(hardware.CPU_PRECISION_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(hardware, "cpu_bf16_supported", lambda: True)
    state = {"times": {"fp32_ms": 10.0, "bf16_ms": 5.0}, "calls": 0}

    def fake_timing():
        state["calls"] += 1
        return dict(state["times"])

    monkeypatch.setattr(hardware, "time_cpu_steps", fake_timing)
    return state


def test_explicit_precisions_are_kept_on_every_device():
    for device in (CPU, CUDA, torch.device("mps")):
        assert resolve_precision("fp32", device) == "fp32" and resolve_precision("bf16", device) == "bf16"
    assert resolve_precision("auto", torch.device("mps")) == "fp32"


@pytest.mark.parametrize("capability, expected", [((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"),
                                                  ((9, 0), "bf16")])
def test_auto_on_cuda_is_bf16_only_where_the_runs_gpu_has_it_natively(monkeypatch, capability, expected):
    """V100 (7.0) and T4 (7.5) emulate bf16, which torch.cuda.is_bf16_supported() counts as support."""
    asked = []
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i: asked.append(i) or capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", torch.device("cuda", 1)) == expected
    assert resolve_precision("auto", CUDA) == expected
    assert asked == [1, 0]  # the run's GPU, not the current one; the current one for a bare "cuda"


def test_auto_on_a_gpu_that_is_not_there_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SpecError, match="device cuda:1 .* is not here: this machine has 0 CUDA device"):
        resolve_precision("auto", torch.device("cuda", 1))
    assert resolve_precision("fp32", CUDA) == "fp32"  # an explicit precision needs no GPU to be resolved


def test_auto_on_a_cpu_without_bf16_units_is_fp32_without_measuring(measured, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_bf16_supported", lambda: False)
    assert resolve_precision("auto", CPU) == "fp32" and measured["calls"] == 0


@pytest.mark.parametrize("bf16_ms, expected", [(5.0, "bf16"), (9.5, "fp32"), (14.0, "fp32")])
def test_auto_on_a_cpu_with_bf16_units_follows_the_measurement(measured, bf16_ms, expected):
    """bf16 only where its step is at least BF16_MIN_GAIN (1.1x) faster: 9.5 vs 10 ms is within the noise."""
    measured["times"] = {"fp32_ms": 10.0, "bf16_ms": bf16_ms}
    assert resolve_precision("auto", CPU) == expected
    assert resolve_precision("auto", CPU) == expected
    assert measured["calls"] == 1  # measured once, then read from the cache
    cached = list(c_loader.kernel_dir().glob("precision-*.json"))  # beside the C kernels, in the test's folder
    assert len(cached) == 1 and json.loads(cached[0].read_text())["bf16_ms"] == bf16_ms


def test_the_environment_pins_auto_on_the_cpu(measured, monkeypatch):
    monkeypatch.setenv(hardware.CPU_PRECISION_ENV, "bf16")
    assert resolve_precision("auto", CPU) == "bf16" and measured["calls"] == 0
    monkeypatch.setenv(hardware.CPU_PRECISION_ENV, "fast")
    with pytest.raises(SpecError, match="LAB_CPU_PRECISION = 'fast'.*fp32, bf16"):
        resolve_precision("auto", CPU)


def test_the_cpu_timing_runs_the_labs_step_both_ways_and_leaves_the_rng_alone(monkeypatch):
    monkeypatch.setitem(hardware.PROBE, "preset", "tiny")
    monkeypatch.setitem(hardware.PROBE, "batch_size", 2)
    monkeypatch.setitem(hardware.PROBE, "warmup", 1)
    monkeypatch.setitem(hardware.PROBE, "steps", 1)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    times = hardware.time_cpu_steps()
    assert times["fp32_ms"] > 0 and times["bf16_ms"] > 0 and times["probe"]["preset"] == "tiny"
    assert torch.equal(torch.rand(3), expected_next)


def test_the_run_id_holds_the_resolved_precision():
    """A run made as fp32 on a CPU is not the run `auto` makes on a bf16 GPU: it must not be skipped there."""
    raw = {"experiment": "t", "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context_length": 16}}
    auto_on_cpu, auto_on_gpu = (parse_spec(raw).runs[0] for _ in range(2))
    auto_on_cpu.bind_precision("fp32")
    auto_on_gpu.bind_precision("bf16")
    assert auto_on_cpu.run_id != auto_on_gpu.run_id
    for precision, run in (("fp32", auto_on_cpu), ("bf16", auto_on_gpu)):
        explicit = parse_spec(raw | {"train": {"precision": precision}}).runs[0]
        explicit.bind_precision(precision)
        assert explicit.run_id == run.run_id  # the same computation, the same run
        assert run.to_dict()["precision"] == precision and run.train.precision == "auto"  # both recorded


def test_binding_resolves_each_run_on_its_device(monkeypatch, lab_cache):
    """runner.bind_data binds the precision of the device the run will use (--device wins)."""
    from experiments import runner

    seen = []
    monkeypatch.setattr(runner, "resolve_precision",
                        lambda precision, device: seen.append((precision, device.type)) or "bf16")
    spec = parse_spec({"experiment": "t", "data": {"corpus": "embedded"},
                       "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context_length": 16},
                       "train": {"device": "cpu"}})
    runner.bind_data(spec.runs, device="meta")
    assert seen == [("auto", "meta")] and spec.runs[0].precision == "bf16"
