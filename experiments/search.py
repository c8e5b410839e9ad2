"""Optuna search over any spec field, and grids split among many workers through one Optuna study.

A ``search:`` block in a spec hands the space to Optuna instead of a grid::

    search:
      trials: 20                 # finished trials wanted (COMPLETE + PRUNED; see "Counting")
      metric: val_bpb            # a summary metric (table below); the trial's value = mean over the seeds
      direction: minimize        # minimize | maximize
      sampler: tpe               # tpe | random | grid; seeded with the spec's first seed
      pruner: median             # median | hyperband | none (default: median when the metric has a
                                 #   per-evaluation counterpart, else none)
      storage: null              # default sqlite:///<results>/<experiment>/study.db; any SQLAlchemy URL
                                 #   (--storage on the command line overrides it)
      space:
        model.n_heads: [1, 2, 4, 8]                   # list -> categorical (any values, component names
                                                      #   and {name: ..., option: ...} included)
        model.n_layers: {int: [1, 6]}                 # integers in [1, 6]; optional step, log
        train.lr: {float: [1.0e-4, 3.0e-3], log: true}  # optional step (not with log)

Every space key is a dotted spec key (``section.field`` or ``model.<component>.<option>``); every
value is checked before anything is built, categorical component names through their registry.

Metrics (``search.metric`` -> the summary.json key that gives a run's value -> the metrics.csv column
reported to the pruner at every evaluation):

    val_bpb, final_val_bpb      -> final_val_bpb     (val_bpb)
    val_loss, final_val_loss    -> final_val_loss    (val_loss)
    train_loss, final_train_loss-> final_train_loss  (train_loss)
    best_val_bpb / best_val_loss-> best_val_bpb / best_val_loss (val_bpb / val_loss)
    tokens_per_s, wall_s, train_s, params, flops_per_token -> the same key (no pruning)

Trials. Each trial is one run per spec seed (``Spec.runs_for``) in the ordinary results layout; its
value is the mean of the metric over the seeds. Intermediate values of the *first* seed are reported
at every evaluation after step 0 (so every trial's curve is on the same seed and batches) and the
pruner may stop that run there (status ``pruned``; the median pruner waits for a third of the steps
and for a few finished trials); the other seeds run only when the first was not pruned. A
combination the spec rules forbid (``d_model % n_heads``, a context longer than the data) is told to
Optuna as PRUNED with the reason in the user attribute ``invalid``; a diverged run makes its trial
PRUNED (``diverged``); a run that crashes makes its trial FAIL (``error``). Trials with the
same parameters share run ids, so a repeated point is never trained twice: it reuses the first
trial's runs (and waits for them when another worker is still training them).

Counting. ``trials`` counts finished trials: COMPLETE and PRUNED (invalid and diverged points
included, so a space full of invalid points still ends). FAIL trials do not count: a crashed trial
is replaced by a new one, and a worker gives up with exit 1 once as many trials failed in this
invocation as ``trials`` asks for. Rerunning the same command resumes the study up to ``trials``.

Workers. ``--workers N`` starts N local worker processes on one study (``OMP_NUM_THREADS`` split
among them); ``--storage URL`` lets workers on other machines join (each runs the same command).
A worker records a heartbeat every ``LAB_SEARCH_HEARTBEAT_S`` seconds (default 10; "I" or "I,G" to
set the grace period G, default 3 I); a RUNNING trial whose heartbeat is older than the grace period
is failed by the next worker that looks and retried once with the same parameters, so it resumes
the dead worker's runs from their checkpoints (the run locks are flocks, freed with their process).
With ``--storage`` (or ``--workers``), a grid spec without a search block runs the same way: one
trial per grid point (all its seeds) through Optuna's GridSampler, so many workers split one grid.
The sampler is seeded with the spec's first seed (plus the worker's index for local workers; mixed
with host and pid for workers that join a ``--storage`` study, whose order is not reproducible).

Records. experiment.json's ``runs`` is re-derived from the study after every trial (each trial
holds its run ids in the user attribute ``run_ids``), with ``trial`` and ``state`` per run, so
runs.csv gains those columns; its ``search`` holds storage, study_name, metric (the summary key)
and direction for the analysis. ``trials.log`` in the experiment folder is an append-only JSON-lines
log of every run a worker started and how it ended (who trained what, where).
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import itertools
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any

from registry import FAMILIES, SpecError, choices_hint, close_matches

SEARCH_KEYS = ("trials", "metric", "direction", "sampler", "pruner", "storage", "space")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
DIRECTIONS = ("minimize", "maximize")
RANGE_KEYS = ("int", "float", "log", "step")
DEFAULT_TRIALS = 20
# search.metric -> (summary.json key, metrics.csv column reported at each evaluation or None)
METRICS: dict[str, tuple[str, str | None]] = {
    "val_bpb": ("final_val_bpb", "val_bpb"), "final_val_bpb": ("final_val_bpb", "val_bpb"),
    "val_loss": ("final_val_loss", "val_loss"), "final_val_loss": ("final_val_loss", "val_loss"),
    "train_loss": ("final_train_loss", "train_loss"), "final_train_loss": ("final_train_loss", "train_loss"),
    "best_val_bpb": ("best_val_bpb", "val_bpb"), "best_val_loss": ("best_val_loss", "val_loss"),
    "tokens_per_s": ("tokens_per_s", None), "wall_s": ("wall_s", None), "train_s": ("train_s", None),
    "params": ("params", None), "flops_per_token": ("flops_per_token", None),
}
WORKER_ENV = "LAB_SEARCH_WORKER"          # set in the processes `--workers N` starts: their index
SINCE_ENV = "LAB_SEARCH_SINCE"            # the parent's start time, so every worker counts failures alike
HEARTBEAT_ENV = "LAB_SEARCH_HEARTBEAT_S"
FINISHED_STATES = ("COMPLETE", "PRUNED")
PRIMITIVE = (str, int, float, bool, type(None))


# ================================================================================================
# The search block
# ================================================================================================
@dataclasses.dataclass
class Param:
    """One dimension of the space: a categorical list or an int/float range."""

    key: str
    kind: str                          # categorical | int | float
    choices: list[Any] = dataclasses.field(default_factory=list)   # categorical values as written
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False

    @property
    def encoded(self) -> list[Any]:
        """Categorical choices as Optuna stores them: the value, or its label when not a scalar."""
        return [encode(v) for v in self.choices]

    def distribution(self):
        import optuna

        if self.kind == "categorical":
            return optuna.distributions.CategoricalDistribution(self.encoded)
        if self.kind == "int":
            return optuna.distributions.IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return optuna.distributions.FloatDistribution(float(self.low), float(self.high), log=self.log,
                                                      step=None if self.step is None else float(self.step))

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, self.encoded)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def decode(self, value: Any) -> Any:
        if self.kind == "categorical":
            return self.choices[self.encoded.index(value)]
        return value

    def grid(self) -> list[Any] | None:
        """Every value, for the grid sampler (None for a continuous range)."""
        if self.kind == "categorical":
            return self.encoded
        if self.kind == "int":
            return list(range(self.low, self.high + 1, self.step or 1))
        if self.step is None:
            return None
        n = int(math.floor((self.high - self.low) / self.step + 1e-9))
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]

    def describe(self) -> str:
        if self.kind == "categorical":
            return "one of " + ", ".join(label(v) for v in self.choices)
        extra = (f", step {self.step}" if self.step else "") + (", log scale" if self.log else "")
        return f"{'an integer' if self.kind == 'int' else 'a number'} in [{self.low}, {self.high}]{extra}"


def encode(value: Any) -> Any:
    return value if isinstance(value, PRIMITIVE) else label(value)


def label(value: Any) -> str:
    from experiments.spec import label as spec_label

    if isinstance(value, float):
        return f"{value:.6g}"
    return spec_label(value)


def check_block(search: Any, base: dict) -> list[str]:
    """Every problem with a spec's `search:` block, each a readable sentence ([] when it is fine)."""
    return parse_block(search, base)[1]


