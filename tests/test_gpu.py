"""The CUDA paths, on a GPU (`pytest -m gpu`; `make gpu-check` runs them with the rest of its checks).

Each skips cleanly where CUDA is absent. Figures go to the test report through record_property, and
from there into gpu-check's CSV.
"""
from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from compile_grid import train_grid
from components.model import GPT
from experiments.schema import ModelConfig
from registry import ATTENTION, POSITIONAL

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU host: make gpu-check)")]

ROOT = Path(__file__).resolve().parent.parent
PAIRS = [(p, a) for p in POSITIONAL.names() for a in ATTENTION.names() if a != "none"]
VOCAB = 97  # pads to 128 on CUDA: the padded output matmul is exercised too


def sdpa_backend(positional: str, precision: str):
    """The fused kernel that should take each case on CUDA: flash (bf16, no bias), else memory-efficient."""
    from torch.nn.attention import SDPBackend
    return SDPBackend.EFFICIENT_ATTENTION if positional == "alibi" or precision == "fp32" else SDPBackend.FLASH_ATTENTION


def loss_and_grads(model, x, y, precision: str):
    """(loss, {name: gradient}, the logits' width) of one training step's forward and backward."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        _, loss = model(x, y, return_logits=False)
        width = model(x)[0].shape[-1]
    loss.backward()
    return loss.detach().float().cpu(), {n: p.grad.float().cpu() for n, p in model.named_parameters()}, width


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
@pytest.mark.parametrize("positional,attention", PAIRS, ids=[f"{p}-{a}" for p, a in PAIRS])
def test_cuda_training_step_matches_cpu_fp32(positional, attention, precision, record_property):
    """Forward and backward on CUDA, with only the fused kernel that should apply allowed (a fall back to
    SDPA's math kernel raises), finite and within 2e-2 of the same step in float32 on the CPU."""
    from torch.nn.attention import sdpa_kernel
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, context_length=64,
                         positional=positional, attention={"name": attention, "impl": "sdpa"})
    cpu_model = GPT(config)
    gpu_model = copy.deepcopy(cpu_model).cuda()
    x, y = (torch.randint(0, VOCAB, (4, 64), generator=torch.Generator().manual_seed(s)) for s in (1, 2))
    cpu_loss, cpu_grads, _ = loss_and_grads(cpu_model, x, y, "fp32")
    with sdpa_kernel([sdpa_backend(positional, precision)]):
        gpu_loss, gpu_grads, width = loss_and_grads(gpu_model, x.cuda(), y.cuda(), precision)
    assert torch.isfinite(gpu_loss) and all(torch.isfinite(g).all() for g in gpu_grads.values())
    assert width == VOCAB  # the padded columns never leave the head
    worst = max(((g - cpu_grads[n]).norm() / cpu_grads[n].norm().clamp_min(1e-12)).item() for n, g in gpu_grads.items())
    record_property("loss_diff", abs(gpu_loss - cpu_loss).item())
    record_property("grad_rel_err_max", worst)
    assert abs(gpu_loss - cpu_loss).item() <= 2e-2
    assert worst <= 2e-2


def tiny_spec(path: Path, **train) -> Path:
    spec = {"experiment": "cuda-resume", "seeds": [0], "data": {"corpus": "embedded", "tokenizer": "char"},
            "model": {"d_model": 64, "n_layers": 2, "n_heads": 4, "context_length": 64, "dropout": 0.1},
            "train": {"steps": 40, "batch_size": 8, "warmup": 4, "eval_every": 10, "checkpoint_every": 25,
                      "device": "cuda", **train},
            "sample": {"tokens": 20}}
    path.write_text(yaml.safe_dump(spec))
    return path


KILL_AT = ("import os, signal, sys\n"
           "from experiments import run, train\n"
           "real = train.Trainer.train_step\n"
           "def step(self):\n"
           "    if self.step == 27: os.kill(os.getpid(), signal.SIGKILL)  # two steps past the checkpoint at 25\n"
           "    return real(self)\n"
           "train.Trainer.train_step = step\n"
           "sys.exit(run.main(sys.argv[1:]))\n")


