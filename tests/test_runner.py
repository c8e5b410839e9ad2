"""The runner end to end on tiny models: results layout, skip/resume, locks, failures, exact resume."""
from __future__ import annotations

import csv
import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from experiments import run as runner
from experiments.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
TINY_MODEL = {"d_model": 32, "n_layers": 1, "n_heads": 2, "context_length": 16}
TINY_TRAIN = {"steps": 20, "batch_size": 4, "lr": 3e-3, "warmup": 2, "eval_every": 10, "eval_batches": 2,
              "device": "cpu"}  # pinned: on a GPU host `auto` would train in bf16, where exact resume is not bit-exact


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    """One token cache for the module (tokenizing once is enough), also seen by subprocesses."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def write_spec(path: Path, **sections) -> Path:
    spec = {"experiment": "t", "seeds": [0], "data": {"corpus": "embedded", "tokenizer": "char"},
            "model": dict(TINY_MODEL), "train": dict(TINY_TRAIN), "sample": {"tokens": 20}}
    for key, value in sections.items():
        spec[key] = {**spec[key], **value} if isinstance(value, dict) and key in ("model", "train", "data", "sample") else value
    path.write_text(yaml.safe_dump(spec))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_main(spec: Path, results: Path, *extra: str) -> int:
    return runner.main([str(spec), "--results", str(results), "--no-report", *extra])


def test_results_layout(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", seeds=[0, 1], grid={"model.block": ["post", "pre"]})
    assert run_main(spec, tmp_path / "r") == 0
    exp = tmp_path / "r" / "t"
    rows = read_csv(exp / "runs.csv")
    assert len(rows) == 4 and {r["status"] for r in rows} == {"done"}
    assert list(rows[0])[:4] == ["run_id", "variant", "model.block", "seed"]
    assert {r["model.block"] for r in rows} == {"post", "pre"}
    for row in rows:
        run_dir = exp / "runs" / row["run_id"]
        for name in ("spec.yaml", "tokenizer.json", "metrics.csv", "summary.json", "samples.txt", "checkpoint.pt"):
            assert (run_dir / name).exists(), name
        metrics = read_csv(run_dir / "metrics.csv")
        assert list(metrics[0]) == ["step", "tokens", "bytes", "flops", "lr", "train_loss", "val_loss", "val_bpb",
                                    "train_bpb", "elapsed_s"]
        assert [int(m["step"]) for m in metrics] == [0, 10, 20]
        assert int(metrics[-1]["tokens"]) == 20 * 4 * 16
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["final_val_tokens"] > 40_000 and summary["final_val_bytes"] >= summary["final_val_tokens"]
        assert summary["final_val_loss"] < float(metrics[0]["val_loss"])  # it learned something
        assert "final_test_loss" not in summary  # no test text unless data.test_fraction holds one out
        for key in ("params", "flops_per_token", "tokens_per_s", "wall_s", "torch", "python", "device",
                    "git_commit", "corpus_sha256"):
            assert summary[key] not in (None, ""), key
        assert (summary["precision"], summary["precision_setting"], summary["tf32"]) == ("fp32", "auto", False)
        run_spec = yaml.safe_load((run_dir / "spec.yaml").read_text())
        assert run_spec["seed"] == int(row["seed"]) and run_spec["precision"] == "fp32"  # auto, resolved
    plan = json.loads((exp / "experiment.json").read_text())
    assert plan["axes"] == ["model.block"] and len(plan["runs"]) == 4
    record = (exp / "spec.yaml").read_text()  # the command line, then the file as it was
    assert record.startswith(f"# python -m experiments.run {spec} --results ") and record.endswith(spec.read_text())


def test_second_invocation_trains_nothing_and_force_retrains(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml")
    assert run_main(spec, tmp_path / "r") == 0
    capsys.readouterr()
    assert run_main(spec, tmp_path / "r") == 0
    assert "0 trained, 1 already done" in capsys.readouterr().out
    assert run_main(spec, tmp_path / "r", "--force") == 0
    assert "1 trained, 0 already done" in capsys.readouterr().out


def test_a_force_killed_while_it_cleans_leaves_a_run_that_trains_again(tmp_path, capsys, monkeypatch):
    from experiments import runner

    spec = write_spec(tmp_path / "s.yaml")
    assert run_main(spec, tmp_path / "r") == 0
    real_unlink, removed = Path.unlink, []

    def killed_after_one(self, missing_ok=False):
        if removed:
            raise KeyboardInterrupt  # killed part way through the cleaning
        removed.append(self.name)
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        runner.Runner.force_clean(next((tmp_path / "r").glob("*/runs/*")))
    monkeypatch.setattr(Path, "unlink", real_unlink)
    capsys.readouterr()
    assert run_main(spec, tmp_path / "r") == 0
    assert "1 trained, 0 already done" in capsys.readouterr().out


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", grid={"model.n_layers": [1, 2]})
    assert run_main(spec, tmp_path / "r", "--dry-run") == 0
    out = capsys.readouterr().out
    assert "n_layers=1" in out and "n_layers=2" in out and "flops/token" in out
    assert not (tmp_path / "r").exists()


def test_only_selects_runs_by_variant_glob(tmp_path, capsys):
    spec = write_spec(tmp_path / "s.yaml", variants={"baseline": {}, "deeper": {"model.n_layers": 2}})
    assert run_main(spec, tmp_path / "r", "--only", "deep*") == 0
    rows = {r["variant"]: r["status"] for r in read_csv(tmp_path / "r" / "t" / "runs.csv")}
    assert rows == {"baseline": "pending", "deeper": "done"}


def test_grad_accumulation_sees_the_same_data_and_scales_the_loss(tmp_path):
    summaries = []
    for name, batch, accum in (("one", 8, 1), ("two", 4, 2)):
        spec = write_spec(tmp_path / f"{name}.yaml", experiment=name, train={"batch_size": batch, "grad_accum": accum})
        assert run_main(spec, tmp_path / "r") == 0
        summaries.append(json.loads(next((tmp_path / "r" / name / "runs").glob("*/summary.json")).read_text()))
    assert summaries[0]["final_val_loss"] == pytest.approx(summaries[1]["final_val_loss"], abs=1e-5)


def test_every_batch_size_is_scored_on_the_same_evaluation_windows(tmp_path):
    """The periodic evaluation (the curves, best_val_*) of one model and seed does not depend on how the
    runs batch their training: 8, 16, and 4 x 4 accumulated score the same windows."""
    from experiments.runner import bind_data, data_key
    from experiments.spec import parse_spec

    rows = []
    for batch, accum in ((8, 1), (16, 1), (4, 4)):
        spec = parse_spec({"experiment": "ev", "seeds": [0], "model": dict(TINY_MODEL), "sample": {"tokens": 0},
                           "train": TINY_TRAIN | {"batch_size": batch, "grad_accum": accum, "tensorboard": False}})
        run = spec.runs[0]
        trainer = Trainer(run, bind_data(spec.runs)[data_key(run)], tmp_path / f"{batch}x{accum}", torch.device("cpu"))
        assert trainer.eval_sets["val"][0].shape == (TINY_TRAIN["eval_batches"] * 32, TINY_MODEL["context_length"])
        rows.append(trainer.record(0.0))
    for row in rows[1:]:
        for key in ("val_loss", "val_bpb", "train_loss"):
            assert row[key] == pytest.approx(rows[0][key], rel=1e-6)


def test_divergence_stops_that_run_and_the_rest_go_on(tmp_path, monkeypatch, capsys):
    real_step = Trainer.train_step

    def exploding(self):
        loss = real_step(self)
        return loss * float("nan") if self.run.model["n_layers"] == 2 else loss

    monkeypatch.setattr(Trainer, "train_step", exploding)
    spec = write_spec(tmp_path / "s.yaml", variants={"baseline": {}, "unstable": {"model.n_layers": 2}})
    assert run_main(spec, tmp_path / "r") == 0
    rows = {r["variant"]: r["status"] for r in read_csv(tmp_path / "r" / "t" / "runs.csv")}
    assert rows == {"baseline": "done", "unstable": "diverged"}


def test_a_crashing_run_is_recorded_and_the_rest_go_on(tmp_path, monkeypatch, capsys):
    real_fit = Trainer.fit

    def broken(self):
        if self.run.model["n_layers"] == 2:
            raise RuntimeError("simulated failure")
        return real_fit(self)

    monkeypatch.setattr(Trainer, "fit", broken)
    spec = write_spec(tmp_path / "s.yaml", variants={"baseline": {}, "broken": {"model.n_layers": 2}})
    assert run_main(spec, tmp_path / "r") == 1
    assert "1 run(s) failed" in capsys.readouterr().err
    rows = read_csv(tmp_path / "r" / "t" / "runs.csv")
    assert {r["variant"]: r["status"] for r in rows} == {"baseline": "done", "broken": "failed"}
    failed = next(r for r in rows if r["status"] == "failed")
    assert "simulated failure" in (tmp_path / "r" / "t" / "runs" / failed["run_id"] / "error.txt").read_text()
    monkeypatch.setattr(Trainer, "fit", real_fit)
    assert run_main(spec, tmp_path / "r") == 0  # a failed run is retried on the next invocation


def cli(spec: Path, results: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "experiments.run", str(spec), "--results", str(results),
                             "--no-report"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# The child process kills itself with SIGKILL in the middle of writing its third checkpoint (step 75):
# the same moment on every machine, however fast or loaded, and the worst one (a half-written file).
KILLED_MID_CHECKPOINT = """
import os, signal, sys
from experiments import checkpoint, run
real_save, saves = checkpoint.save, []
def save(path, state):
    saves.append(state["step"])
    if len(saves) == 3:
        def write_half_then_die(self, data):
            self.f.write(data[: len(data) // 2]); self.f.flush(); os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.HashingWriter.write = write_half_then_die
    real_save(path, state)
checkpoint.save = save
run.main(sys.argv[1:])
"""


def test_sigkill_mid_training_then_resume_equals_an_uninterrupted_run(tmp_path):
    long = {"steps": 300, "eval_every": 50, "checkpoint_every": 25}
    spec = write_spec(tmp_path / "s.yaml", train=long)
    argv = [str(spec), "--results", str(tmp_path / "killed"), "--no-report"]
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_CHECKPOINT, *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    exp = tmp_path / "killed" / "t"
    [run_dir] = exp.glob("runs/*")
    assert not (run_dir / "summary.json").exists() and list(run_dir.glob(".checkpoint.pt.*.tmp"))  # half a file
    assert run_main(spec, tmp_path / "killed") == 0
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["status"] == "done" and resumed["resumed_at_step"] == 50
    assert not list(run_dir.glob(".*.tmp")), "the leftover temporary file was not removed"

    assert run_main(spec, tmp_path / "clean") == 0
    clean = json.loads(next((tmp_path / "clean" / "t").glob("runs/*/summary.json")).read_text())
    assert math.isclose(resumed["final_val_loss"], clean["final_val_loss"], abs_tol=1e-6)
    killed_metrics = read_csv(run_dir / "metrics.csv")
    assert [m["step"] for m in killed_metrics] == [str(s) for s in range(0, 301, 50)]


def test_two_runners_share_one_spec_and_never_train_a_run_twice(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", seeds=[0, 1, 2], grid={"model.block": ["post", "pre"]},
                      train={"steps": 40})
    procs = [cli(spec, tmp_path / "r") for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    trained = [line.split()[1] for out in outputs for line in out.splitlines()
               if line.startswith("[") and line.endswith(tuple("0123456789")) and ": done" in line]
    assert len(trained) == 6 and len(set(trained)) == 6, outputs
    rows = read_csv(tmp_path / "r" / "t" / "runs.csv")
    assert len(rows) == 6


def test_lock_is_exclusive_and_freed_when_its_holder_dies(tmp_path):
    from experiments.files import RunLock

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from experiments.files import RunLock; "
        f"lock = RunLock(Path({str(tmp_path)!r})); assert lock.acquire(); print('held', flush=True); time.sleep(60)")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    lock = RunLock(tmp_path)
    assert lock.held_elsewhere() and not lock.acquire()
    holder.kill()
    holder.wait()
    assert not lock.held_elsewhere() and lock.acquire()
    lock.release()


def test_bits_per_byte_follow_the_formula(tmp_path):
    """Curves: the sampled windows' nats over their target bytes; summary: the whole text's."""
    from experiments.data import Batches, load_dataset

    from experiments.data import Embedded

    corpus = tmp_path / "docs.txt"  # a fifth of the embedded corpus: a shorter final evaluation
    corpus.write_bytes(Embedded().read()[:90_000])
    spec = write_spec(tmp_path / "s.yaml", data={"corpus": str(corpus), "tokenizer": "gpt2"})  # bytes per token vary
    assert run_main(spec, tmp_path / "r") == 0
    metrics = read_csv(next((tmp_path / "r" / "t").glob("runs/*/metrics.csv")))[-1]
    ds = load_dataset(str(corpus), "gpt2", 0.1)
    batches = Batches(ds, TINY_MODEL["context_length"], TINY_TRAIN["batch_size"], seed=0)
    targets = np.concatenate([y.numpy().ravel() for _, y in batches.eval_batches("val", TINY_TRAIN["eval_batches"])])
    expected = float(metrics["val_loss"]) * len(targets) / ds.token_bytes[targets].sum() / math.log(2)
    assert float(metrics["val_bpb"]) == pytest.approx(expected, rel=1e-6)
    summary = json.loads(next((tmp_path / "r" / "t").glob("runs/*/summary.json")).read_text())
    assert (summary["final_val_tokens"], summary["final_val_bytes"]) == (len(ds.val) - 1, ds.token_bytes[ds.val[1:]].sum())
    assert summary["final_val_bpb"] == pytest.approx(
        summary["final_val_loss"] * summary["final_val_tokens"] / summary["final_val_bytes"] / math.log(2), rel=1e-12)
    # The final evaluation covers the whole validation text but its first token (issue 12: >= 99%).
    assert summary["final_val_bytes"] / ds.texts["val"].n_bytes >= 0.99


def test_sample_uses_the_runs_own_tokenizer(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", sample={"prompt": "def ", "tokens": 30})
    assert run_main(spec, tmp_path / "r") == 0
    text = next((tmp_path / "r" / "t").glob("runs/*/samples.txt")).read_text()
    assert text.startswith("def ") and len(text) == len("def ") + 30 + 1


def test_seeded_training_is_reproducible(tmp_path):
    spec = write_spec(tmp_path / "s.yaml", model={"dropout": 0.1})
    for name in ("a", "b"):
        assert run_main(spec, tmp_path / name) == 0
    a, b = (json.loads(next((tmp_path / n / "t").glob("runs/*/summary.json")).read_text()) for n in ("a", "b"))
    assert a["final_val_loss"] == b["final_val_loss"]
    assert torch.get_num_threads() >= 1


def test_the_progress_line_says_a_run_resumed_and_flags_a_loss_worse_than_a_uniform_guess():
    from experiments.run import outcome_text

    assert outcome_text("done", {"final_val_loss": 2.5, "vocab_size": 65, "resumed_at_step": None}) == "done, val loss 2.5000"
    assert outcome_text("done", {"final_val_loss": 12.4, "vocab_size": 103, "resumed_at_step": 100}) == (
        "done, val loss 12.4000 (worse than a uniform guess over its 103 tokens: ln 103 = 4.63), resumed from step 100")
