"""Broken and hostile input at run time (issue 14): crafted and damaged checkpoints, the file system
failing under the results folder, Ctrl-C, damaged run files, edited specs, permissions, secrets, the
lock probe, and the memory check. The hostile *specs* are in tests/bad_specs/ (tests/test_bad_specs.py)."""
from __future__ import annotations

import csv
import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from experiments import checkpoint, files
from experiments import run as run_command
from experiments.data import Embedded
from experiments.train import Trainer

ROOT = Path(__file__).resolve().parent.parent
TRAIN = {"steps": 20, "batch_size": 4, "lr": 3e-3, "warmup": 2, "eval_every": 10, "eval_batches": 2,
         "checkpoint_every": 5, "device": "cpu"}  # exact comparisons: the CPU, also on a GPU host


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """20 kB of the embedded corpus: a short final evaluation keeps each tiny run near a second."""
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_bytes(Embedded().read()[:20_000])
    return path


@pytest.fixture(autouse=True)
def cache(lab_cache):
    return lab_cache


def write_spec(path: Path, corpus: Path, **extra) -> Path:
    spec = {"experiment": "t", "seeds": [0], "data": {"corpus": str(corpus), "tokenizer": "char"},
            "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context_length": 16},
            "train": dict(TRAIN), "sample": {"tokens": 5}, **extra}
    path.write_text(yaml.safe_dump(spec))
    return path


def main(spec: Path, results: Path, *extra: str) -> int:
    return run_command.main([str(spec), "--results", str(results), "--no-report", *extra])


def only_run(results: Path) -> Path:
    [run_dir] = (results / "t" / "runs").iterdir()
    return run_dir


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


