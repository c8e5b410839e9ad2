"""Runs, executed: the data each run needs bound to it (bind_data), and the Runner, which trains a
run into results/<experiment>/runs/<run_id>/ under a per-run lock, skipping finished runs and
resuming unfinished ones from their checkpoints.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from experiments import budget, ddp, files, resources, tensorboard_log
from experiments.data import load_dataset
from experiments.hardware import require_present, resolve_device, resolve_precision
from experiments.progress import PROGRESS
from experiments.train import Trainer
from experiments.records import FINISHED, axis_values, read_summary, text_table
from experiments.spec import RunSpec, dedupe
from registry import SpecError

# summary.json first: it marks a run done, so --force killed part way through its cleaning leaves a run
# that trains again, never one that counts as done without its checkpoint or metrics
RUN_OUTPUTS = ("summary.json", "checkpoint.pt", "checkpoint.pt.sha256", "metrics.csv", "samples.txt", "error.txt",
               PROGRESS)


# -- data binding --------------------------------------------------------------------------------
def bind_data(runs: list[RunSpec], datasets: dict[tuple, Any] | None = None,
              device: str | None = None) -> dict[tuple, Any]:
    """Load (or read from cache) every dataset the runs use, check each run fits its data and its
    device's memory, and bind the corpus hash and the precision the run will use on its device
    (`device`: the --device override, else each run's train.device) into each run id. Every problem
    is raised at once, before anything is written. Datasets already in `datasets` are reused, and the
    ones loaded here are added to it (a search binds each trial's runs this way)."""
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
            if run.train.budget is not None:  # its own steps, from its data and model size
                budget.bind(run, ds, *model_size(run, ds.vocab_size))
            where = run_device(run, device)
            require_present(where)
            run.bind_precision(resolve_precision(run.train.precision, where))
        except SpecError as err:
            problems += err.problems
    if problems:
        raise SpecError(dedupe(problems))
    world = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun each process holds its share of a batch
    resources.check_fits(runs, datasets, lambda run: run_device(run, device), data_key, world)
    return datasets


def run_device(run: RunSpec, override: str | None = None) -> torch.device:
    """--device, else the run's train.device; under torchrun each rank on its own GPU."""
    return resolve_device(ddp.device(override or run.train.device))


def data_key(run: RunSpec) -> tuple:
    """What tells datasets apart: runs with the same key share one."""
    return (run.data["corpus"], repr(run.data["tokenizer"]), run.data["val_fraction"], run.data["test_fraction"])


# -- the dry run ---------------------------------------------------------------------------------
def model_size(run: RunSpec, vocab_size: int) -> tuple[int, int]:
    """(parameters, FLOPs per token) of a run's model, built on the meta device: sizes only, no memory."""
    return _model_size(json.dumps(run.model, sort_keys=True), vocab_size)


@functools.lru_cache(maxsize=1024)
def _model_size(model_json: str, vocab_size: int) -> tuple[int, int]:
    """model_size, once per model (a grid repeats a few models many times)."""
    model = resources.meta_model(json.loads(model_json), vocab_size)
    return model.num_params(), model.flops_per_token()


def dry_run_table(runs: list[RunSpec], datasets: dict[tuple, Any]) -> str:
    """One row per (bound) run: its size, the steps its budget gives it, and what it will see."""
    rows = []
    for run in runs:
        ds = datasets[data_key(run)]
        params, flops = model_size(run, ds.vocab_size)
        seen = budget.planned(run, ds, flops)
        rows.append({"run_id": run.run_id, "variant": run.variant, **axis_values(run), "seed": run.seed,
                     "params": f"{params:,}", "flops/token": f"{flops:,}", "steps": f"{seen['steps']:,}",
                     "warmup": run.train.warmup, "tokens": f"{seen['tokens']:,}",
                     "bytes": f"{seen['bytes']:,.0f}", "FLOPs": f"{seen['flops']:.3e}"})
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


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while a run trained: which run, and at which step (its last checkpoint is where it resumes)."""

    def __init__(self, run_id: str, step: int):
        super().__init__(f"interrupted at step {step} of run {run_id}")
        self.run_id, self.step = run_id, step


class Runner:
    """Executes runs into results/<experiment>/runs/<run_id>/, one at a time, under per-run locks."""

    def __init__(self, exp_dir: Path, datasets: dict[tuple, Any], device: str | None = None,
                 force: bool = False, show_progress: bool = False):
        self.exp_dir, self.datasets, self.device_override = exp_dir, datasets, device
        self.force, self.show_progress = force, show_progress
        self.commit = code_version()
        self.trainer: Trainer | None = None  # the run in progress

    def execute(self, run: RunSpec, on_eval=None) -> tuple[str, dict[str, Any] | None]:
        """Train `run` unless it is finished or another process holds it; (outcome, summary).
        `on_eval(metrics_row)` is called at every evaluation and may raise train.Stopped."""
        run_dir = self.exp_dir / "runs" / run.run_id
        summary = None if self.force else read_summary(run_dir)
        if summary is not None and summary["status"] in FINISHED:  # no lock needed: read-only storage is fine
            ddp.broadcast(False)  # under torchrun the other ranks skip it with rank 0 (a no-op otherwise)
            return "skipped", summary
        lock = files.RunLock(run_dir)
        if not lock.acquire():
            ddp.broadcast(False)
            return "running elsewhere", None
        try:
            summary = None if self.force else read_summary(run_dir)  # again: it may have finished meanwhile
            if summary is not None and summary["status"] in FINISHED:
                ddp.broadcast(False)
                return "skipped", summary
            if (run_dir / "summary.json").exists() and summary is None and not self.force:
                print(f"warning: run {run.run_id}: its summary.json cannot be read; training it again "
                      "(from its checkpoint, if it has one)", file=sys.stderr, flush=True)
            ddp.broadcast(True)
            files.remove_leftovers(run_dir)  # temporary files of writes a crash cut short (we hold the lock)
            if self.force:
                self.force_clean(run_dir)
            summary = self.train(run, run_dir, on_eval)
            return summary["status"], summary
        except KeyboardInterrupt:
            raise Interrupted(run.run_id, self.trainer.step if self.trainer else 0) from None
        finally:
            self.trainer = None
            lock.release()

    def follow(self, run: RunSpec) -> None:
        """A rank > 0 under torchrun: train `run` alongside rank 0 when rank 0 trains it; write nothing."""
        if ddp.broadcast(None):
            Trainer(run, self.datasets[data_key(run)], self.exp_dir / "runs" / run.run_id, self.device_for(run)).fit()

    def device_for(self, run: RunSpec):
        """--device, else the run's train.device; under torchrun each rank on its own GPU (the current one)."""
        device = run_device(run, self.device_override)
        ddp.use_device(device)
        return device

    @staticmethod
    def force_clean(run_dir: Path) -> None:
        for name in RUN_OUTPUTS:
            (run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(run_dir / tensorboard_log.FOLDER, ignore_errors=True)

    def train(self, run: RunSpec, run_dir: Path, on_eval=None) -> dict[str, Any]:
        ds = self.datasets[data_key(run)]
        files.write_yaml(run_dir / "spec.yaml", run.to_dict())
        files.write_json(run_dir / "tokenizer.json", ds.tokenizer.spec())
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        device = self.device_for(run)
        (run_dir / "summary.json").unlink(missing_ok=True)  # a failed attempt's summary is stale now
        try:
            self.trainer = Trainer(run, ds, run_dir, device, show_progress=self.show_progress, on_eval=on_eval)
            summary = self.trainer.fit()
            (run_dir / "error.txt").unlink(missing_ok=True)
        except Exception as err:  # one broken run must not stop the others ...
            if files.storage_failed(err):  # ... but a full or read-only disk stops them all: none can be recorded
                raise
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

