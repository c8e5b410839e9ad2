"""`python -m experiments.status results/<experiment>`: where an experiment stands, from any terminal.

One row per planned run: status (pending / running / done / diverged / failed / pruned), step /
total, last validation bpb, tokens/s, and the pid and host training it; then an ETA for the rest
from the measured speeds. A search adds its trials' numbers and states, read from its study. It
reads only what the runners write and never takes their locks (experiments/progress.py), so it is
safe to run while they train, also on a results folder on shared storage.

    python -m experiments.status results/quickstart
    python -m experiments.status results/quickstart --watch 10
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from experiments import interrupts, progress
from experiments.plan_fields import plan_problem
from experiments.records import read_summary, text_table
from experiments.search.study import FINISHED_STATES, StorageError, mask, read_trials, recorded_storage


MAX_WATCH_S = 24 * 3600.0  # a day: beyond that --watch is a typo (time.sleep refuses inf, nan and > ~292 years)


class StatusError(ValueError):
    """Input status cannot show; the message is written for the person who ran the command."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.status", description=__doc__.splitlines()[0])
    p.add_argument("experiment", help="an experiment folder: results/<experiment>")
    p.add_argument("--watch", type=float, metavar="SECONDS",
                   help="print again every SECONDS until no run is running or pending")
    return p.parse_args(argv)


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def search_line(plan: dict[str, Any], exp_dir: Path, seeds: int) -> tuple[str, int]:
    """(a line on the study's trials, runs still to be planned for the trials it wants)."""
    search = plan["search"]
    url, name = recorded_storage(search, exp_dir), search.get("study_name") or plan.get("experiment")
    try:
        trials = [t for t in read_trials(url, name) if "surplus" not in t.user_attrs]
    except StorageError as err:
        return f"study '{name}': cannot be read now ({err}); the rows below come from experiment.json", 0
    states = Counter("REPEAT" if "repeat_of" in t.user_attrs else t.state.name for t in trials)  # repeats: told FAIL
    finished = sum(states[s] for s in FINISHED_STATES)
    wanted = int(search.get("trials") or 0)
    running, dead = [], []
    for t in trials:
        if t.state.name == "RUNNING":
            where = f"{t.number} (pid {t.user_attrs.get('pid', '?')} on {t.user_attrs.get('host', '?')})"
            (dead if worker_died(t.user_attrs) else running).append(where)
    line = (f"study '{name}' in {mask(url)}: {finished} of {wanted} finished trials wanted; "
            + ", ".join(f"{s} {n}" for s, n in sorted(states.items()))
            + (f"; running trials: {', '.join(running)}" if running else "")
            + (f"; trials whose worker died: {', '.join(dead)} (tried again once their heartbeat is stale)"
               if dead else ""))
    to_plan = max(0, wanted - finished - len(running)) * seeds if search.get("mode") == "search" else 0
    return line, to_plan


def worker_died(attrs: dict[str, Any]) -> bool:
    """Whether a RUNNING trial's worker ran on this host and its pid is gone (killed, say): Optuna only
    learns it when the heartbeat goes stale, the rows below (each run's lock) at once. On another host
    the heartbeat is all there is to go by."""
    pid = attrs.get("pid")
    return (attrs.get("host") == socket.gethostname() and type(pid) is int and pid > 0
            and not progress.pid_alive(pid))


def headline(name: str, rows: list[dict[str, Any]], eta: tuple[float | None, int]) -> str:
    counts = Counter(r["status"] for r in rows)
    order = ("done", "running", "pending", "diverged", "pruned", "failed")
    parts = ", ".join(f"{counts[s]} {s}" for s in order if counts[s])
    text = f"{name}: {len(rows)} planned run(s): {parts or 'none yet'}"
    seconds, runners = eta
    if not counts["running"] and not counts["pending"]:
        text += "; nothing left to run" if rows else ""
    elif seconds is None:
        text += "; ETA unknown until a run has measured its speed"
    elif not counts["running"]:
        text += f"; {duration(seconds)} of training left once a runner starts (measured speeds; none is running)"
    else:
        text += f"; ETA {duration(seconds)} (measured speeds, {runners} runner{'s' if runners > 1 else ''})"
    if counts["failed"]:
        text += f"; {counts['failed']} failed: run the spec again to retry (see their error.txt)"
    return text


def table(rows: list[dict[str, Any]]) -> str:
    shown = []
    for r in rows:
        step = "-" if r["step"] is None else f"{r['step']}/{r['steps'] if r['steps'] is not None else '?'}"
        shown.append({"run_id": r["run_id"], "variant": r["variant"], "seed": r["seed"],
                      **{k: r[k] for k in ("trial", "state") if k in r}, "status": r["status"], "step": step,
                      "val_bpb": r["val_bpb"], "tokens/s": r["tokens_per_s"], "where": r["where"] or "-"})
    return text_table(shown)


