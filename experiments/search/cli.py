"""`python -m experiments.run SPEC` for a spec with a search block, or a grid run as an Optuna study
(--storage / --workers): check the plan, open the study, loop (or start N local workers), print the
trials table and write the report. run.py hands such specs here.
"""
from __future__ import annotations

import collections
import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

from experiments import interrupts
from experiments.records import read_summary, report_is_stale, text_table, write_report, write_spec_record
from experiments.runner import bind_data, dry_run_table
from experiments.search.plan import WORKER_ENV, Plan, make_plan
from experiments.search.space import label
from experiments.search.study import (FINISHED_STATES, STORAGE_ENV, StorageError, has_password, heartbeat_settings,
                                      mask, open_study, storage_problems)
from experiments.search.trials import sync_records
from experiments.search.worker import SINCE_ENV, Worker, counted
from registry import SpecError


def wanted(spec, args) -> bool:
    """Whether `python -m experiments.run` hands this spec here: a search block, --storage, --workers,
    or a worker process that --workers started."""
    return spec.search is not None or bool(args.storage) or args.workers != 1 or WORKER_ENV in os.environ


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(spec, spec_text: str, args) -> int:
    """`python -m experiments.run SPEC [KEY=VALUE ...]` for a spec with a search block, or with --storage /
    --workers; `spec_text` is what results/<experiment>/spec.yaml records (experiments/overrides.py)."""
    exp_dir = Path(args.results) / spec.experiment
    if problem := argument_problem(args, exp_dir):
        return fail(problem)
    try:
        plan = make_plan(spec, args, exp_dir)
        heartbeat_settings()
        if not plan.default_storage and (problems := storage_problems(plan.storage_url, "--storage")):
            raise SpecError(problems)
        datasets = bind_data(spec.runs, device=args.device)
        plan.check_points(datasets)
    except SpecError as err:
        return fail(str(err))
    if plan.role is None:
        for warning in plan.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    if args.dry_run:
        print(plan.describe())
        print("runs:" if plan.mode == "grid" else "the spec's base runs (each trial overrides the keys above):")
        print(dry_run_table(spec.runs, datasets))
        return 0
    try:
        if plan.default_storage and plan.role is None:
            exp_dir.mkdir(parents=True, exist_ok=True)
        study = open_study(plan)
    except StorageError as err:
        return fail(str(err))
    if plan.role is None:
        write_spec_record(exp_dir, spec_text)
    sync_records(plan, study)
    return run_study(plan, study, datasets)


def argument_problem(args, exp_dir: Path) -> str | None:
    if getattr(args, "force", False):
        return ("--force does not apply to a search: a study keeps its trials and their runs. To start "
                f"over, delete {exp_dir} (and the study in its storage) or use another experiment name")
    if getattr(args, "only", None):
        return ("--only does not apply to a search or a grid run as a study: every worker takes the "
                "next trial the study hands out")
    workers, most = getattr(args, "workers", 1), 4 * (os.cpu_count() or 1)  # each a training process
    if not 1 <= workers <= most:
        return f"--workers = {workers} must be an integer from 1 to {most} (4 per CPU core of this machine)"
    if has_password(getattr(args, "storage", None)):
        print(f"note: the password in --storage is visible to other users of this machine (ps); set "
              f"{STORAGE_ENV} in the environment instead, or keep it in ~/.pgpass", file=sys.stderr)
    return None


def run_study(plan: Plan, study, datasets: dict) -> int:
    """The worker loop here (or in N processes), then the trials table and the report."""
    if plan.role is not None:  # a worker process started by --workers: the loop only
        try:
            return Worker(plan, study, datasets).loop()
        except KeyboardInterrupt:
            return 130
    started = time.perf_counter()
    print(plan.describe(), flush=True)
    workers = getattr(plan.args, "workers", 1)
    if workers > 1:
        code = spawn_workers(plan, workers)
    else:
        try:
            code = Worker(plan, study, datasets).loop()
        except KeyboardInterrupt:
            print("interrupted: rerun the same command to resume the study", file=sys.stderr)
            return 130
    return finish(plan, study, code, time.perf_counter() - started)