def parse_block(search: Any, base: dict) -> tuple[dict[str, Any], list[str]]:
    """(the block with defaults filled and `space` parsed into Params, problems)."""
    if not isinstance(search, dict):
        return {}, [f"search must be a mapping with keys {', '.join(SEARCH_KEYS)} "
                    f"(e.g. search: {{trials: 20, space: {{model.n_heads: [1, 2, 4]}}}}), not {search!r}"]
    problems: list[str] = []
    for key in search:
        if key not in SEARCH_KEYS:
            problems.append(f"unknown key search.{key}{choices_hint(key, SEARCH_KEYS, 'valid keys')}")
    trials = search.get("trials")
    if trials is not None and not (isinstance(trials, int) and not isinstance(trials, bool) and trials > 0):
        problems.append(f"search.trials = {trials!r} must be a positive integer (finished trials wanted)")
        trials = None
    metric = search.get("metric", "val_bpb")
    if metric not in METRICS:
        problems.append(f"search.metric = {metric!r} is not a summary metric"
                        f"{choices_hint(metric, METRICS)}")
        metric = "val_bpb"
    direction = search.get("direction", "minimize")
    if direction not in DIRECTIONS:
        problems.append(f"search.direction = {direction!r} must be one of {', '.join(DIRECTIONS)}"
                        f"{close_matches(str(direction), list(DIRECTIONS))}")
    sampler = search.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        problems.append(f"search.sampler = {sampler!r} is not a sampler"
                        f"{choices_hint(sampler, SAMPLERS)}")
    reported = METRICS[metric][1]
    pruner = search.get("pruner", "median" if reported else "none")
    if pruner is None or pruner is False:
        pruner = "none"
    if pruner not in PRUNERS:
        problems.append(f"search.pruner = {pruner!r} is not a pruner"
                        f"{choices_hint(pruner, PRUNERS)}")
    elif pruner != "none" and reported is None:
        problems.append(f"search.pruner = {pruner!r} needs a metric measured at every evaluation, and "
                        f"search.metric = {metric!r} is only known at the end of a run: use pruner: none "
                        f"or one of {', '.join(m for m, (_, r) in METRICS.items() if r)}")
    storage = search.get("storage")
    if storage is not None:
        problems += storage_problems(storage, "search.storage")
    params, space_problems = parse_space(search.get("space"), base)
    problems += space_problems
    block = {"trials": trials, "metric": metric, "summary_key": METRICS[metric][0], "reported": reported,
             "direction": direction, "sampler": sampler, "pruner": pruner, "storage": storage, "params": params}
    if sampler == "grid" and not space_problems:
        continuous = [p.key for p in params if p.grid() is None]
        if continuous:
            problems.append(f"search.sampler = 'grid' needs a finite set of values, but search.space."
                            f"{continuous[0]} is a continuous range: give it a list, a step, or use "
                            "sampler: tpe or random")
        else:
            size = math.prod(len(p.grid()) for p in params)
            block["trials"] = min(trials or size, size)
    if block["trials"] is None:
        block["trials"] = DEFAULT_TRIALS
    return block, problems


