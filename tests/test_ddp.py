"""Data parallelism through torchrun: 2 gloo processes train what 1 process trains on the same global batch."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from experiments import run as runner

ROOT = Path(__file__).resolve().parent.parent
SPEC = {"experiment": "ddp", "seeds": [0], "data": {"corpus": "embedded", "tokenizer": "char"},
        "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "context_length": 16, "dropout": 0.0},
        "train": {"steps": 10, "batch_size": 4, "lr": 3e-3, "warmup": 2, "eval_every": 1, "eval_batches": 2,
                  "device": "cpu"},
        "sample": {"tokens": 10}}


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def torchrun(spec: Path, results: Path, n: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                           "-m", "experiments.run", str(spec), "--results", str(results), "--no-report"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def metrics(results: Path) -> list[dict[str, str]]:
    with open(next(results.glob("ddp/runs/*/metrics.csv")), newline="") as f:
        return list(csv.DictReader(f))


def summary(results: Path) -> dict:
    return json.loads(next(results.glob("ddp/runs/*/summary.json")).read_text())


def test_two_gloo_processes_train_what_one_process_trains(tmp_path):
    # grad_accum 2: each rank takes half of each micro-batch, and gradients sync on the last one only
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC | {"train": SPEC["train"] | {"grad_accum": 2}}))
    assert runner.main([str(spec), "--results", str(tmp_path / "one"), "--no-report"]) == 0
    proc = torchrun(spec, tmp_path / "two")
    assert proc.returncode == 0, proc.stderr[-3000:]

    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [int(r["step"]) for r in two] == list(range(11))  # an evaluation after every one of 10 steps
    for a, b in zip(one, two):
        for key in ("train_loss", "val_loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-5), (a["step"], key)
    assert float(two[-1]["val_loss"]) < float(two[0]["val_loss"])
    # The exact final evaluation: each process scores its share of the windows, the sums agree.
    first, second = summary(tmp_path / "one"), summary(tmp_path / "two")
    assert (first["final_val_tokens"], first["final_val_bytes"]) == (second["final_val_tokens"], second["final_val_bytes"])
    assert second["final_val_loss"] == pytest.approx(first["final_val_loss"], rel=1e-5)
    assert second["final_val_bpb"] == pytest.approx(first["final_val_bpb"], rel=1e-5)

    # Only rank 0 wrote: the same files as a single process, one row in runs.csv, one progress line.
    one_files = sorted(p.name for p in next((tmp_path / "one").glob("ddp/runs/*")).iterdir())
    two_files = sorted(p.name for p in next((tmp_path / "two").glob("ddp/runs/*")).iterdir())
    assert one_files == two_files
    with open(tmp_path / "two" / "ddp" / "runs.csv", newline="") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["done"]
    assert proc.stdout.count(": done") == 1

    again = torchrun(spec, tmp_path / "two")  # every rank skips the finished run with rank 0
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 trained, 1 already done" in again.stdout


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC | {"train": SPEC["train"] | {"batch_size": 3, "steps": 2}}))
    proc = torchrun(spec, tmp_path / "r")
    assert proc.returncode != 0
    assert "must be divisible by the 2 processes" in (tmp_path / "r").joinpath(
        "ddp", "runs", next((tmp_path / "r" / "ddp" / "runs").iterdir()).name, "error.txt").read_text()


@pytest.fixture
def fake_launch(monkeypatch):
    """A torchrun environment with CUDA and NCCL present, and the calls that init() makes recorded."""
    import torch
    import torch.distributed as dist

    calls: dict = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend=None, **kw: calls.update(backend=backend, **kw))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.setdefault("set_device", []).append(device))
    return calls


def test_a_host_with_cuda_gets_a_backend_per_device_and_no_device_bound_at_start(fake_launch, monkeypatch):
    """CPU runs on a GPU host (tests/test_ddp.py itself) need gloo and no cuda:LOCAL_RANK; CUDA runs NCCL."""
    import torch
    import torch.distributed as dist

    from experiments import ddp
    ddp.init()
    assert fake_launch == {"backend": "cpu:gloo,cuda:nccl"}  # no set_device, no device_id
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ddp.backend() == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_nccl_available", lambda: False)
    assert ddp.backend() == "gloo"


def test_only_cuda_runs_set_their_device_and_an_explicit_cuda_n_is_kept(fake_launch, monkeypatch):
    import torch

    from experiments import ddp
    monkeypatch.setattr(ddp, "active", lambda: True)
    ddp.use_device(torch.device("cpu"))
    assert "set_device" not in fake_launch
    assert ddp.device("cuda:0") == "cuda:0" and ddp.device("cpu") == "cpu"
    assert ddp.device("auto") == ddp.device("cuda") == "cuda:1"  # LOCAL_RANK
    ddp.use_device(torch.device("cuda", 0))
    assert fake_launch["set_device"] == [torch.device("cuda", 0)]


def test_a_process_with_no_share_of_the_evaluation_windows_adds_nothing(tmp_path, monkeypatch):
    """More processes than windows (64 > 32): rank 0's share is empty; it still evaluates (and would join
    the sum) instead of dividing by zero."""
    import torch

    from experiments import ddp
    from experiments.runner import bind_data, data_key
    from experiments.spec import parse_spec
    from experiments.train import Trainer

    monkeypatch.setattr(ddp, "world", lambda: 64)
    monkeypatch.setattr(ddp, "rank", lambda: 0)
    spec = parse_spec({"experiment": "e", "seeds": [0], "sample": {"tokens": 0},
                       "data": {"corpus": "embedded", "tokenizer": "char"},
                       "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context_length": 16},
                       "train": {"steps": 2, "batch_size": 64, "warmup": 0, "eval_batches": 1, "device": "cpu",
                                 "tensorboard": False}})
    run = spec.runs[0]
    trainer = Trainer(run, bind_data(spec.runs)[data_key(run)], tmp_path, torch.device("cpu"))
    assert trainer.eval_sets["val"][0].shape == (0, 16)
    assert trainer.evaluate() == {"train": 0.0, "val": 0.0}                # this rank's part of the sum
