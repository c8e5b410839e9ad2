"""Runs, executed: the data each run needs bound to it (bind_data), and the Runner, which trains a
run into results/<experiment>/runs/<run_id>/ under a per-run lock, skipping finished runs and
resuming unfinished ones from their checkpoints.
"""
from __future__ import annotations

import socket
import subprocess
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from components.model import GPT
from experiments import ddp, files
from experiments.data import load_dataset
from experiments.hardware import resolve_device, resolve_precision
from experiments.schema import ModelConfig
from experiments.train import Trainer
from experiments.records import FINISHED, axis_values, text_table
from experiments.spec import RunSpec, dedupe
from registry import SpecError

RUN_OUTPUTS = ("checkpoint.pt", "metrics.csv", "summary.json", "samples.txt", "error.txt")


# -- data binding --------------------------------------------------------------------------------
def bind_data(runs: list[RunSpec], datasets: dict[tuple, Any] | None = None,
              device: str | None = None) -> dict[tuple, Any]:
    """Load (or read from cache) every dataset the runs use, check each run fits its data, and bind
    the corpus hash and the precision the run will use on its device (`device`, the --device
    override, else its train.device) into each run id. Every problem is raised at once, before
    anything is written. Datasets already in `datasets` are reused, and the ones loaded here are
    added to it (a search binds each trial's runs this way)."""
    datasets = {} if datasets is None else datasets
    problems: list[str] = []
    unreadable: set[tuple] = set()
    for run in runs:
        key = data_key(run)
        if key not in datasets and key not in unreadable:
            try:
                datasets[key] = load_dataset(run.data["corpus"], run.data["tokenizer"], run.data["val_fraction"],
                                             run.data["test_fraction"])
            except SpecError as err:
                unreadable.add(key)
                problems += err.problems
        if key in unreadable:
            continue
        ds = datasets[key]
        run.bind_corpus(ds.corpus_sha256)
        try:
            ds.check_context(run.model["context_length"])
            if run.sample["prompt"] is not None:
                ds.tokenizer.encode(run.sample["prompt"])
            run.bind_precision(resolve_precision(run.train.precision, run_device(run, device)))
        except SpecError as err:
            problems += err.problems
    if problems:
        raise SpecError(dedupe(problems))
    return datasets


def run_device(run: RunSpec, override: str | None = None):
    """--device (`override`), else the run's train.device; under torchrun each rank on its own GPU."""
    return resolve_device(ddp.device(override or run.train.device))


def data_key(run: RunSpec) -> tuple:
    """What tells datasets apart: runs with the same key share one."""
    return (run.data["corpus"], repr(run.data["tokenizer"]), run.data["val_fraction"], run.data["test_fraction"])


# -- the dry run ---------------------------------------------------------------------------------
def model_size(run: RunSpec, vocab_size: int) -> tuple[int, int]:
    """(parameters, FLOPs per token), built on the meta device: sizes only, no memory."""
    with torch.device("meta"):
        model = GPT(ModelConfig(vocab_size=vocab_size, **run.model))
    return model.num_params(), model.flops_per_token()


def dry_run_table(runs: list[RunSpec], datasets: dict[tuple, Any]) -> str:
    rows = []
    for run in runs:
        params, flops = model_size(run, datasets[data_key(run)].vocab_size)
        tokens = run.train.steps * run.train.batch_size * run.train.grad_accum * run.model["context_length"]
        rows.append({"run_id": run.run_id, "variant": run.variant, **axis_values(run), "seed": run.seed,
                     "params": f"{params:,}", "flops/token": f"{flops:,}", "tokens": f"{tokens:,}"})
    return text_table(rows)


# -- executing runs ------------------------------------------------------------------------------
def code_version() -> str:
    """The lab's git commit (with '-dirty' for uncommitted changes), or 'unknown' outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Runner:
    """Executes runs into results/<experiment>/runs/<run_id>/, one at a time, under per-run locks."""

    def __init__(self, exp_dir: Path, datasets: dict[tuple, Any], device: str | None = None,
                 force: bool = False, show_progress: bool = False):
        self.exp_dir, self.datasets, self.device_override = exp_dir, datasets, device
        self.force, self.show_progress = force, show_progress
        self.commit = code_version()

    def execute(self, run: RunSpec, on_eval=None) -> tuple[str, dict[str, Any] | None]:
        """Train `run` unless it is finished or another process holds it; (outcome, summary).
        `on_eval(metrics_row)` is called at every evaluation and may raise train.Stopped."""
        run_dir = self.exp_dir / "runs" / run.run_id
        lock = files.RunLock(run_dir)
        if not lock.acquire():
            ddp.broadcast(False)  # under torchrun the other ranks skip it with rank 0 (a no-op otherwise)
            return "running elsewhere", None
        try:
            summary_path = run_dir / "summary.json"
            if summary_path.exists() and not self.force:
                summary = files.read_json(summary_path)
                if summary["status"] in FINISHED:
                    ddp.broadcast(False)
                    return "skipped", summary
            ddp.broadcast(True)
            if self.force:
                self.force_clean(run_dir)
            summary = self.train(run, run_dir, on_eval)
            return summary["status"], summary
        finally:
            lock.release()

    def follow(self, run: RunSpec) -> None:
        """A rank > 0 under torchrun: train `run` alongside rank 0 when rank 0 trains it; write nothing."""
        if ddp.broadcast(None):
            Trainer(run, self.datasets[data_key(run)], self.exp_dir / "runs" / run.run_id, self.device_for(run)).fit()

    def device_for(self, run: RunSpec):
        return run_device(run, self.device_override)

    @staticmethod
    def force_clean(run_dir: Path) -> None:
        for name in RUN_OUTPUTS:
            (run_dir / name).unlink(missing_ok=True)

    def train(self, run: RunSpec, run_dir: Path, on_eval=None) -> dict[str, Any]:
        ds = self.datasets[data_key(run)]
        files.write_yaml(run_dir / "spec.yaml", run.to_dict())
        files.write_json(run_dir / "tokenizer.json", ds.tokenizer.spec())
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        device = self.device_for(run)
        (run_dir / "summary.json").unlink(missing_ok=True)  # a failed attempt's summary is stale now
        try:
            summary = Trainer(run, ds, run_dir, device, show_progress=self.show_progress, on_eval=on_eval).fit()
            (run_dir / "error.txt").unlink(missing_ok=True)
        except Exception as err:  # one broken run must not stop the others
            files.write_text(run_dir / "error.txt", traceback.format_exc())
            summary = {"run_id": run.run_id, "status": "failed", "error": f"{type(err).__name__}: {err}",
                       "device": str(device), "torch": torch.__version__}
            if ddp.active():  # the other ranks are inside this run's collectives: end them all (torchrun does)
                files.write_json(run_dir / "summary.json", summary)
                raise
        summary |= {"experiment": run.experiment, "variant": run.variant, "seed": run.seed,
                    "git_commit": self.commit, "host": socket.gethostname(), "started": started,
                    "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        files.write_json(run_dir / "summary.json", summary)
        return summary

