"""The worker loop: ask the study for a trial, train its runs (one per seed) through the Runner,
report the first seed's curve to the pruner, tell the study the mean over the seeds. Many workers
(local processes or other machines) can loop on one study; see experiments/search/__init__.py.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import os
import socket
import time
from datetime import datetime
from typing import Any

from experiments.runner import Runner
from experiments.search.plan import Plan
from experiments.search.study import FINISHED_STATES, Heartbeat, heartbeat_settings, quiet_optuna
from experiments.search.trials import log_event, sync_records
from experiments.train import Stopped
from registry import SpecError

SINCE_ENV = "LAB_SEARCH_SINCE"            # the parent's start time, so every worker counts failures alike


def counted(plan: Plan, finished) -> int:
    """Finished trials that count toward search.trials: repeats never do, and on a finite space
    the distinct points (two workers may finish one point together)."""
    first = [t for t in finished if "repeat_of" not in t.user_attrs]
    return len({plan.point_key(t.params) for t in first}) if plan.space_size else len(first)


class Worker:
    """One worker process on the study: asks for trials until the study has the finished trials it wants."""

    def __init__(self, plan: Plan, study, datasets: dict):
        self.plan, self.study, self.datasets = plan, study, datasets
        self.runner = Runner(plan.exp_dir, datasets, device=plan.args.device, force=False, show_progress=False)
        self.interval, _ = heartbeat_settings()
        self.since = datetime.fromtimestamp(float(os.environ.get(SINCE_ENV) or time.time()))
        self.tag = f"[worker {plan.role}] " if plan.role is not None else ""

    def say(self, text: str) -> None:
        print(self.tag + text, flush=True)

    # -- accounting ----------------------------------------------------------------------------
    def status(self, trials) -> tuple[str, Any]:
        """('done' | 'failing' | 'wait' | 'ask', point to enqueue or None)."""
        plan = self.plan
        by_state: dict[str, list] = {}
        for t in trials:
            by_state.setdefault(t.state.name, []).append(t)
        finished = by_state.get("COMPLETE", []) + by_state.get("PRUNED", [])
        busy = by_state.get("RUNNING", []) + by_state.get("WAITING", [])
        failed_now = [t for t in by_state.get("FAIL", []) if "error" in t.user_attrs
                      and t.datetime_start is not None and t.datetime_start >= self.since]
        if plan.points is None:
            count = counted(plan, finished)
            if count >= plan.trials:
                return "done", None
            if len(failed_now) >= plan.trials:
                return "failing", None
            if count + len(busy) >= plan.trials and not by_state.get("WAITING"):
                return "wait", None
            return "ask", None
        done = {plan.point_key(t.params) for t in finished}
        if len(done) >= plan.trials:
            return "done", None
        failed = {plan.point_key(t.params) for t in failed_now} - done
        taken = {plan.point_key(t.params) for t in busy}
        todo = [p for p in plan.points if plan.point_key(p) not in done | failed | taken]
        if not todo or len(done) + len(taken) >= plan.trials:
            if by_state.get("WAITING"):
                return "ask", None
            return ("wait", None) if taken else ("failing" if failed else "done", None)
        tried = {plan.point_key(t.params) for t in trials}
        # A point whose trials all failed is 'visited' for the GridSampler: enqueue it explicitly.
        again = next((p for p in todo if plan.point_key(p) in tried), None)
        return "ask", again

    def surplus(self, trial, params: dict[str, Any]) -> bool:
        """Another worker asked at the same moment and the target is already covered without this
        trial (or, on a grid, this point is done or taken by an earlier trial)."""
        plan = self.plan
        others = [t for t in self.study.get_trials(deepcopy=False) if t.number != trial.number]
        finished = [t for t in others if t.state.name in FINISHED_STATES]
        earlier = [t for t in others if t.state.name == "RUNNING" and t.number < trial.number]
        mine = plan.point_key(params)
        if plan.points is None:
            if plan.space_size and mine in {plan.point_key(t.params) for t in earlier}:
                return True  # being trained by an earlier trial: take an untried point instead
            return counted(plan, finished) + len(earlier) >= plan.trials
        covered = {plan.point_key(t.params) for t in finished + earlier}
        return mine in covered or len(covered) >= plan.trials

    # -- the loop --------------------------------------------------------------------------------
    def loop(self) -> int:
        import optuna

        announced_wait = False
        while True:
            with quiet_optuna():
                optuna.storages.fail_stale_trials(self.study)
            state, again = self.status(self.study.get_trials(deepcopy=False))
            if state == "done":
                return 0
            if state == "failing":
                self.say(f"error: stopping: {self.plan.trials} trial(s) failed in this invocation (see the "
                         f"error.txt of their runs under {self.plan.exp_dir / 'runs'})")
                return 1
            if state == "wait":
                if not announced_wait:
                    self.say("waiting for the trials other workers are running (a dead worker's trial is "
                             "retried once its heartbeat is stale)")
                    announced_wait = True
                time.sleep(min(self.interval, 2))
                continue
            announced_wait = False
            if again is not None:
                self.study.enqueue_trial(again)
            with quiet_optuna():
                trial = self.study.ask()
            with Heartbeat(self.study._storage, trial._trial_id, self.interval):
                try:
                    outcome = self.run_trial(trial)
                except KeyboardInterrupt:
                    self.interrupted(trial)
                    raise
            self.tell(trial, *outcome)

    def interrupted(self, trial) -> None:
        """Ctrl-C: the trial is failed and queued again, so a rerun resumes its runs first."""
        import optuna

        with contextlib.suppress(Exception), quiet_optuna():
            trial.set_user_attr("interrupted", True)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            if trial.params:
                self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        with contextlib.suppress(Exception):
            sync_records(self.plan, self.study)

    def tell(self, trial, state_name: str, value: float | None, note: str) -> None:
        import optuna

        state = optuna.trial.TrialState[state_name]
        try:
            with quiet_optuna():
                self.study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
        except Exception as err:  # the trial was failed as stale by another worker meanwhile
            self.say(f"trial {trial.number}: could not record its result ({type(err).__name__}: {err}); "
                     "a retry of this trial reuses its runs")
        if note:
            self.say(f"trial {trial.number}: {note}")
        sync_records(self.plan, self.study)

    # -- one trial -------------------------------------------------------------------------------
    def attr(self, trial, key: str, value: Any) -> None:
        """A user attribute; ignored when the trial was failed as stale elsewhere meanwhile."""
        import optuna

        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            trial.set_user_attr(key, value)

    def run_trial(self, trial) -> tuple[str, float | None, str]:
        """(state name, value, note)."""
        plan = self.plan
        encoded = {p.key: p.suggest(trial) for p in plan.params}
        if self.surplus(trial, encoded):
            self.attr(trial, "surplus", "another worker covered this point/target at the same moment")
            self.enqueue_untried(trial)
            return "FAIL", None, ""
        if (first := self.first_trial_of(encoded)) is not None:
            return self.repeat(trial, first)
        self.attr(trial, "host", socket.gethostname())
        self.attr(trial, "pid", os.getpid())
        variant, axes = plan.point(encoded)
        try:
            runs = plan.runs(encoded, variant, self.datasets)
        except SpecError as err:
            self.attr(trial, "invalid", str(err))
            self.attr(trial, "variant", variant)
            return "PRUNED", None, f"{variant}: invalid combination, pruned ({err})"
        self.attr(trial, "variant", variant)
        self.attr(trial, "axes", axes)
        self.attr(trial, "run_ids", [r.run_id for r in runs])
        self.attr(trial, "seeds", [r.seed for r in runs])
        sync_records(plan, self.study)
        return self.train_runs(trial, variant, runs)

    # -- a finite space: points proposed again ---------------------------------------------------
    def first_trial_of(self, encoded: dict[str, Any]):
        """On a finite space, the finished trial that first tried this point (None: a new point)."""
        if self.plan.points is not None or not self.plan.space_size:
            return None  # a grid walks each point once; a continuous axis all but never repeats one
        key = self.plan.point_key(encoded)
        return next((t for t in self.study.get_trials(deepcopy=False) if t.state.name in FINISHED_STATES
                     and "repeat_of" not in t.user_attrs and self.plan.point_key(t.params) == key), None)

    def repeat(self, trial, first) -> tuple[str, float | None, str]:
        """A point tried before: nothing trains (a pruned point stays pruned: its run stopped there, and
        no run id trains twice); the trial is marked `repeat_of` and told as FAIL, which the samplers and
        pruners leave out (told COMPLETE, a copy of the best point would land in TPE's "bad" group and
        push its proposals away) and search.trials does not count; the next trial takes an untried
        point, so repeats cannot spin."""
        self.attr(trial, "repeat_of", first.number)
        for key in ("variant", "axes"):
            if key in first.user_attrs:
                self.attr(trial, key, first.user_attrs[key])
        self.enqueue_untried(trial)
        shown = f"{self.plan.summary_key} {first.value:.4f}" if first.state.name == "COMPLETE" else first.state.name.lower()
        return "FAIL", None, (f"{first.user_attrs.get('variant', '')}: repeat of trial {first.number} "
                              f"({shown}), not counted; the next trial takes an untried point")

    def enqueue_untried(self, trial) -> None:
        """Queue a point no trial has taken (drawn with a seeded generator, else the first in order)."""
        import random

        plan = self.plan
        if plan.points is not None or not plan.space_size:
            return  # a grid's loop queues its own points (status)
        trials = [t for t in self.study.get_trials(deepcopy=False) if t.number != trial.number]
        if any(t.state.name == "WAITING" for t in trials):
            return  # the queue offers a point already; if it is a repeat too, that trial queues one
        taken = {plan.point_key(t.params) for t in trials if t.state.name != "FAIL"}
        rng = random.Random(f"{plan.seed}:{trial.number}")
        draws = ({p.key: rng.choice(p.grid()) for p in plan.params} for _ in range(200))
        point = next((p for p in itertools.chain(draws, plan.encoded_points())
                      if plan.point_key(p) not in taken), None)
        if point is not None:
            self.study.enqueue_trial(point, user_attrs={"untried_after": trial.number})

    def train_runs(self, trial, variant: str, runs) -> tuple[str, float | None, str]:
        """Train a trial's runs seed by seed (the first reports to the pruner); its outcome and value."""
        plan, started, results = self.plan, time.perf_counter(), {}
        retry_of = self.study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        for i, run in enumerate(runs):
            on_eval = self.pruning_callback(trial, run) if i == 0 and plan.pruner_name != "none" else None
            outcome, summary = self.execute(trial, run, on_eval)
            summary = summary or {}
            status = summary.get("status", outcome)
            if status != "done" and i + 1 < len(runs):  # the later seeds will not run: not in the records
                self.attr(trial, "run_ids", [r.run_id for r in runs[:i + 1]])
                self.attr(trial, "seeds", [r.seed for r in runs[:i + 1]])
            if status == "pruned":
                self.attr(trial, "pruned", summary.get("error") or "pruned")
                return "PRUNED", None, f"{variant}: pruned ({summary.get('error')})"
            if status == "diverged":
                self.attr(trial, "diverged", summary.get("error") or "diverged")
                return "PRUNED", None, f"{variant}: run {run.run_id} diverged, pruned"
            if status != "done":
                reason = summary.get("error") or status
                self.attr(trial, "error", f"run {run.run_id}: {reason}")
                return "FAIL", None, (f"{variant}: run {run.run_id} failed ({reason}); see "
                                      f"{plan.exp_dir / 'runs' / run.run_id / 'error.txt'}")
            value = summary.get(plan.summary_key)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                self.attr(trial, "error", f"run {run.run_id} has no finite {plan.summary_key}")
                return "FAIL", None, f"{variant}: run {run.run_id} has no finite {plan.summary_key}"
            results[run.run_id] = value
        self.attr(trial, "values", results)
        mean = sum(results.values()) / len(results)
        again = f" (retry of trial {retry_of})" if retry_of is not None else ""
        return "COMPLETE", mean, (f"{variant}: {plan.summary_key} {mean:.4f} (mean of {len(results)} seed(s), "
                                  f"{time.perf_counter() - started:.1f} s){again}")

    def execute(self, trial, run, on_eval) -> tuple[str, dict | None]:
        """Runner.execute, waiting while another worker holds the run (a duplicate point)."""
        plan = self.plan
        log_event(plan.exp_dir, event="start", trial=trial.number, run_id=run.run_id, seed=run.seed)
        while True:
            outcome, summary = self.runner.execute(run, on_eval=on_eval)
            if outcome != "running elsewhere":
                break
            time.sleep(0.5)
        trained = outcome != "skipped"
        log_event(plan.exp_dir, event="end", trial=trial.number, run_id=run.run_id, seed=run.seed,
                  outcome=outcome, trained=trained,  # a skipped run's summary holds its first training's
                  resumed_at_step=(summary or {}).get("resumed_at_step") if trained else None)
        return outcome, summary

    def pruning_callback(self, trial, run):
        import optuna

        column, last = self.plan.reported, run.train.steps
        alive = {"ok": True}

        def on_eval(row: dict[str, float]) -> None:
            step, value = int(row["step"]), row.get(column)
            if step == 0 or not alive["ok"] or value is None or not math.isfinite(value):
                return
            try:
                with quiet_optuna():
                    trial.report(float(value), step)
                    prune = step < last and trial.should_prune()
            except optuna.exceptions.UpdateFinishedTrialError:
                alive["ok"] = False  # failed as stale elsewhere: finish the run for the retry to reuse
                return
            if prune:
                raise Stopped("pruned", f"stopped by the {self.plan.pruner_name} pruner at step {step} "
                                        f"({column} {value:.4f})")

        return on_eval