class Evil:
    """Unpickled, this would create a file: what a crafted checkpoint does to whoever opens it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def plant(path: Path, state: dict) -> None:
    """Write `state` as a checkpoint with a checksum that matches it (a forger can write both)."""
    checkpoint.save(path, state)


# -- checkpoints ---------------------------------------------------------------------------------
def test_a_crafted_checkpoint_runs_no_code_and_its_run_starts_again(tmp_path, corpus, capsys):
    from experiments import generate

    spec = write_spec(tmp_path / "s.yaml", corpus)
    assert main(spec, tmp_path / "r") == 0
    run_dir = only_run(tmp_path / "r")
    clean_loss = summary(run_dir)["final_val_loss"]
    marker = tmp_path / "pwned"
    plant(run_dir / "checkpoint.pt", {"model": Evil(marker), "step": 5})
    capsys.readouterr()

    assert generate.main([str(run_dir), "--tokens", "3"]) == 2
    err = capsys.readouterr().err
    assert "holds more than tensors and plain data, so it was not loaded" in err and "Traceback" not in err
    assert not marker.exists()

    (run_dir / "summary.json").unlink()  # unfinished: the next invocation resumes it from the checkpoint
    assert main(spec, tmp_path / "r") == 0
    assert "training it again from step 0" in capsys.readouterr().err and not marker.exists()
    again = summary(run_dir)
    assert again["status"] == "done" and again["resumed_at_step"] is None and again["checkpoint_discarded"]
    assert again["final_val_loss"] == clean_loss  # from scratch, seeded: the very same run


@pytest.mark.parametrize("damage", ["flipped", "large_value", "truncated"])
def test_a_damaged_checkpoint_is_detected_and_its_run_restarted(tmp_path, corpus, capsys, damage):
    spec = write_spec(tmp_path / "s.yaml", corpus)
    assert main(spec, tmp_path / "r") == 0
    run_dir = only_run(tmp_path / "r")
    clean_loss = summary(run_dir)["final_val_loss"]
    path = run_dir / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    if damage == "flipped":
        data[len(data) // 2] ^= 0x40
    elif damage == "large_value":  # a float32 of 1e30 over some weight: the run would end `diverged`
        data[len(data) // 3: len(data) // 3 + 4] = np.float32(1e30).tobytes()
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    (run_dir / "summary.json").unlink()
    capsys.readouterr()
    for _ in range(2):  # never failing the same way on the next invocation
        assert main(spec, tmp_path / "r") == 0
        assert summary(run_dir)["status"] == "done" and summary(run_dir)["final_val_loss"] == clean_loss
    assert capsys.readouterr().err.count("does not match the checksum") == 1


def test_a_diverging_run_never_checkpoints_weights_that_are_not_finite(tmp_path, corpus, capsys):
    """The loss is checked every few steps; a checkpoint in between must not keep NaN weights, and
    generate / export refuse a checkpoint that has them (one written before this check existed)."""
    from experiments import export, generate

    spec = write_spec(tmp_path / "s.yaml", corpus, train={**TRAIN, "steps": 40, "lr": 1e4, "grad_clip": 0, "warmup": 0,
                                                         "checkpoint_every": 1, "eval_every": 40})
    assert main(spec, tmp_path / "r") == 0
    run_dir = only_run(tmp_path / "r")
    assert summary(run_dir)["status"] == "diverged" and "weights are not finite" in summary(run_dir)["error"]
    state = checkpoint.load(run_dir / "checkpoint.pt")  # the last one saved, from before the divergence
    assert 0 < state["step"] < 40 and all(bool(t.isfinite().all()) for t in state["model"].values())
    capsys.readouterr()
    code = generate.main([str(run_dir), "--tokens", "3"])  # it says whose model it is, then samples if it can
    err = capsys.readouterr().err
    assert f"run {run_dir.name} diverged: its model is the checkpoint of step {state['step']}" in err
    assert code == 0 or (code == 2 and "error: the model's next-token logits are not finite" in err)
    state["model"] = {k: torch.full_like(t, float("nan")) for k, t in state["model"].items()}
    checkpoint.save(run_dir / "checkpoint.pt", state)
    capsys.readouterr()
    assert generate.main([str(run_dir), "--tokens", "3"]) == 2
    assert export.main([str(run_dir), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("its weights are not finite") == 2 and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_generate_says_when_the_checkpoint_is_not_a_finished_runs(tmp_path, corpus, capsys):
    from experiments import generate

    spec = write_spec(tmp_path / "s.yaml", corpus)
    assert main(spec, tmp_path / "r") == 0
    run_dir = only_run(tmp_path / "r")
    capsys.readouterr()
    assert generate.main([str(run_dir), "--tokens", "3"]) == 0 and "note:" not in capsys.readouterr().err
    (run_dir / "summary.json").unlink()  # as if still training, or killed
    assert generate.main([str(run_dir), "--tokens", "3"]) == 0
    assert f"note: run {run_dir.name} has not finished: its model is the checkpoint of step {TRAIN['steps']}" \
        in capsys.readouterr().err


def test_a_killed_writers_leftovers_in_the_experiment_folder_are_removed_once_stale(tmp_path, corpus):
    """runs.csv, experiment.json and the analysis's staging folder have no lock: their temporary files
    are removed once an hour old (a write in progress keeps its own fresh)."""
    from analysis.report import write_report

    spec = write_spec(tmp_path / "s.yaml", corpus)
    assert main(spec, tmp_path / "r") == 0
    exp = tmp_path / "r" / "t"
    stale = [exp / ".runs.csv.ab12.tmp", exp / ".analysis.cd34.tmp"]
    stale[0].write_text("half a table")
    stale[1].mkdir()
    (stale[1] / "plot.png").write_bytes(b"half a plot")
    fresh = exp / ".experiment.json.ef56.tmp"
    fresh.write_text("{")
    for path in stale:
        os.utime(path, (0, 0))
    assert main(spec, tmp_path / "r") == 0
    assert not any(p.exists() for p in stale) and fresh.exists()
    stale[1].mkdir()
    os.utime(stale[1], (0, 0))
    write_report(exp)
    assert not stale[1].exists() and fresh.exists() and (exp / "report.md").is_file()


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.random(), np.random.rand(), torch.rand(1)  # mid-stream states, not fresh ones
    path = tmp_path / "checkpoint.pt"
    plant(path, {"model": {}, "rng": checkpoint.rng_state()})
    expected = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    torch.load(path, map_location="cpu", weights_only=True)  # plain data only, nothing refused
    checkpoint.set_rng_state(checkpoint.load(path)["rng"])
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == expected


def test_a_crash_between_a_checkpoint_and_its_record_leaves_a_matching_pair(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    plant(path, {"model": {"w": torch.zeros(2)}, "step": 1})
    real_replace = os.replace

    def crash_at_the_rename(src, dst):
        if Path(dst) == path:
            raise KeyboardInterrupt  # killed after the record names both files, before the new one is in place
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_at_the_rename)
    for step in (2, 3):  # twice in a row: the second save must still accept the file in place
        with pytest.raises(KeyboardInterrupt):
            plant(path, {"model": {"w": torch.ones(2)}, "step": step})
        assert checkpoint.load(path)["step"] == 1 and not list(tmp_path.glob(".*.tmp"))
    monkeypatch.setattr(os, "replace", real_replace)
    plant(path, {"model": {"w": torch.ones(2)}, "step": 4})
    assert checkpoint.load(path)["step"] == 4 and checkpoint.recorded(path) == [checkpoint.file_sha256(path)]


def test_ctrl_c_during_a_checkpoint_save_waits_for_the_save_to_end(tmp_path, monkeypatch):
    """Raised inside torch.save's writer, the KeyboardInterrupt left a C++ writer behind that aborted
    the process later (SIGABRT, exit -6); now Ctrl-C waits until the checkpoint is whole."""
    path, real_write, pressed = tmp_path / "checkpoint.pt", checkpoint.HashingWriter.write, []

    def write_and_press_ctrl_c(self, data):
        if not pressed:
            pressed.append(True)
            signal.raise_signal(signal.SIGINT)
        return real_write(self, data)

    monkeypatch.setattr(checkpoint.HashingWriter, "write", write_and_press_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        plant(path, {"model": {"w": torch.ones(2)}, "step": 3})
    assert pressed and checkpoint.load(path)["step"] == 3 and not list(tmp_path.glob(".*.tmp"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_full_disk_inside_torch_save_is_reported_as_a_full_disk(tmp_path, monkeypatch):
    """torch.save, closing its archive after the failed write, raised a RuntimeError ("unexpected pos")
    that hid the OSError, so the runner recorded a failed run instead of saying the disk is full."""
    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.HashingWriter, "write", full)
    with pytest.raises(OSError) as err:
        plant(tmp_path / "checkpoint.pt", {"model": {"w": torch.ones(2)}, "step": 3})
    assert err.value.errno == errno.ENOSPC and not list(tmp_path.iterdir())


def test_a_damaged_tokenizer_json_is_one_clean_error(tmp_path, capsys):
    from experiments import generate
    from tiny_runs import tiny_runs

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_runs()["baseline"], run_dir)
    for damaged in (b'{"name": "char", "vo', b"\xff\xfe not json", b'{"name": "char", "vocab": 7}'):
        (run_dir / "tokenizer.json").write_bytes(damaged)
        assert generate.main([str(run_dir), "--tokens", "3"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "tokenizer.json' is damaged" in err and err.count("\n") == 1


# -- the results folder and the file system ------------------------------------------------------
def fail_with(monkeypatch, code: int, after: int = 0) -> None:
    """Every atomic write after the first `after` fails the way a full (or read-only) disk does."""
    real = files.atomic_write
    calls = []

    def failing(path, write, mode="w", before_replace=None):
        calls.append(path)
        if len(calls) > after:
            def write_then_fail(f):
                write(f)
                raise OSError(code, os.strerror(code))
            return real(path, write_then_fail, mode, before_replace)
        return real(path, write, mode, before_replace)

    monkeypatch.setattr(files, "atomic_write", failing)


@pytest.mark.parametrize("case", ["results_is_a_file", "name_too_long", "disk_full", "disk_full_mid_run"])
def test_filesystem_errors_are_one_message_and_leave_nothing_half_written(tmp_path, corpus, capsys, monkeypatch,
                                                                           case):
    spec = write_spec(tmp_path / "s.yaml", corpus)
    results, expected = tmp_path / "r", {"results_is_a_file": "a part of the path is a file, not a folder",
                                         "name_too_long": "a file name is too long",
                                         "disk_full": "no space is left on the disk",
                                         "disk_full_mid_run": "no space is left on the disk"}[case]
    if case == "results_is_a_file":
        results.write_text("not a folder")
    elif case == "name_too_long":
        results = tmp_path / ("x" * 300)
    else:  # the spec copy fails, or (mid run) the first checkpoint after the run's own files
        fail_with(monkeypatch, errno.ENOSPC, after=0 if case == "disk_full" else 4)
    assert main(spec, results) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write the results") and expected in err
    assert err.count("\n") == 1 and "Traceback" not in err
    if case == "disk_full":
        assert not results.exists()  # the experiment folder it had just made is gone again
    assert not [p for p in tmp_path.rglob("*.tmp")], "a temporary file was left behind"


def test_a_finished_experiment_lists_again_from_read_only_storage(tmp_path, corpus, capsys, monkeypatch):
    spec = write_spec(tmp_path / "s.yaml", corpus)
    old_umask = os.umask(0o027)
    try:
        assert main(spec, tmp_path / "r") == 0
    finally:
        os.umask(old_umask)
    written = [p for p in (tmp_path / "r").rglob("*") if p.is_file()]
    assert {stat.S_IMODE(p.stat().st_mode) for p in written} == {0o640}, "files must follow the umask"
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in written}
    fail_with(monkeypatch, errno.EROFS)  # any write now fails as on read-only storage
    monkeypatch.setattr(files.RunLock, "acquire", lambda self, patience=None: pytest.fail("a finished run was locked"))
    capsys.readouterr()
    moved = tmp_path / "elsewhere"
    (tmp_path / "r").rename(moved)  # copied to other storage: the command line differs, the spec does not
    assert main(spec, moved, "--only", "*") == 0
    assert "0 trained, 1 already done" in capsys.readouterr().out
    written = {moved / p.relative_to(tmp_path / "r"): times for p, times in before.items()}
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in written} == written  # nothing was rewritten


# -- runs that break, and the runner around them ---------------------------------------------------
def test_a_truncated_summary_is_trained_again_and_the_rest_go_on(tmp_path, corpus, capsys):
    spec = write_spec(tmp_path / "s.yaml", corpus, variants={"a": {}, "b": {"model.n_layers": 2}})
    assert main(spec, tmp_path / "r") == 0
    first, second = sorted((tmp_path / "r" / "t" / "runs").iterdir())
    losses = {p: summary(p)["final_val_loss"] for p in (first, second)}
    (first / "summary.json").write_text('{"status": "do')
    capsys.readouterr()
    assert main(spec, tmp_path / "r") == 0
    out, err = capsys.readouterr()
    assert "its summary.json cannot be read; training it again" in err and "1 trained, 1 already done" in out
    assert summary(first)["resumed_at_step"] == 20 and summary(first)["final_val_loss"] == losses[first]


@pytest.mark.parametrize("damage", [{"final_val_bpb": None}, {"final_val_loss": "x"}, {"final_val_bpb": float("inf")}])
def test_a_done_summary_without_its_final_scores_is_trained_again(tmp_path, corpus, capsys, damage):
    spec = write_spec(tmp_path / "s.yaml", corpus, variants={"a": {}, "b": {"model.n_layers": 2}})
    assert main(spec, tmp_path / "r") == 0
    first, second = sorted((tmp_path / "r" / "t" / "runs").iterdir())
    scores = {k: summary(first)[k] for k in ("final_val_loss", "final_val_bpb")}
    (first / "summary.json").write_text(json.dumps({k: v for k, v in summary(first).items() if k not in damage} | {
        k: v for k, v in damage.items() if v is not None}))           # a score removed, or not a finite number
    (second / "summary.json").write_text(json.dumps(summary(second) | {"status": "diverged", "final_val_loss": None,
                                                                       "final_val_bpb": None}))  # legitimately null
    capsys.readouterr()
    assert main(spec, tmp_path / "r") == 0
    out, err = capsys.readouterr()
    assert "its summary.json cannot be read; training it again" in err and "1 trained, 1 already done" in out
    assert {k: summary(first)[k] for k in scores} == scores and summary(second)["status"] == "diverged"
    rows = {r["run_id"]: r for r in csv.DictReader((tmp_path / "r" / "t" / "runs.csv").open())}
    assert rows[first.name]["final_val_bpb"] == str(scores["final_val_bpb"])


def test_the_analysis_reads_past_damaged_run_files(tmp_path):
    from analysis.tables import load_experiment
    from synthetic import Run, build_experiment

    exp = build_experiment(tmp_path, "e", [Run("baseline", s, 1.5 + s / 10) for s in range(3)], variants=["baseline"])
    runs = sorted((exp / "runs").iterdir())
    (runs[0] / "metrics.csv").write_bytes((runs[0] / "metrics.csv").read_bytes() + b"\xff\xfe,1,\x80\n")
    (runs[1] / "summary.json").write_text('{"status": "do')
    loaded = load_experiment(exp)
    assert len(loaded.runs) == 3 and loaded.metrics["run_id"].nunique() == 3


def test_ctrl_c_says_where_it_stopped_and_the_run_resumes(tmp_path, corpus, capsys, monkeypatch):
    real_step = Trainer.train_step

    def interrupted_at_7(self):
        if self.step == 7:
            raise KeyboardInterrupt
        return real_step(self)

    spec = write_spec(tmp_path / "s.yaml", corpus)
    monkeypatch.setattr(Trainer, "train_step", interrupted_at_7)
    assert main(spec, tmp_path / "r") == 130
    run_dir = only_run(tmp_path / "r")
    assert capsys.readouterr().err == f"interrupted at step 7 of run {run_dir.name}; rerun the same command to resume\n"
    monkeypatch.setattr(Trainer, "train_step", real_step)
    assert main(spec, tmp_path / "r") == 0
    assert summary(run_dir)["status"] == "done" and summary(run_dir)["resumed_at_step"] == 5


def test_ctrl_c_through_the_real_command_has_no_traceback(tmp_path, corpus):
    spec = write_spec(tmp_path / "s.yaml", corpus)
    script = ("import sys; from experiments import run; from experiments.train import Trainer\n"
              "def stop(self): raise KeyboardInterrupt\n"
              "Trainer.train_step = stop\n"
              "sys.exit(run.main(sys.argv[1:]))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(spec), "--results", str(tmp_path / "r")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("interrupted at step 0 of run ")
    assert proc.stderr.endswith("; rerun the same command to resume\n")


def test_run_folders_of_an_earlier_spec_are_named_not_dropped(tmp_path, corpus, capsys):
    spec = write_spec(tmp_path / "s.yaml", corpus)
    assert main(spec, tmp_path / "r") == 0
    old = only_run(tmp_path / "r").name
    write_spec(spec, corpus, train={**TRAIN, "lr": 2e-3})
    capsys.readouterr()
    assert main(spec, tmp_path / "r") == 0
    out = capsys.readouterr().out
    assert f"note: 1 run folder(s) under {tmp_path / 'r' / 't' / 'runs'} are not in the current spec" in out
    assert old in out.split("note:")[1]


# -- locks ---------------------------------------------------------------------------------------
def test_the_lock_probe_never_makes_a_runner_skip_a_run(tmp_path, monkeypatch):
    """While runs.csv is rebuilt, a process probes each pending run's lock for a moment; a runner that
    tries to take the lock in that moment must wait it out, not skip the run as 'running elsewhere'."""
    import fcntl

    lock = files.RunLock(tmp_path)
    lock.path.touch()
    probe = open(lock.path, "rb")
    fcntl.flock(probe, fcntl.LOCK_SH | fcntl.LOCK_NB)  # the probe's moment, frozen
    monkeypatch.setattr(files.time, "sleep", lambda s: probe.close())  # ... which ends while acquire() waits
    assert lock.acquire()
    assert files.RunLock(tmp_path).held_elsewhere()  # held by us now, as any other handle sees it
    lock.release()


# -- secrets -------------------------------------------------------------------------------------
URL = "postgresql+psycopg2://lab:s3cret-pw@db.example:5432/lab"


def test_no_storage_password_is_written_or_put_on_a_command_line(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from experiments.search import cli, study
    from experiments.search.plan import make_plan
    from experiments.spec import parse_spec
    from registry import SpecError

    base = {"experiment": "s", "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context_length": 16},
            "train": {"steps": 2, "warmup": 0}}
    with pytest.raises(SpecError, match="search.storage holds a password"):
        parse_spec({**base, "search": {"storage": URL, "space": {"model.n_heads": [1, 2]}}})
    spec = parse_spec({**base, "search": {"space": {"model.n_heads": [1, 2]}}})
    args = SimpleNamespace(storage=URL, results=str(tmp_path), workers=2, device=None, no_report=True)
    plan = make_plan(spec, args, tmp_path / "s")
    assert "s3cret-pw" not in json.dumps(plan.experiment_record([])) and plan.storage_url == URL
    assert plan.storage_record == "postgresql+psycopg2://lab@db.example:5432/lab"

    started = []
    monkeypatch.setattr(cli.subprocess, "Popen", lambda cmd, env: started.append((cmd, env)) or SimpleNamespace(
        pid=1, wait=lambda: 0))
    plan.args.spec = tmp_path / "spec.yaml"
    assert cli.spawn_workers(plan, 2) == 0
    assert all("s3cret-pw" not in " ".join(cmd) and env[study.STORAGE_ENV] == URL for cmd, env in started)
    monkeypatch.setenv(study.STORAGE_ENV, URL)  # how a worker (or the analysis) gets the password back
    assert study.with_credentials(plan.storage_record) == URL


# -- the memory a run needs ----------------------------------------------------------------------
def test_a_run_that_cannot_fit_is_refused_before_anything_is_built(tmp_path, monkeypatch):
    from experiments import resources
    from experiments.runner import bind_data
    from experiments.spec import parse_spec
    from registry import SpecError

    monkeypatch.setattr(resources, "device_memory", lambda device: 8 << 30)  # the same answer on any machine
    spec = parse_spec({"experiment": "m", "model": {"preset": "gpt2-124m"}, "train": {"batch_size": 8}})
    datasets = bind_data(spec.runs)  # 86 M parameters with a char vocabulary, and 8 x 1024 tokens: ~5.4 GiB
    run, vocab = spec.runs[0], next(iter(datasets.values())).vocab_size
    parts = resources.needs(run, vocab)
    assert parts["weights and AdamW state"] == resources.meta_model(run.model, vocab).num_params() * 16
    assert 5 << 30 < sum(parts.values()) < 6 << 30
    spec = parse_spec({"experiment": "m", "model": {"preset": "gpt2-124m"}, "train": {"batch_size": 64}})
    with pytest.raises(SpecError, match=r"run baseline \(seed 0\) needs ~\d+\.\d GiB, this machine has 8\.0 GiB"):
        bind_data(spec.runs)


def test_a_checkpoint_replaced_while_it_is_checked_is_not_called_damaged(tmp_path, monkeypatch):
    """generate on a run that is still training: a save may land between reading the record and hashing
    the file; the record is read again before the file is called damaged."""
    path = tmp_path / "checkpoint.pt"
    plant(path, {"model": {"w": torch.zeros(2)}, "step": 1})
    real_hash = checkpoint.file_sha256

    def a_save_lands_first(p):
        monkeypatch.setattr(checkpoint, "file_sha256", real_hash)
        plant(path, {"model": {"w": torch.ones(2)}, "step": 2})  # record and file, both new
        return real_hash(p)

    monkeypatch.setattr(checkpoint, "file_sha256", a_save_lands_first)
    assert checkpoint.load(path)["step"] == 2


def test_an_empty_results_or_a_foreign_folder_of_the_experiments_name_is_refused(tmp_path, corpus, capsys,
                                                                                  monkeypatch):
    """--results '' (an unset shell variable) made the experiment in the current folder; a folder of the
    experiment's name that is not the lab's (docs/, say) got the lab's files mixed into its own."""
    spec = write_spec(tmp_path / "s.yaml", corpus)
    monkeypatch.chdir(tmp_path)
    assert run_command.main([str(spec), "--results", ""]) == 2
    assert "--results is empty" in capsys.readouterr().err and not (tmp_path / "t").exists()
    foreign = tmp_path / "src" / "t"
    foreign.mkdir(parents=True)
    (foreign / "notes.md").write_text("mine\n")
    for extra in ([], ["--dry-run"]):
        assert run_command.main([str(spec), "--results", str(tmp_path / "src"), *extra]) == 2
        err = capsys.readouterr().err
        assert "holds notes.md, which the lab does not write" in err and "Traceback" not in err
    assert [p.name for p in foreign.iterdir()] == ["notes.md"]
    assert main(spec, tmp_path / "r") == 0 and main(spec, tmp_path / "r") == 0  # its own folder: fine, again