def cli(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "experiments.run", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_resume_on_cuda_after_a_kill_ends_as_an_uninterrupted_run(tmp_path, lab_cache, record_property):
    spec = tiny_spec(tmp_path / "s.yaml")
    killed = cli(str(spec), "--results", str(tmp_path / "killed"), "--no-report", code=KILL_AT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = next((tmp_path / "killed" / "cuda-resume" / "runs").iterdir())
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "summary.json").exists()
    again = cli(str(spec), "--results", str(tmp_path / "killed"), "--no-report")
    assert again.returncode == 0, again.stderr[-2000:]
    clean = cli(str(spec), "--results", str(tmp_path / "clean"), "--no-report")
    assert clean.returncode == 0, clean.stderr[-2000:]
    resumed = json.loads((run_dir / "summary.json").read_text())
    whole = json.loads(next((tmp_path / "clean").glob("cuda-resume/runs/*/summary.json")).read_text())
    assert resumed["status"] == "done" and resumed["resumed_at_step"] == 25 and resumed["device"].startswith("cuda")
    record_property("final_val_loss_diff", abs(resumed["final_val_loss"] - whole["final_val_loss"]))
    # What the run says about its numerics (the resolved precision, TF32: issue 17's records), for the CSV
    for key in sorted(k for k in resumed if "precision" in k or "tf32" in k or k == "autocast"):
        record_property(f"summary.{key}", resumed[key])
    assert resumed["final_val_loss"] == pytest.approx(whole["final_val_loss"], abs=1e-3)


def test_a_6_config_grid_runs_compiled_on_cuda(tmp_path, lab_cache, record_property):
    summaries = train_grid(tmp_path, "cuda", steps=8)
    record_property("graphs_per_run", [s["compile_graphs"] for s in summaries])
    record_property("wall_s_per_run", [s["wall_s"] for s in summaries])
    for s in summaries:
        assert s["status"] == "done" and s["compiled"] is True and s["eager_steps"] == 0, s
        assert s["recompiles_after_step_2"] == 0, s["compile_graph_steps"]


def test_nine_training_steps_make_no_hidden_host_sync(tmp_path, lab_cache):
    """Under torch.cuda.set_sync_debug_mode('error') any call that waits for the GPU raises."""
    from experiments.runner import bind_data, data_key
    from experiments.spec import parse_spec
    from experiments.train import Trainer
    run = parse_spec(yaml.safe_load(tiny_spec(tmp_path / "s.yaml", precision="bf16").read_text())).runs[0]
    trainer = Trainer(run, bind_data([run])[data_key(run)], tmp_path, torch.device("cuda"))
    for _ in range(2):  # first-call work (allocations, kernel selection) is not the step's
        trainer.train_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(9):
            trainer.train_step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


def test_generating_1100_tokens_from_an_alibi_model_at_context_1024_holds_bounded_memory(record_property):
    """Growing windows, then a full one sliding: one mask at context_length serves every length (a
    mask per length, as before, would hold ~4 GB here: 4 heads x sum of T^2 x 4 bytes)."""
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, context_length=1024, positional="alibi")
    model = GPT(config).cuda().eval()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model.generate(torch.zeros((1, 1), dtype=torch.long, device="cuda"), 1100, temperature=1.0, top_k=20)
    torch.cuda.synchronize()
    peak, after = torch.cuda.max_memory_allocated() - before, torch.cuda.memory_allocated() - before
    record_property("peak_mb", round(peak / 2**20, 1))
    record_property("held_after_mb", round(after / 2**20, 1))
    assert out.shape == (1, 1101) and int(out.max()) < VOCAB
    assert after < 1 << 20          # nothing kept per length (the output ids are a few kB)
    assert peak < 256 << 20         # the 16 MB mask, one layer's scores and a bf16 copy of the mask


def test_ddp_picks_nccl_for_cuda_tensors_and_gloo_for_the_cpu():
    from experiments import ddp
    assert ddp.backend() == ("cpu:gloo,cuda:nccl" if torch.distributed.is_nccl_available() else "gloo")
