"""The plan of one invocation: what is searched, where the study lives, and how it ends.

Two forms: a `SearchPlan` (a spec with a search block: Optuna proposes the points) and a `GridPlan`
(a grid spec run as a study with --storage or --workers: one trial per grid point, all its seeds).
"""
from __future__ import annotations

import itertools
import os
import socket
import zlib
from pathlib import Path
from typing import Any, Iterator

from experiments import metrics
from experiments.records import plan_entry, plan_record
from experiments.runner import bind_data
from experiments.schema import LIMITS
from experiments.search.space import Param, label, parse_block
from experiments.search.study import STORAGE_ENV, absolute_sqlite, mask, sqlite_url, without_password
from experiments.spec import RunSpec, Spec, points
from registry import SpecError

WORKER_ENV = "LAB_SEARCH_WORKER"          # set in the processes `--workers N` starts: their index
STATE_RANK = {"COMPLETE": 0, "PRUNED": 0, "RUNNING": 1, "WAITING": 2, "FAIL": 3}


class Plan:
    """What every worker of an invocation shares: the spec, the space, the study's storage and target."""

    mode: str
    params: list[Param]
    points: list[dict[str, Any]] | None     # every point, where the space is finite and walked in full
    trials: int                             # finished trials (or grid points) wanted
    metric: str                             # search.metric as written
    summary_key: str                        # the summary.json key that gives a run's value
    reported: str | None                    # the metrics.csv column the pruner sees, if any
    direction: str
    sampler_name: str
    pruner_name: str
    space_size: int | None = None           # distinct points of a finite space (None: a continuous axis)
    warnings: list[str]                     # printed once before the search starts

    def __init__(self, spec: Spec, args, exp_dir: Path, storage: str | None):
        self.spec, self.args, self.exp_dir, self.warnings = spec, args, exp_dir, []
        self.role = os.environ.get(WORKER_ENV)           # None: the process the user started
        db = Path(args.results) / spec.experiment / "study.db"
        default_url = sqlite_url(db)
        # A worker started by --workers gets the parent's default storage as --storage: still the default.
        self.default_storage = storage is None or (self.role is not None and absolute_sqlite(storage) == default_url)
        if self.default_storage:
            self.storage_record, self.storage_url = f"sqlite:///{db.as_posix()}", default_url
        else:  # the record (experiment.json, trials.log) never holds the password
            self.storage_url = absolute_sqlite(storage)
            self.storage_record = without_password(self.storage_url)
        self.study_name = spec.experiment
        self.seed = self.sampler_seed(0)

    def sampler_seed(self, existing: int) -> int:
        """The seed of the sampler on a study that holds `existing` trials (set again once it is open)."""
        if self.sampler_name == "grid":
            return self.spec.seeds[0]
        return sampler_seed(self.spec.seeds[0], self.role, not self.default_storage, existing)

    # -- one trial -------------------------------------------------------------------------------
    def point(self, encoded: dict[str, Any]) -> tuple[str, dict[str, str]]:
        """(variant label, axis labels) of the point a trial suggested (Optuna's encoded values)."""
        raise NotImplementedError

    def runs(self, encoded: dict[str, Any], variant: str, datasets: dict) -> list[RunSpec]:
        """The point's runs, one per seed, bound to their data; SpecError for a point the rules forbid."""
        raise NotImplementedError

    def encoded_points(self) -> Iterator[dict[str, Any]]:
        """Every point of a finite space, in order, as Optuna stores them (lazily: it may be large)."""
        for values in itertools.product(*(p.grid() for p in self.params)):
            yield dict(zip((p.key for p in self.params), values))

    def check_points(self, datasets: dict) -> None:
        """SpecError when no point of a finite space passes the spec's rules (so no trial could run);
        stops at the first one that does. Spaces larger than one experiment may hold are not walked."""
        if not self.space_size or self.space_size > LIMITS["runs"]:
            return
        reasons: list[str] = []
        for encoded in self.encoded_points():
            try:
                self.runs(encoded, self.point(encoded)[0], datasets)
                return
            except SpecError as err:
                reasons += [p for p in err.problems if p not in reasons]
        space = "; ".join(f"search.space.{p.key} = {p.describe()}" for p in self.params)
        raise SpecError(f"no point of the search space can run ({space}): each of its {self.space_size} "
                        f"point(s) breaks the spec's rules — {'; '.join(reasons[:4])}"
                        f"{'; ...' if len(reasons) > 4 else ''}. Give the searched keys values that fit "
                        "the rest of the spec")

    def point_key(self, params: dict[str, Any]) -> tuple:
        """One key per point: a float on a stepped range is rounded (Optuna proposes 0.30000000000000004
        where the grid of its steps holds 0.3)."""
        return tuple((p.key, repr(round(v, 12) if isinstance(v := params.get(p.key), float) else v))
                     for p in self.params)

    def grid_space(self) -> dict[str, list[Any]]:
        return {p.key: p.grid() for p in self.params}

    # -- records ---------------------------------------------------------------------------------
    def experiment_record(self, trials) -> dict[str, Any]:
        """experiment.json from the study's trials: the plan, and one entry per run id with the
        number and state of the trial that stands for it."""
        record = plan_record(self.spec, [], self.search_record())
        record["runs"] = self.entries(trial_owners(trials), trials)
        return record

    def entries(self, owner: dict[str, Any], trials) -> list[dict[str, Any]]:
        """experiment.json's runs; `owner` maps each run id to the trial that stands for it."""
        raise NotImplementedError

    def search_record(self) -> dict[str, Any]:
        return {"storage": self.storage_record, "default_storage": self.default_storage,
                "study_name": self.study_name, "metric": self.summary_key,
                "direction": self.direction, "trials": self.trials, "sampler": self.sampler_name,
                "pruner": self.pruner_name, "mode": self.mode,
                "space": {p.key: p.describe() for p in self.params}}

    def headline(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        lines = [f"{self.spec.experiment}: {self.headline()}",
                 f"  objective: {self.direction} {self.summary_key} (mean over seeds {self.spec.seeds})",
                 f"  sampler: {self.sampler_name} (seed {self.seed}"
                 + ("" if self.sampler_name == "grid" else " for a fresh one-worker study; a resumed or shared one "
                    "mixes in the worker and the trials already in it") + f"), pruner: {self.pruner_name}",
                 f"  storage: {mask(self.storage_record)} (study '{self.study_name}')"]
        lines += [f"  {p.key}: {p.describe()}" for p in self.params]
        return "\n".join(lines)


class SearchPlan(Plan):
    """A search block: Optuna proposes points of the space; each trial's runs are made on demand."""

    mode = "search"

    def __init__(self, spec: Spec, args, exp_dir: Path):
        if spec.axes or spec.variants:
            raise SpecError("a spec with a search block cannot also have grid or variants: the search "
                            "replaces them (put the grid's keys in search.space, or drop the search block "
                            "and run the grid, with --storage to split it among workers)")
        block, problems = parse_block(spec.search, spec.base)
        if problems:  # parse_spec has reported these already; kept for direct callers
            raise SpecError(problems)
        self.params = block["params"]
        self.trials, self.metric, self.summary_key = block["trials"], block["metric"], block["summary_key"]
        self.reported, self.direction = block["reported"], block["direction"]
        self.sampler_name, self.pruner_name = block["sampler"], block["pruner"]
        self.points = list(self.encoded_points()) if self.sampler_name == "grid" else None
        self.space_size = block["space_size"]
        super().__init__(spec, args, exp_dir, storage=chosen_storage(args, block["storage"]))
        if "capped" in block:
            asked, size = block["capped"]
            self.warnings.append(f"search.trials = {asked} but the space has only {size} distinct point(s): the "
                                 f"search stops once each was tried ({size} trials); a point proposed again "
                                 "trains nothing and does not count")

    def values(self, encoded: dict[str, Any]) -> dict[str, Any]:
        return {p.key: p.decode(encoded[p.key]) for p in self.params}

    def point(self, encoded: dict[str, Any]) -> tuple[str, dict[str, str]]:
        values = self.values(encoded)
        return params_label(values), {k: label(v) for k, v in values.items()}

    def runs(self, encoded: dict[str, Any], variant: str, datasets: dict) -> list[RunSpec]:
        values = self.values(encoded)
        runs = self.spec.runs_for(values, variant=variant, axes=values)
        bind_data(runs, datasets, device=self.args.device)
        return runs

    def experiment_record(self, trials) -> dict[str, Any]:
        return super().experiment_record(trials) | {"axes": [p.key for p in self.params], "variants": [],
                                                    "baseline": None}

    def entries(self, owner: dict[str, Any], trials) -> list[dict[str, Any]]:
        entries, seen = [], set()
        for t in sorted(trials, key=lambda t: t.number):
            attrs = t.user_attrs
            for rid, seed in zip(attrs.get("run_ids") or [], attrs.get("seeds") or []):
                if rid in seen or owner.get(rid) is not t:
                    continue
                seen.add(rid)
                entries.append({"run_id": rid, "variant": attrs.get("variant", f"trial-{t.number}"),
                                "axes": attrs.get("axes", {}), "seed": seed, "trial": t.number,
                                "state": t.state.name})
        return entries

    def headline(self) -> str:
        return f"search over {len(self.params)} key(s): {self.trials} finished trials wanted"


class GridPlan(Plan):
    """A grid spec as a study: one trial per (variant x grid point), all its seeds, so workers split it."""

    mode = "grid"

    def __init__(self, spec: Spec, args, exp_dir: Path):
        grid = dict(spec.grid)  # the grid's axes and those of tune: / scale:
        variants = dict(spec.raw.get("variants") or {})
        self.params = ([Param("variant", "categorical", choices=list(variants))] if variants else [])
        self.params += [Param(str(k), "categorical", choices=list(v)) for k, v in grid.items()]
        for p in self.params:
            if len(set(map(repr, p.encoded))) < len(p.encoded):
                raise SpecError(f"grid.{p.key} lists two values with the same label "
                                f"({', '.join(map(str, p.encoded))}); a grid run as a study needs distinct ones")
        combos = [dict(zip((p.key for p in self.params), values))
                  for values in itertools.product(*(p.encoded for p in self.params))]
        labels = [point[0] for point in points(grid, variants, spec.sweeps.linked)]
        self.points = combos
        self.labels = {self.point_key(c): lab for c, lab in zip(combos, labels)}
        self.trials = len(combos)
        self.metric, self.summary_key, self.reported = metrics.VAL_BPB, metrics.FINAL_VAL_BPB, None
        self.direction, self.sampler_name, self.pruner_name = "minimize", "grid", "none"
        super().__init__(spec, args, exp_dir, storage=chosen_storage(args))

    def point(self, encoded: dict[str, Any]) -> tuple[str, dict[str, str]]:
        variant = self.labels[self.point_key(encoded)]
        first = next((r for r in self.spec.runs if r.variant == variant), None)
        return variant, ({k: label(v) for k, v in first.axes.items()} if first else {})

    def runs(self, encoded: dict[str, Any], variant: str, datasets: dict) -> list[RunSpec]:
        return [r for r in self.spec.runs if r.variant == variant]  # bound with the whole spec

    def entries(self, owner: dict[str, Any], trials) -> list[dict[str, Any]]:
        entries = []
        for run in self.spec.runs:
            entry = plan_entry(run)
            if run.run_id in owner:
                entry |= {"trial": owner[run.run_id].number, "state": owner[run.run_id].state.name}
            entries.append(entry)
        return entries

    def headline(self) -> str:
        return f"grid as an Optuna study: {self.trials} points, one trial each"


def trial_owners(trials) -> dict[str, Any]:
    """Run id -> the trial that stands for it: the one that finished it, else the running one, else
    the first (trials of the same point share run ids)."""
    owner: dict[str, Any] = {}
    for t in trials:
        for rid in t.user_attrs.get("run_ids") or []:
            best = owner.get(rid)
            rank = (STATE_RANK.get(t.state.name, 4), t.number)
            if best is None or rank < (STATE_RANK.get(best.state.name, 4), best.number):
                owner[rid] = t
    return owner


def chosen_storage(args, from_spec: str | None = None) -> str | None:
    """--storage, else $LAB_STORAGE_URL (how workers get it, and how a password stays off command lines),
    else the spec's search.storage; None: the default SQLite file."""
    return args.storage or os.environ.get(STORAGE_ENV) or from_spec


def make_plan(spec: Spec, args, exp_dir: Path) -> Plan:
    return SearchPlan(spec, args, exp_dir) if spec.search is not None else GridPlan(spec, args, exp_dir)


def sampler_seed(seed: int, role: str | None, explicit_storage: bool, existing: int = 0) -> int:
    """A fresh study searched by one local worker: the spec's seed, so it is reproducible. Otherwise
    the seed also mixes in who asks (the worker's index; host and pid where workers join a --storage
    study) and how many trials the study already holds: a resumed study or a second worker would
    replay the draws already made with the same seed."""
    if role is None and not explicit_storage and existing == 0:
        return seed
    who = role if role is not None else (f"{socket.gethostname()}:{os.getpid()}" if explicit_storage else "")
    return zlib.crc32(f"{seed}:{who}:{existing}".encode()) % 2**31


def params_label(values: dict[str, Any]) -> str:
    short = {k: k.split(".", 1)[1] for k in values}
    if len(set(short.values())) < len(short):
        short = {k: k for k in values}
    return ", ".join(f"{short[k]}={label(v)}" for k, v in values.items())