def read_plan(exp_dir: Path) -> dict[str, Any]:
    """experiment.json, checked as far as status relies on it; StatusError when it cannot be used. The runner
    replaces it atomically, so a reader never sees half of it: a damaged one is damaged for good."""
    path = exp_dir / "experiment.json"
    rerun = ("python -m experiments.run writes it: run the experiment's spec again to rewrite it (finished runs "
             "are kept, not trained again)")
    if not path.is_file():
        inside = sorted(p.parent.name for p in exp_dir.glob("*/experiment.json")) if exp_dir.is_dir() else []
        hint = (f"; the experiments in it are {', '.join(inside[:10])}{' ...' if len(inside) > 10 else ''}: give "
                f"one, e.g. {str(exp_dir / inside[0])!r}" if inside else "")
        raise StatusError(f"{str(exp_dir)!r} is not an experiment folder: it has no experiment.json (python -m "
                          f"experiments.run writes one into results/<experiment>/ when it starts){hint}")
    try:
        plan = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise StatusError(f"cannot read {path}: {err.strerror or err}") from None
    except ValueError as err:  # not JSON, or bytes that are not UTF-8 text
        raise StatusError(f"{path} is not valid JSON ({str(err)[:200]}); {rerun}") from None
    if not isinstance(plan, dict):
        raise StatusError(f"{path} holds a JSON {type(plan).__name__}, not the object with 'experiment' and "
                          f"'runs' it should; {rerun}")
    if why := plan_problem(plan, ("runs", "seeds", "search")):
        raise StatusError(f"{path}: {why}; {rerun}")
    return plan


def damaged_metrics(run_dir: Path) -> str | None:
    """Why the run's metrics.csv cannot be read as text (bytes that are not UTF-8: a damaged disk block,
    a binary file copied over it), or None when it can (or is not there)."""
    try:
        (run_dir / "metrics.csv").read_bytes().decode("utf-8")
    except OSError:
        return None
    except UnicodeDecodeError as err:
        return f"byte {err.object[err.start]:#04x} at offset {err.start} is not UTF-8 text"
    return None


def damage_notes(exp_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """A warning per run whose metrics.csv is not UTF-8 text (its row reads what is left of it), and per
    run whose summary.json cannot be read (the runner trains it again)."""
    notes = []
    for row in rows:
        path = exp_dir / "runs" / str(row["run_id"])
        if why := damaged_metrics(path):
            notes.append(f"warning: {path / 'metrics.csv'} is damaged ({why}); run {row['run_id']}'s row comes "
                         "from its summary.json and progress.json, and from what of metrics.csv can still be read")
        if (path / "summary.json").exists() and read_summary(path) is None and row["status"] != "running":
            notes.append(f"warning: {path / 'summary.json'} cannot be read (damaged, or a finished run's without "
                         f"finite final scores): run {row['run_id']} is shown unfinished; a rerun trains it again")
    return notes


def report(exp_dir: Path) -> tuple[str, bool]:
    """(the status text, whether any run is still running or pending); StatusError when experiment.json
    cannot be used."""
    plan = read_plan(exp_dir)
    holders, now = progress.flock_holders(), time.time()
    rows = [progress.run_state(exp_dir, entry, holders, now) for entry in plan.get("runs") or []]
    lines, to_plan = [], 0
    if isinstance(plan.get("search"), dict) and plan["search"]:  # not the older bare flag (no study recorded)
        line, to_plan = search_line(plan, exp_dir, len(plan.get("seeds") or [0]))
        lines.append(line)
    eta = progress.eta_seconds(rows, to_plan)
    lines.insert(0, headline(str(plan.get("experiment") or exp_dir.name), rows, eta))
    lines.append(table(rows))
    lines += damage_notes(exp_dir, rows)
    return "\n".join(lines), any(r["status"] in ("running", "pending") for r in rows) or to_plan > 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.watch is not None and not 0 < args.watch <= MAX_WATCH_S:  # also refuses nan (every comparison fails)
        print(f"error: --watch = {args.watch:g} is not a usable interval: give a positive number of seconds, "
              f"at most {MAX_WATCH_S:.0f} (a day), e.g. --watch 10", file=sys.stderr)
        return 2
    return show(Path(args.experiment), args.watch)  # a closed stdout: interrupts.run_main ends it quietly


def show(exp_dir: Path, watch: float | None) -> int:
    """Print the status once, or every `watch` seconds until nothing is left to run."""
    while True:
        try:
            text, unfinished = report(exp_dir)
        except StatusError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if watch is not None and sys.stdout.isatty():
            print("\033[H\033[J", end="")  # clear the terminal
        print(text, flush=True)
        if watch is None or not unfinished:
            return 0
        try:
            time.sleep(watch)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(interrupts.run_main(main, interrupts.INTERRUPTED))
