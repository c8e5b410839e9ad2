"""Where a run stands, for `python -m experiments.status`: what a training run writes as it goes
(progress.json), and how a reader tells whether a run's lock is held without ever taking it.

A reader must never flock a run's lock, not even for an instant: a runner that tried to take it at
that moment would skip the run as "running elsewhere". So a reader looks instead: on this host in
/proc/locks (the kernel's list of held locks), and for a runner on another host (a results folder on
shared storage) at how recently its progress.json was written.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
import re
import socket
import time
from pathlib import Path
from typing import Any

import yaml

from experiments import files
from experiments.records import read_summary

PROGRESS = "progress.json"
WRITE_EVERY_S = 5.0        # progress.json is rewritten at most this often (and at every evaluation)
STALE_AFTER_S = 60.0       # a remote runner silent for this long plus 5 of its write intervals is stalled


class ProgressFile:
    """progress.json of a run being trained: step, total, speed, last val bpb, host, pid, time."""

    def __init__(self, run_dir: Path, steps: int):
        self.path, self.steps = run_dir / PROGRESS, steps
        self.last_write = 0.0
        self.interval = WRITE_EVERY_S
        self.val_bpb: float | None = None

    def update(self, step: int, tokens_per_s: float | None, val_bpb: float | None = None, force: bool = False) -> None:
        now = time.time()
        if val_bpb is not None:
            self.val_bpb = val_bpb
        if not force and now - self.last_write < WRITE_EVERY_S:
            return
        if self.last_write:
            self.interval = max(WRITE_EVERY_S, now - self.last_write)
        self.last_write = now
        files.write_json(self.path, {"step": step, "steps": self.steps, "tokens_per_s": tokens_per_s,
                                     "val_bpb": self.val_bpb, "host": socket.gethostname(), "pid": os.getpid(),
                                     "updated": now, "interval_s": round(self.interval, 3)})


# -- reading, without locks ----------------------------------------------------------------------
def read_json_or_none(path: Path) -> dict[str, Any] | None:
    """A JSON file another process may be replacing right now (atomically): its content, or None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def lock_record(run_dir: Path) -> dict[str, Any]:
    """Who the lock file says holds (or last held) the run: {'pid': int, 'host': str}, as far as known.
    Reads the runner's line ('pid 123 on host') or a JSON record with pid and host."""
    try:
        text = (run_dir / "lock").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    with_json = read_json_text(text)
    if with_json:
        return {k: with_json[k] for k in ("pid", "host") if k in with_json}
    found: dict[str, Any] = {}
    if m := re.search(r"\bpid\D{0,3}(\d+)", text):
        found["pid"] = int(m.group(1))
    if m := re.search(r"\bon\s+(\S+)", text):
        found["host"] = m.group(1)
    return found


def read_json_text(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def flock_holders() -> dict[int, int] | None:
    """{inode: pid} of every flock held on this host (/proc/locks), or None where there is no such file."""
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    held = {}
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234 0 EOF" ("->" marks a waiter, not a holder)
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[2] != "->":
            try:
                held[int(parts[5].rsplit(":", 1)[1])] = int(parts[4])
            except (ValueError, IndexError):
                continue
    return held


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder(run_dir: Path, holders: dict[int, int] | None = None, now: float | None = None) -> dict[str, Any] | None:
    """{'host', 'pid'} of the process training this run now, or None when nobody is. Never locks.

    On this host the kernel's list of flocks decides (`holders`: flock_holders(), read once per
    status); a runner on another host is judged by its progress.json, which it rewrites every few
    seconds while it trains."""
    lock = run_dir / "lock"
    try:
        inode = lock.stat().st_ino
    except OSError:
        return None
    record, progress = lock_record(run_dir), read_json_or_none(run_dir / PROGRESS) or {}
    host = record.get("host") or progress.get("host")
    here = socket.gethostname()
    if host in (None, here):
        if holders is not None:
            pid = holders.get(inode)
            return {"host": here, "pid": pid} if pid is not None else None
        pid = record.get("pid")
        return {"host": here, "pid": pid} if isinstance(pid, int) and pid_alive(pid) else None
    if progress.get("host") != host or not isinstance(progress.get("updated"), (int, float)):
        return None
    age = (time.time() if now is None else now) - progress["updated"]
    if age > STALE_AFTER_S + 5 * (number(progress.get("interval_s")) or WRITE_EVERY_S):
        return None
    return {"host": host, "pid": progress.get("pid") or record.get("pid")}


# -- an experiment's runs, as status shows them ---------------------------------------------------
FINISHED = ("done", "diverged", "pruned")


def last_metrics_row(run_dir: Path) -> dict[str, str]:
    """The last evaluation metrics.csv holds ({} before the first); damaged bytes read as U+FFFD, so
    their cells read as unknown numbers."""
    try:
        lines = (run_dir / "metrics.csv").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return {}
    if len(lines) < 2:
        return {}
    return dict(zip(lines[0].split(","), lines[-1].split(",")))


def number(value: Any) -> float | None:
    """A number a run file holds, or None where it holds no finite one: a damaged or hand-edited file
    (NaN, Infinity, "x") shows as unknown, not as a crash."""
    try:
        out = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return out if math.isfinite(out) else None


def whole(value: Any) -> int | None:
    """A step count a run file holds (number()'s rules), as an int."""
    out = number(value)
    return None if out is None else int(out)


def run_length(run_dir: Path, entry: dict[str, Any]) -> tuple[int | None, int | None]:
    """(steps, tokens per step): experiment.json's plan, else the run's own spec.yaml (a search's runs)."""
    if isinstance(entry.get("steps"), int) and isinstance(entry.get("tokens_per_step"), int):
        return entry["steps"], entry["tokens_per_step"]
    try:
        spec = yaml.safe_load((run_dir / "spec.yaml").read_text(encoding="utf-8"))
        train, model = spec["train"], spec["model"]
        tokens_per_step = int(train["batch_size"]) * int(train.get("grad_accum", 1)) * int(model["context_length"])
        return int(train["steps"]), tokens_per_step
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError):
        return None, None  # not started yet, or its spec.yaml is being replaced right now