def storage_problems(url: Any, where: str) -> list[str]:
    if not isinstance(url, str) or not url:
        return [f"{where} = {url!r} must be a database URL such as sqlite:///study.db or "
                "postgresql+psycopg2://user:password@host:5432/db (or null for the default)"]
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(url)
    except ArgumentError:
        return [f"{where} = {url!r} is not a database URL: write it as dialect+driver://user:password@host:port/db, "
                "e.g. sqlite:///study.db or postgresql+psycopg2://lab@localhost:5432/lab"]
    return []


def parse_space(space: Any, base: dict) -> tuple[list[Param], list[str]]:
    from experiments.spec import key_problem

    if space is None:
        return [], ["search.space is missing: give the keys to search, e.g. space: {model.n_heads: [1, 2, 4], "
                    "model.n_layers: {int: [1, 4]}}"]
    if not isinstance(space, dict) or not space:
        return [], [f"search.space = {space!r} must be a non-empty mapping of dotted spec keys to a list "
                    "(categorical) or {int: [low, high]} / {float: [low, high], log: true}"]
    params, problems = [], []
    for key, value in space.items():
        key = str(key)
        where = f"search.space.{key}"
        if problem := key_problem(key, base, "search.space"):
            problems.append(problem)
            continue
        if isinstance(value, list):
            if not value:
                problems.append(f"{where} = [] must be a non-empty list of values")
                continue
            found = [p for v in value for p in value_problems(key, v, base, space)]
            labels = [encode(v) for v in value]
            if len(set(map(repr, labels))) < len(labels):
                found.append(f"{where} = {value!r} lists a value twice")
            problems += found
            if not found:
                params.append(Param(key, "categorical", choices=list(value)))
            continue
        if not isinstance(value, dict):
            problems.append(f"{where} = {value!r} must be a list of values (categorical) or a range: "
                            "{int: [low, high]} or {float: [low, high], log: true}")
            continue
        param, found = parse_range(key, value, base, space)
        problems += found
        if param is not None:
            params.append(param)
    return params, problems


def parse_range(key: str, value: dict, base: dict, space: dict) -> tuple[Param | None, list[str]]:
    where = f"search.space.{key}"
    problems = []
    for k in value:
        if k not in RANGE_KEYS:
            problems.append(f"unknown key {k!r} in {where}{close_matches(str(k), list(RANGE_KEYS)) or ' —'} "
                            f"a range is {{int: [low, high]}} or {{float: [low, high]}} with optional log: true "
                            "or step; a list of values is categorical")
    kinds = [k for k in ("int", "float") if k in value]
    if len(kinds) != 1:
        problems.append(f"{where} = {value!r} must name exactly one of int or float, e.g. {{int: [1, 6]}} "
                        "or {float: [1.0e-4, 3.0e-3], log: true}")
        return None, problems
    kind = kinds[0]
    bounds = value[kind]
    ok_number = (lambda v: isinstance(v, int) and not isinstance(v, bool)) if kind == "int" else \
        (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(ok_number(b) for b in bounds)):
        problems.append(f"{where}.{kind} = {bounds!r} must be [low, high], two "
                        f"{'integers' if kind == 'int' else 'numbers'}")
        return None, problems
    low, high = bounds
    log, step = value.get("log", False), value.get("step")
    if low > high:
        problems.append(f"{where}.{kind} = {bounds!r}: low {low} > high {high}")
    if not isinstance(log, bool):
        problems.append(f"{where}.log = {log!r} must be true or false")
        log = False
    if step is not None and not (ok_number(step) and step > 0):
        problems.append(f"{where}.step = {step!r} must be a positive {'integer' if kind == 'int' else 'number'}")
        step = None
    if log and low <= 0:
        problems.append(f"{where}: log: true needs low > 0, got {low}")
    if log and step not in (None, 1):
        problems.append(f"{where}: log: true and step cannot be used together")
    for bound in (low, high):  # a float range suggests floats: the field must take them
        problems += value_problems(key, float(bound) if kind == "float" else bound, base, space)
    if problems:
        return None, list(dict.fromkeys(problems))
    return Param(key, kind, low=low, high=high, step=step, log=log), []