def spawn_workers(plan: Plan, workers: int) -> int:
    """N worker processes on the study; each is `python -m experiments.run` with the same spec and overrides."""
    args = plan.args
    # The storage URL (its password too) goes through the environment: a command line is visible in `ps`.
    cmd = [sys.executable, "-m", "experiments.run", str(args.spec), *getattr(args, "overrides", []),
           "--results", str(args.results), "--no-report"]
    if args.device:
        cmd += ["--device", args.device]
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    since = str(time.time())
    gpus = worker_gpus(args.device, {run.train.device for run in plan.spec.runs}, visible_gpus())
    procs = []
    for index in range(workers):
        env = {**os.environ, WORKER_ENV: str(index), SINCE_ENV: since, STORAGE_ENV: plan.storage_url}
        env.setdefault("OMP_NUM_THREADS", threads)
        if gpus:  # each worker sees one GPU (as cuda:0), taken in turn
            env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
        procs.append(subprocess.Popen(cmd, env=env))
    print(f"started {workers} workers: pids {', '.join(str(p.pid) for p in procs)}"
          + (f", on GPUs {', '.join(gpus[i % len(gpus)] for i in range(workers))}" if gpus else ""), flush=True)
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt as stop:
        # Ctrl-C in a terminal reaches the workers too; give them time to queue their trials again.
        # A SIGTERM reached this process alone: the workers are told at once.
        deadline = time.monotonic() + (0 if isinstance(stop, interrupts.Terminated) else 20)
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        print("interrupted: rerun the same command to resume the study", file=sys.stderr)
        return 130
    bad = [c for c in codes if c != 0]
    if bad:
        print(f"warning: {len(bad)} worker(s) exited with status {', '.join(map(str, bad))}", file=sys.stderr)
    return 0 if not bad else 1


def worker_gpus(device: str | None, run_devices: set[str], visible: list[str]) -> list[str]:
    """The GPUs local workers take in turn, one each: the visible ones when the runs go to `cuda` or
    `auto` (--device, else their train.device) and there are two or more; [] otherwise, so that one
    GPU is shared and an explicit cuda:N or cpu is kept as written."""
    names = {device} if device else run_devices
    if not names or not names <= {"auto", "cuda", "cpu"} or not names & {"auto", "cuda"}:
        return []
    return visible if len(visible) > 1 else []