def test_a_second_spec_under_a_running_experiments_name_is_refused(tmp_path, corpus, capsys):
    """Its experiment.json replaced the running one's plan: that runner then disowned its own runs."""
    spec = write_spec(tmp_path / "s.yaml", corpus)
    assert main(spec, tmp_path / "r") == 0
    [run_dir] = (tmp_path / "r" / "t" / "runs").iterdir()
    (run_dir / "summary.json").unlink()              # unfinished again, and a live process holds it
    lock = files.RunLock(run_dir)
    assert lock.acquire()
    try:
        plan = (tmp_path / "r" / "t" / "experiment.json").read_text()
        edited = write_spec(tmp_path / "e.yaml", corpus, train={**TRAIN, "lr": 1e-3})
        assert main(edited, tmp_path / "r") == 2
        err = capsys.readouterr().err
        assert "another spec is running as experiment 't'" in err and run_dir.name in err and "Traceback" not in err
        assert (tmp_path / "r" / "t" / "experiment.json").read_text() == plan
        assert main(spec, tmp_path / "r") == 0      # the same spec shares the work: its run is elsewhere
        assert "1 running elsewhere" in capsys.readouterr().out
    finally:
        lock.release()


def test_a_lab_experiment_folder_holding_other_files_is_still_rerun(tmp_path, corpus, capsys):
    """A study file the spec names, notes, an export: the folder is the lab's (spec.yaml, experiment.json)."""
    spec = write_spec(tmp_path / "s.yaml", corpus)
    assert main(spec, tmp_path / "r") == 0
    (tmp_path / "r" / "t" / "optuna.db").write_text("")
    (tmp_path / "r" / "t" / "notes.md").write_text("mine\n")
    assert main(spec, tmp_path / "r") == 0