def value_problems(key: str, value: Any, base: dict, space: dict) -> list[str]:
    """Whether one candidate value fits its field (each alone; combinations are checked per trial)."""
    from components.model import PRESETS
    from experiments.spec import COMPONENT_FIELDS, SECTIONS
    from registry import load_all

    load_all()
    section, field, *option = key.split(".")
    where = f"search.space.{key}"
    component = (section == "model" and field in COMPONENT_FIELDS) or (section, field) == ("data", "tokenizer")
    family = "tokenizer" if section == "data" else field
    if component and option:
        if f"{section}.{field}" in space:  # the component itself is searched: checked per trial
            return []
        given = base.get(section, {})
        preset = PRESETS.get(given.get("preset"), {}) if section == "model" else {}
        current = given.get(field, preset.get(field, SECTIONS[section][field].default))
        name, given = FAMILIES[family].split(current)
        return FAMILIES[family].check({**given, "name": name, option[0]: value}, f"{where}")
    if component:
        if not isinstance(value, (str, dict)):
            return [f"{where} = {value!r} must be a registered {family} name or {{name: ..., option: ...}} "
                    f"(registered: {', '.join(FAMILIES[family].names())})"]
        return FAMILIES[family].check(value, where)
    if (section, field) == ("model", "preset"):
        if value not in PRESETS:
            return [f"{where} = {value!r} is not a preset{choices_hint(value, PRESETS, 'presets')}"]
        return []
    spec_field = SECTIONS[section][field]
    if not spec_field.valid(value):
        return [f"{where}: {section}.{field} = {value!r} must be {spec_field.rule}"]
    return []


# ================================================================================================
# The plan of one invocation: what is searched, where, and how it ends
# ================================================================================================
class Plan:
    """Everything a worker needs: the space (or the grid as points), the study, the target."""

    def __init__(self, spec, args, exp_dir: Path):
        from experiments.spec import points

        self.spec, self.args, self.exp_dir = spec, args, exp_dir
        self.role = os.environ.get(WORKER_ENV)           # None: the process the user started
        if spec.search is not None:
            if spec.axes or spec.variants:
                raise SpecError("a spec with a search block cannot also have grid or variants: the search "
                                "replaces them (put the grid's keys in search.space, or drop the search block "
                                "and run the grid, with --storage to split it among workers)")
            block, problems = parse_block(spec.search, spec.base)
            if problems:  # parse_spec has reported these already; kept for direct callers
                raise SpecError(problems)
            self.mode = "search"
            self.params: list[Param] = block["params"]
            self.trials, self.metric, self.summary_key = block["trials"], block["metric"], block["summary_key"]
            self.reported, self.direction = block["reported"], block["direction"]
            self.sampler_name, self.pruner_name = block["sampler"], block["pruner"]
            storage = args.storage or block["storage"]
            self.points = ([dict(zip((p.key for p in self.params), values))
                            for values in itertools.product(*(p.grid() for p in self.params))]
                           if self.sampler_name == "grid" else None)
            self.labels: dict[tuple, str] = {}
        else:
            # A grid spec as a study: one trial per (variant x grid point), all its seeds.
            self.mode = "grid"
            grid = dict(spec.raw.get("grid") or {})
            variants = dict(spec.raw.get("variants") or {})
            self.params = ([Param("variant", "categorical", choices=list(variants))] if variants else [])
            self.params += [Param(str(k), "categorical", choices=list(v)) for k, v in grid.items()]
            for p in self.params:
                if len(set(map(repr, p.encoded))) < len(p.encoded):
                    raise SpecError(f"grid.{p.key} lists two values with the same label "
                                    f"({', '.join(map(str, p.encoded))}); a grid run as a study needs distinct ones")
            combos = [dict(zip((p.key for p in self.params), values))
                      for values in itertools.product(*(p.encoded for p in self.params))]
            labels = [point[0] for point in points(grid, variants)]
            self.points = combos
            self.labels = {self.point_key(c): lab for c, lab in zip(combos, labels)}
            self.trials = len(combos)
            self.metric, self.summary_key, self.reported = "val_bpb", "final_val_bpb", None
            self.direction, self.sampler_name, self.pruner_name = "minimize", "grid", "none"
            storage = args.storage
        db = Path(args.results) / spec.experiment / "study.db"
        default_url = f"sqlite:///{db.resolve().as_posix()}"
        # A worker started by --workers gets the parent's default storage as --storage: still the default.
        self.default_storage = storage is None or (self.role is not None and absolute_sqlite(storage) == default_url)
        if self.default_storage:
            self.storage_record, self.storage_url = f"sqlite:///{db.as_posix()}", default_url
        else:
            self.storage_url = self.storage_record = absolute_sqlite(storage)
        self.study_name = spec.experiment
        self.seed = (spec.seeds[0] if self.sampler_name == "grid"
                     else sampler_seed(spec.seeds[0], self.role, explicit_storage=not self.default_storage))

    # -- points ----------------------------------------------------------------------------------
    def point_key(self, params: dict[str, Any]) -> tuple:
        return tuple((p.key, repr(params.get(p.key))) for p in self.params)

    def grid_space(self) -> dict[str, list[Any]]:
        return {p.key: p.grid() for p in self.params}

    # -- records ---------------------------------------------------------------------------------
    def search_record(self) -> dict[str, Any]:
        return {"storage": self.storage_record, "study_name": self.study_name, "metric": self.summary_key,
                "direction": self.direction, "trials": self.trials, "sampler": self.sampler_name,
                "pruner": self.pruner_name, "mode": self.mode,
                "space": {p.key: p.describe() for p in self.params}}

    def describe(self) -> str:
        what = (f"search over {len(self.params)} key(s): {self.trials} finished trials wanted"
                if self.mode == "search" else f"grid as an Optuna study: {self.trials} points, one trial each")
        lines = [f"{self.spec.experiment}: {what}",
                 f"  objective: {self.direction} {self.summary_key} (mean over seeds {self.spec.seeds})",
                 f"  sampler: {self.sampler_name} (seed {self.seed}), pruner: {self.pruner_name}",
                 f"  storage: {mask(self.storage_record)} (study '{self.study_name}')"]
        lines += [f"  {p.key}: {p.describe()}" for p in self.params]
        return "\n".join(lines)