def run_state(exp_dir: Path, entry: dict[str, Any], holders: dict[int, int] | None, now: float) -> dict[str, Any]:
    """One planned run, as its folder shows it now: status, step, steps, last val bpb, speed, who runs it."""
    run_dir = exp_dir / "runs" / str(entry["run_id"])
    summary = read_summary(run_dir) or {}  # as the runner reads it: a damaged one's run is trained again
    held = holder(run_dir, holders, now)
    status = summary.get("status") or "pending"
    if held and status not in FINISHED:
        status = "running"  # a failed run being retried, or a run without a summary yet
    steps, tokens_per_step = run_length(run_dir, entry)
    live = (read_json_or_none(run_dir / PROGRESS) or {}) if status == "running" else {}
    last = last_metrics_row(run_dir)
    step = whole(summary.get("steps") if status in FINISHED else live.get("step", last.get("step")))
    bpb = summary.get("final_val_bpb") if status in FINISHED else live.get("val_bpb") or number(last.get("val_bpb"))
    speed = live.get("tokens_per_s") if status == "running" else summary.get("tokens_per_s")
    return {"run_id": entry["run_id"], "variant": entry.get("variant"), "seed": entry.get("seed"),
            **{k: entry[k] for k in ("trial", "state") if k in entry},
            "status": status, "step": step, "steps": steps,
            "tokens_per_step": tokens_per_step, "val_bpb": number(bpb), "tokens_per_s": number(speed),
            "where": f"pid {held['pid']} on {held['host']}" if held and status == "running" else
                     f"stopped at step {step}: a rerun resumes it" if status == "pending" and step else "",
            "wall_s": number(summary.get("wall_s")) if status == "done" else None,
            "tokens_seen": number(summary.get("tokens_seen")) if status == "done" else None}


def experiment_runs(exp_dir: Path) -> list[dict[str, Any]]:
    """Every run experiment.json plans, as its folder shows it now; reads files only, never locks."""
    plan = read_json_or_none(exp_dir / "experiment.json")
    if plan is None:
        raise FileNotFoundError(exp_dir / "experiment.json")
    holders, now = flock_holders(), time.time()
    return [run_state(exp_dir, entry, holders, now) for entry in plan.get("runs", [])]


def eta_seconds(rows: list[dict[str, Any]], extra_runs: int = 0) -> tuple[float | None, int]:
    """(seconds until every unfinished run is done, runners assumed), from the measured speeds: each
    variant's finished runs (tokens over wall time, so evaluations count), else all finished runs,
    else the running runs' training speed. A run whose length is not known yet (a search's run that
    has not started) is as long as the most common known one. `extra_runs`: runs not planned yet (a
    search's trials to come), each as long as the mean finished run. Failed runs are not counted:
    they wait for a rerun."""
    done = [r for r in rows if r["wall_s"] and r["tokens_seen"]]
    rate_of = {}
    for variant in {r["variant"] for r in done}:
        mine = [r for r in done if r["variant"] == variant]
        rate_of[variant] = sum(r["tokens_seen"] for r in mine) / sum(r["wall_s"] for r in mine)
    running = [r for r in rows if r["status"] == "running"]
    overall = (sum(r["tokens_seen"] for r in done) / sum(r["wall_s"] for r in done) if done
               else (sum(r["tokens_per_s"] or 0 for r in running) / len(running) if running else None))
    lengths = Counter((r["steps"], r["tokens_per_step"]) for r in rows
                      if r["steps"] is not None and r["tokens_per_step"] is not None)
    typical = lengths.most_common(1)[0][0] if lengths else (None, None)
    seconds = 0.0
    for r in rows:
        if r["status"] not in ("running", "pending"):
            continue
        rate = rate_of.get(r["variant"]) or overall
        steps, tokens_per_step = (r["steps"], r["tokens_per_step"]) if r["steps"] is not None else typical
        if not rate or steps is None or tokens_per_step is None:
            return None, max(1, len(running))
        seconds += max(0, steps - (r["step"] or 0)) * tokens_per_step / rate
    if extra_runs:
        if not done:
            return None, max(1, len(running))
        seconds += extra_runs * sum(r["wall_s"] for r in done) / len(done)
    return seconds / max(1, len(running)), max(1, len(running))