def visible_gpus() -> list[str]:
    """The CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names them (or their indices)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [name.strip() for name in listed.split(",") if name.strip()]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]


def finish(plan: Plan, study, code: int, seconds: float) -> int:
    """The trials table, the best trial and the report; 0 when the study has every trial it wants."""
    sync_records(plan, study)
    trials = study.get_trials(deepcopy=False)
    rows = []
    for t in trials:
        if "surplus" in t.user_attrs:
            continue
        note = next((f"{k}: {t.user_attrs[k]}" for k in ("repeat_of", "invalid", "error", "pruned", "diverged",
                                                          "interrupted") if k in t.user_attrs), "")
        if t.state.name == "FAIL" and not note:
            note = "its worker died (stale heartbeat); retried once"
        rows.append({"trial": t.number, "state": t.state.name, **{k: label(v) for k, v in t.params.items()},
                     plan.summary_key: t.value if t.state.name == "COMPLETE" else None, "note": note[:80]})
    print(text_table(rows))
    ended = [t for t in trials if t.state.name in FINISHED_STATES]
    finished = counted(plan, ended) if plan.points is None else len({plan.point_key(t.params) for t in ended})
    repeats = sum("repeat_of" in t.user_attrs for t in trials)  # told FAIL: the samplers leave them out
    complete = [t for t in ended if t.state.name == "COMPLETE" and "repeat_of" not in t.user_attrs]
    print(f"{finished} finished trials ({len(complete)} complete"
          + (f"; {repeats} repeated point(s), not counted" if repeats else "")
          + f") of {plan.trials} wanted in {seconds:.1f} s -> {plan.exp_dir / 'runs.csv'}; study "
          f"'{plan.study_name}' in {mask(plan.storage_record)}")
    for line in best_lines(plan, complete):
        print(line)
    if not plan.args.no_report and report_is_stale(plan.exp_dir):
        with warnings.catch_warnings():  # Optuna's plotting warns about flat importances and axes
            warnings.simplefilter("ignore", UserWarning)
            report = write_report(plan.exp_dir)
        if report:
            print(f"report: {report}")
    if ended and not any(t.user_attrs.get("run_ids") for t in ended):
        print(f"error: none of the {len(ended)} finished trial(s) ran: every point tried broke the spec's rules "
              "(see the note column); give the searched keys values that fit, or ask for more trials",
              file=sys.stderr)
        return code or 1
    if finished >= plan.trials and not complete:
        print(f"error: no trial completed ({no_best_causes(ended)}), so the search has no best trial", file=sys.stderr)
        return code or 1
    if finished >= plan.trials:
        return 0  # the study is complete, even when a worker died on the way (its trial was retried)
    code = code or 1
    print(f"error: the study has {finished} of the {plan.trials} finished trials wanted; rerun the same "
          "command to continue it", file=sys.stderr)
    return code


# Why a finished trial has no result, and what to change: the first key its user_attrs hold.
NO_RESULT = {"diverged": "lower train.lr or lengthen train.warmup", "pruned": "set search.pruner: none or ask for more "
             "trials", "invalid": "give the searched keys values that fit (the note column says why)",
             "error": "its error is in the note column and the run's error.txt"}


def no_best_causes(ended: list) -> str:
    """'2 diverged: lower train.lr ...; 1 invalid: ...' for trials that ended without a result."""
    causes = collections.Counter(next((k for k in NO_RESULT if k in t.user_attrs), "failed") for t in ended
                                 if "repeat_of" not in t.user_attrs)
    return "; ".join(f"{n} {cause}" + (f": {NO_RESULT[cause]}" if cause in NO_RESULT else "")
                     for cause, n in causes.most_common())


def best_lines(plan: Plan, complete: list) -> list[str]:
    """The best trial, with the caveat its validation score needs and its held-out test score."""
    if not complete:
        return ["no trial completed (each one was pruned, diverged or invalid): there is no best trial"]
    best = (max if plan.direction == "maximize" else min)(complete, key=lambda t: t.value)  # ties: the first
    lines = [f"best: trial {best.number}, {plan.summary_key} {best.value:.4f}: "
             + ", ".join(f"{k}={label(v)}" for k, v in best.params.items())]
    for p in plan.params:  # a choice no completed trial had was never compared
        done = {t.params.get(p.key) for t in complete}
        if p.kind == "categorical" and (never := [label(v) for v in p.encoded if v not in done]):
            lines.append(f"  caveat: no completed trial had {p.key} = {', '.join(never)} (pruned, diverged or "
                         "not drawn): the best trial was not compared with it")
    if "_val_" not in plan.summary_key:  # params, a training loss: nothing was chosen on validation text
        return lines
    lines.append(f"  caveat: {plan.summary_key} is the score this trial was chosen on, so it is optimistic "
                 "(the selection favours lucky trials); the held-out test score below is less so, not free of it "
                 "(a run's luck helps it on both texts): for that, train the chosen trial on new seeds")
    test_key = "final_test_" + plan.summary_key.split("_val_", 1)[1]
    summaries = [read_summary(plan.exp_dir / "runs" / rid) or {} for rid in best.user_attrs.get("run_ids") or []]
    values = [v for s in summaries if isinstance(v := s.get(test_key), (int, float)) and math.isfinite(v)]
    if not values:
        return lines + ["  no held-out test text (data.test_fraction = 0): set data.test_fraction (e.g. 0.1) "
                        "to score the chosen trial on text the search never saw"]
    spread = f", sd {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return lines + [f"  test: {test_key} {statistics.fmean(values):.4f} (mean over {len(values)} seed(s){spread}; "
                    "report.md gives its 95% interval and the best minus the runner-up)"]