def absolute_sqlite(url: str) -> str:
    """sqlite:///relative/path -> sqlite:////absolute/path, so every worker opens the same file."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url[len(prefix):] not in ("", ":memory:"):
        return prefix + Path(url[len(prefix):]).resolve().as_posix()
    return url


def sampler_seed(seed: int, role: str | None, explicit_storage: bool) -> int:
    if role is not None:
        return seed + int(role)
    if explicit_storage:  # workers on other machines must not propose the same points in lockstep
        return seed + zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 1_000_000 + 1000
    return seed


def mask(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def heartbeat_settings() -> tuple[int, int]:
    raw = os.environ.get(HEARTBEAT_ENV, "10")
    try:
        parts = [int(float(x)) for x in raw.split(",")]
        interval = max(1, parts[0])
        grace = parts[1] if len(parts) > 1 else 3 * interval
        return interval, max(grace, interval + 1)
    except (ValueError, IndexError):
        raise SpecError(f"{HEARTBEAT_ENV} = {raw!r} must be seconds between heartbeats, optionally "
                        "followed by the grace period: e.g. 10 or 10,30") from None


# ================================================================================================
# Optuna objects
# ================================================================================================
class StorageError(Exception):
    pass


@contextlib.contextmanager
def quiet_optuna():
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # what matters is printed here, in our words
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            yield optuna
    finally:
        optuna.logging.set_verbosity(level)


def open_storage(url: str):
    """An RDBStorage with heartbeats and one retry of stale trials; StorageError in plain words."""
    import inspect

    with quiet_optuna() as optuna:
        storages = optuna.storages
        retry_cls = getattr(storages, "RetryHeartbeatStaleTrialCallback", None) or storages.RetryFailedTrialCallback
        callback = retry_cls(max_retry=1, inherit_intermediate_values=True)
        interval, grace = heartbeat_settings()
        dialect = url.split(":", 1)[0].split("+", 1)[0]
        engine: dict[str, Any] = {"pool_pre_ping": True}
        if dialect == "sqlite":
            engine["connect_args"] = {"timeout": 120}
        elif dialect.startswith("postgres"):
            engine["connect_args"] = {"connect_timeout": 10}
        elif dialect == "mysql":
            engine["connect_args"] = {"connect_timeout": 10}
        params = inspect.signature(storages.RDBStorage.__init__).parameters
        stale = ("heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in params
                 else "failed_trial_callback")
        for attempt in range(6):
            try:
                return storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=interval,
                                           grace_period=grace, **{stale: callback})
            except Exception as err:  # any driver, any failure: one paragraph, no traceback
                # Workers that start together race to create the tables of a new database: the
                # losers see a duplicate row or table (or a locked SQLite file) and try again.
                text = f"{type(err).__name__} {err}".lower()
                racing = any(s in text for s in ("integrityerror", "already exists", "unique constraint",
                                                 "duplicate", "database is locked"))
                if not racing or attempt == 5:
                    raise StorageError(storage_failure(url, err)) from None
                time.sleep(0.2 * (attempt + 1))


def storage_failure(url: str, err: BaseException) -> str:
    detail = " ".join(str(getattr(err, "orig", None) or err).split())
    detail = detail.split(" (Background on this error")[0]
    if isinstance(err, (ImportError, ModuleNotFoundError)) or "NoSuchModuleError" in type(err).__name__:
        hint = "the database driver this URL names is not installed (PostgreSQL needs psycopg2-binary)"
    else:
        hint = "check the URL, that the server runs and is reachable from here, and that the database exists"
    return (f"cannot open the Optuna storage {mask(url)}: {type(err).__name__}: {detail[:400]} — {hint}; "
            "nothing was written under the results folder")


class KeepGoingGridSampler:
    """Optuna's GridSampler without its `study.stop()` once the grid is covered: the ask/tell loop
    here decides when the study is done (and a stop outside `optimize` is an error)."""

    def __new__(cls, search_space, seed):
        import optuna

        class _Grid(optuna.samplers.GridSampler):
            def after_trial(self, study, trial, state, values):  # noqa: D401
                return None

        return _Grid(search_space, seed=seed)


def make_sampler(plan: Plan):
    import optuna

    if plan.sampler_name == "grid":
        # Every worker must shuffle the grid alike (its first trials take grid point = trial number):
        # the spec's seed, never a per-worker one.
        return KeepGoingGridSampler(plan.grid_space(), plan.spec.seeds[0])
    if plan.sampler_name == "random":
        return optuna.samplers.RandomSampler(seed=plan.seed)
    # 10 random trials before TPE models anything is Optuna's default; a short search starts earlier.
    return optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=max(2, min(10, plan.trials // 3)))


def make_pruner(plan: Plan):
    import optuna

    train = plan.spec.runs[0].train if plan.spec.runs else {}
    if plan.pruner_name == "median":
        # No pruning in the first third of a run: deeper or wider models often start slower, and a
        # search that stops them at the first evaluation answers a different question.
        return optuna.pruners.MedianPruner(n_startup_trials=max(2, min(5, plan.trials // 4)),
                                           n_warmup_steps=train.get("steps", 0) // 3)
    if plan.pruner_name == "hyperband":
        searched = {p.key for p in plan.params}
        max_resource = "auto" if "train.steps" in searched or not train else train["steps"]
        return optuna.pruners.HyperbandPruner(min_resource=max(1, train.get("eval_every", 1)),
                                              max_resource=max_resource, reduction_factor=3)
    return optuna.pruners.NopPruner()


def open_study(plan: Plan):
    """Create or load the study; refuse a study that disagrees with the spec (direction, space)."""
    storage = open_storage(plan.storage_url)
    with quiet_optuna() as optuna:
        try:
            study = optuna.create_study(study_name=plan.study_name, storage=storage, sampler=make_sampler(plan),
                                        pruner=make_pruner(plan), direction=plan.direction, load_if_exists=True)
        except Exception as err:
            raise StorageError(storage_failure(plan.storage_url, err)) from None
        wanted = optuna.study.StudyDirection.MAXIMIZE if plan.direction == "maximize" else \
            optuna.study.StudyDirection.MINIMIZE
        if study.direction != wanted:
            raise StorageError(f"the study '{plan.study_name}' in {mask(plan.storage_record)} was created to "
                               f"{study.direction.name.lower()}, but the spec asks to {plan.direction}: use "
                               "another experiment name, or delete the study (optuna delete-study "
                               f"--study-name {plan.study_name} --storage URL)")
        dists = {p.key: p.distribution() for p in plan.params}
        for t in study.get_trials(deepcopy=False):
            for name, dist in t.distributions.items():
                if name in dists and dist != dists[name]:
                    raise StorageError(
                        f"the study '{plan.study_name}' in {mask(plan.storage_record)} already has trials "
                        f"where {name} is {dist}, and the spec now makes it {dists[name]}: a study keeps "
                        "one space; use another experiment name, or delete the study (optuna delete-study "
                        f"--study-name {plan.study_name} --storage URL)")
        for key in ("mode", "space"):
            if key not in study.user_attrs:
                with contextlib.suppress(Exception):
                    study.set_user_attr(key, plan.search_record()[key])
    return study


class Heartbeat:
    """Records the trial's heartbeat in the storage every `interval` seconds, in a thread."""

    def __init__(self, storage, trial_id: int, interval: int):
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.beat, daemon=True, name=f"heartbeat-{trial_id}")

    def beat(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat is better than a dead thread
                self.storage.record_heartbeat(self.trial_id)
            if self.stop_event.wait(self.interval):
                return

    def __enter__(self) -> Heartbeat:
        with contextlib.suppress(Exception):
            self.storage.record_heartbeat(self.trial_id)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(timeout=self.interval + 5)


# ================================================================================================
# Records: experiment.json, runs.csv, trials.log
# ================================================================================================
STATE_RANK = {"COMPLETE": 0, "PRUNED": 0, "RUNNING": 1, "WAITING": 2, "FAIL": 3}


@contextlib.contextmanager
def experiment_lock(exp_dir: Path):
    exp_dir.mkdir(parents=True, exist_ok=True)
    with open(exp_dir / ".experiment.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_entries(plan: Plan, trials) -> list[dict[str, Any]]:
    """experiment.json's runs, derived from the study: one entry per run id, owned by the trial
    that finished it (else the running one, else the first), with that trial's number and state."""
    from experiments.run import axis_values

    owner: dict[str, Any] = {}
    for t in trials:
        for rid in t.user_attrs.get("run_ids") or []:
            best = owner.get(rid)
            rank = (STATE_RANK.get(t.state.name, 4), t.number)
            if best is None or rank < (STATE_RANK.get(best.state.name, 4), best.number):
                owner[rid] = t
    if plan.mode == "grid":
        entries = []
        for run in plan.spec.runs:
            entry = {"run_id": run.run_id, "variant": run.variant, "axes": axis_values(run), "seed": run.seed}
            if run.run_id in owner:
                entry |= {"trial": owner[run.run_id].number, "state": owner[run.run_id].state.name}
            entries.append(entry)
        return entries
    entries, seen = [], set()
    for t in sorted(trials, key=lambda t: t.number):
        attrs = t.user_attrs
        for rid, seed in zip(attrs.get("run_ids") or [], attrs.get("seeds") or []):
            if rid in seen or owner.get(rid) is not t:
                continue
            seen.add(rid)
            entries.append({"run_id": rid, "variant": attrs.get("variant", f"trial-{t.number}"),
                            "axes": attrs.get("axes", {}), "seed": seed, "trial": t.number, "state": t.state.name})
    return entries


def sync_records(plan: Plan, study) -> None:
    """Rewrite experiment.json from the study and rebuild runs.csv, under the experiment's lock."""
    from experiments import files
    from experiments.run import plan_record, rebuild_runs_csv

    with experiment_lock(plan.exp_dir):
        trials = study.get_trials(deepcopy=False)
        record = plan_record(plan.spec, [], plan.search_record())
        if plan.mode == "search":
            record |= {"axes": [p.key for p in plan.params], "variants": [], "baseline": None}
        record["runs"] = run_entries(plan, trials)
        files.write_json(plan.exp_dir / "experiment.json", record)
        rebuild_runs_csv(plan.exp_dir)


def log_event(exp_dir: Path, **fields: Any) -> None:
    """One JSON line appended to trials.log (O_APPEND: lines of concurrent workers never interleave)."""
    line = json.dumps({"time": datetime.now().isoformat(timespec="seconds"), "host": socket.gethostname(),
                       "pid": os.getpid(), **fields}, default=str) + "\n"
    fd = os.open(exp_dir / "trials.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


# ================================================================================================
# The worker loop
# ================================================================================================
class Worker:
    def __init__(self, plan: Plan, study, datasets: dict):
        from experiments.run import Runner

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
            if len(finished) >= plan.trials:
                return "done", None
            if len(failed_now) >= plan.trials:
                return "failing", None
            if len(finished) + len(busy) >= plan.trials and not by_state.get("WAITING"):
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
        if plan.points is None:
            return len(finished) + len(earlier) >= plan.trials
        mine = plan.point_key(params)
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
            return "FAIL", None, ""
        self.attr(trial, "host", socket.gethostname())
        self.attr(trial, "pid", os.getpid())
        retry_of = self.study._storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        if plan.mode == "grid":
            variant = plan.labels[plan.point_key(encoded)]
            runs = [r for r in plan.spec.runs if r.variant == variant]
            axes = {k: label(v) for k, v in runs[0].axes.items()} if runs else {}
        else:
            values = {p.key: p.decode(encoded[p.key]) for p in plan.params}
            variant = params_label(values)
            axes = {k: label(v) for k, v in values.items()}
            try:
                runs = plan.spec.runs_for(values, variant=variant, axes=values)
                self.bind(runs)
            except SpecError as err:
                self.attr(trial, "invalid", str(err))
                self.attr(trial, "variant", variant)
                return "PRUNED", None, f"{variant}: invalid combination, pruned ({err})"
        self.attr(trial, "variant", variant)
        self.attr(trial, "axes", axes)
        self.attr(trial, "run_ids", [r.run_id for r in runs])
        self.attr(trial, "seeds", [r.seed for r in runs])
        sync_records(plan, self.study)
        started = time.perf_counter()
        results = {}
        for i, run in enumerate(runs):
            on_eval = self.pruning_callback(trial, run) if i == 0 and plan.pruner_name != "none" else None
            outcome, summary = self.execute(trial, run, on_eval)
            status = (summary or {}).get("status", outcome)
            if status != "done" and i + 1 < len(runs):  # the later seeds will not run: not in the records
                self.attr(trial, "run_ids", [r.run_id for r in runs[:i + 1]])
                self.attr(trial, "seeds", [r.seed for r in runs[:i + 1]])
            if status == "pruned":
                self.attr(trial, "pruned", (summary or {}).get("error") or "pruned")
                return "PRUNED", None, f"{variant}: pruned ({(summary or {}).get('error')})"
            if status == "diverged":
                self.attr(trial, "diverged", (summary or {}).get("error") or "diverged")
                return "PRUNED", None, f"{variant}: run {run.run_id} diverged, pruned"
            if status != "done":
                reason = (summary or {}).get("error") or status
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

    def bind(self, runs) -> None:
        """bind_data for the runs of one trial, reusing the datasets already loaded."""
        from experiments.run import bind_data, data_key

        new = [r for r in runs if data_key(r) not in self.datasets]
        if new:
            self.datasets.update(bind_data(new))
        fresh = {id(r) for r in new}
        for run in runs:
            if id(run) in fresh:
                continue
            ds = self.datasets[data_key(run)]
            ds.check_context(run.model["context_length"])
            if run.sample["prompt"] is not None:
                ds.tokenizer.encode(run.sample["prompt"])
            run.bind_corpus(ds.corpus_sha256)

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
                  outcome=outcome, trained=trained, resumed_at_step=(summary or {}).get("resumed_at_step"))
        return outcome, summary

    def pruning_callback(self, trial, run):
        import optuna

        from experiments.train import Stopped

        column, last = self.plan.reported, run.train["steps"]
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


def params_label(values: dict[str, Any]) -> str:
    short = {k: k.split(".", 1)[1] for k in values}
    if len(set(short.values())) < len(short):
        short = {k: k for k in values}
    return ", ".join(f"{short[k]}={label(v)}" for k, v in values.items())


# ================================================================================================
# The command
# ================================================================================================
def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(spec, spec_path: Path, args) -> int:
    """`python -m experiments.run SPEC` for a spec with a search block, or with --storage / --workers."""
    from experiments.run import bind_data, dry_run_table

    exp_dir = Path(args.results) / spec.experiment
    if getattr(args, "force", False):
        return fail("--force does not apply to a search: a study keeps its trials and their runs. To start "
                    f"over, delete {exp_dir} (and the study in its storage) or use another experiment name")
    if getattr(args, "only", None):
        return fail("--only does not apply to a search or a grid run as a study: every worker takes the "
                    "next trial the study hands out")
    workers = getattr(args, "workers", 1) or 1
    if workers < 1:
        return fail(f"--workers = {workers} must be at least 1")
    try:
        plan = Plan(spec, args, exp_dir)
        heartbeat_settings()
        if not plan.default_storage:
            problems = storage_problems(plan.storage_url, "--storage")
            if problems:
                raise SpecError(problems)
        datasets = bind_data(spec.runs)
    except SpecError as err:
        return fail(str(err))
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
        from experiments import files

        files.write_text(exp_dir / "spec.yaml", Path(spec_path).read_text(encoding="utf-8"))
    sync_records(plan, study)
    if plan.role is not None:  # a worker process started by --workers: the loop only
        try:
            return Worker(plan, study, datasets).loop()
        except KeyboardInterrupt:
            return 130
    started = time.perf_counter()
    print(plan.describe(), flush=True)
    if workers > 1:
        code = spawn_workers(plan, spec_path, workers)
    else:
        try:
            code = Worker(plan, study, datasets).loop()
        except KeyboardInterrupt:
            print("interrupted: rerun the same command to resume the study", file=sys.stderr)
            return 130
    return finish(plan, study, code, time.perf_counter() - started)


def spawn_workers(plan: Plan, spec_path: Path, workers: int) -> int:
    """N worker processes on the study; each is `python -m experiments.run` with the same spec."""
    args = plan.args
    cmd = [sys.executable, "-m", "experiments.run", str(spec_path), "--results", str(args.results),
           "--storage", plan.storage_url, "--no-report"]
    if args.device:
        cmd += ["--device", args.device]
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    since = str(time.time())
    procs = []
    for index in range(workers):
        env = {**os.environ, WORKER_ENV: str(index), SINCE_ENV: since}
        env.setdefault("OMP_NUM_THREADS", threads)
        procs.append(subprocess.Popen(cmd, env=env))
    print(f"started {workers} workers: pids {', '.join(str(p.pid) for p in procs)}", flush=True)
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        # Ctrl-C in a terminal reaches the workers too; give them time to queue their trials again.
        deadline = time.monotonic() + 20
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


def finish(plan: Plan, study, code: int, seconds: float) -> int:
    from experiments.run import report_is_stale, text_table, write_report

    sync_records(plan, study)
    trials = study.get_trials(deepcopy=False)
    rows = []
    for t in trials:
        if "surplus" in t.user_attrs:
            continue
        note = next((f"{k}: {t.user_attrs[k]}" for k in ("invalid", "error", "pruned", "diverged", "interrupted")
                     if k in t.user_attrs), "")
        if t.state.name == "FAIL" and not note:
            note = "its worker died (stale heartbeat); retried once"
        rows.append({"trial": t.number, "state": t.state.name, **{k: label(v) for k, v in t.params.items()},
                     plan.summary_key: t.value if t.state.name == "COMPLETE" else None, "note": note[:80]})
    print(text_table(rows))
    finished = sum(t.state.name in FINISHED_STATES for t in trials)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    print(f"{finished} finished trials ({len(complete)} complete) of {plan.trials} wanted in "
          f"{seconds:.1f} s -> {plan.exp_dir / 'runs.csv'}; study '{plan.study_name}' in {mask(plan.storage_record)}")
    if complete:
        best = study.best_trial
        print(f"best: trial {best.number}, {plan.summary_key} {best.value:.4f}: "
              + ", ".join(f"{k}={label(v)}" for k, v in best.params.items()))
    if not plan.args.no_report and report_is_stale(plan.exp_dir):
        with warnings.catch_warnings():  # Optuna's plotting warns about flat importances and axes
            warnings.simplefilter("ignore", UserWarning)
            report = write_report(plan.exp_dir)
        if report:
            print(f"report: {report}")
    if plan.points is not None:
        finished = len({plan.point_key(t.params) for t in trials if t.state.name in FINISHED_STATES})
    if finished >= plan.trials:
        return 0  # the study is complete, even when a worker died on the way (its trial was retried)
    code = code or 1
    print(f"error: the study has {finished} of the {plan.trials} finished trials wanted; rerun the same "
          "command to continue it", file=sys.stderr)
    return code
