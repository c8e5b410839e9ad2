"""What a study's trials leave in the experiment folder: experiment.json and runs.csv re-derived
from the study after every trial, and trials.log, the append-only log of who trained what."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from experiments import files
from experiments.records import rebuild_runs_csv


@contextlib.contextmanager
def experiment_lock(exp_dir: Path) -> Iterator[None]:
    exp_dir.mkdir(parents=True, exist_ok=True)
    with open(exp_dir / ".experiment.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sync_records(plan, study) -> None:
    """Rewrite experiment.json from the study and rebuild runs.csv, under the experiment's lock."""
    with experiment_lock(plan.exp_dir):
        files.write_json(plan.exp_dir / "experiment.json", plan.experiment_record(study.get_trials(deepcopy=False)),
                         only_if_changed=True)
        rebuild_runs_csv(plan.exp_dir)


def log_event(exp_dir: Path, **fields: Any) -> None:
    """One JSON line appended to trials.log (O_APPEND: lines of concurrent workers never interleave)."""
    line = json.dumps({"time": datetime.now().isoformat(timespec="seconds"), "host": socket.gethostname(),
                       "pid": os.getpid(), **fields}, default=str) + "\n"
    fd = os.open(exp_dir / "trials.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # the umask decides
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
