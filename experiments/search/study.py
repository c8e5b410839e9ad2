"""The Optuna side of a search: the storage (with heartbeats and one retry of stale trials), the
sampler, the pruner, the study, and Optuna's logging kept quiet. Also the SQLite URL helpers the
analysis uses to find a study again (analysis/plots.py).

Optuna is imported inside the functions: importing this module costs nothing.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator

from registry import SpecError, brief

HEARTBEAT_ENV = "LAB_SEARCH_HEARTBEAT_S"
STORAGE_ENV = "LAB_STORAGE_URL"  # the storage URL, password included, kept off command lines and out of results/
FINISHED_STATES = ("COMPLETE", "PRUNED")
SQLITE = "sqlite:///"


# -- storage URLs --------------------------------------------------------------------------------
def sqlite_file(url: str) -> Path | None:
    """The database file a sqlite:/// URL names; None for other databases and in-memory SQLite."""
    if not url.startswith(SQLITE) or url[len(SQLITE):] in ("", ":memory:"):
        return None
    return Path(url[len(SQLITE):])


def sqlite_url(path: Path) -> str:
    """sqlite:////absolute/path of a database file, so every worker and reader opens the same one."""
    return SQLITE + path.resolve().as_posix()


def absolute_sqlite(url: str) -> str:
    """sqlite:///relative/path -> sqlite:////absolute/path (relative to here); other URLs unchanged."""
    db = sqlite_file(url)
    return url if db is None or db.is_absolute() else sqlite_url(db)


def mask(url: str) -> str:
    """The URL with its password hidden, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def has_password(url: Any) -> bool:
    try:
        from sqlalchemy.engine import make_url

        return isinstance(url, str) and make_url(url).password is not None
    except Exception:
        return False


def without_password(url: str) -> str:
    """The URL with no password at all: what results/ records. The database driver then takes the
    password from its own sources (PostgreSQL: PGPASSWORD or ~/.pgpass), or from LAB_STORAGE_URL."""
    if not has_password(url):
        return url
    from sqlalchemy.engine import URL, make_url

    u = make_url(url)
    return URL.create(u.drivername, u.username, None, u.host, u.port, u.database, u.query).render_as_string(
        hide_password=False)


def with_credentials(recorded: str) -> str:
    """A recorded (password-free) URL, or $LAB_STORAGE_URL when it names the same database with its password."""
    given = os.environ.get(STORAGE_ENV)
    return given if given and without_password(given) == recorded else recorded


def heartbeat_settings() -> tuple[int, int]:
    """(seconds between heartbeats, seconds after which a RUNNING trial without one is stale)."""
    raw = os.environ.get(HEARTBEAT_ENV, "10")
    try:
        parts = [int(float(x)) for x in raw.split(",")]
        interval = max(1, parts[0])
        grace = parts[1] if len(parts) > 1 else 3 * interval
        return interval, max(grace, interval + 1)
    except (ValueError, IndexError):
        raise SpecError(f"{HEARTBEAT_ENV} = {raw!r} must be seconds between heartbeats, optionally "
                        "followed by the grace period: e.g. 10 or 10,30") from None


def storage_problems(url: Any, where: str) -> list[str]:
    """Whether a storage URL can be read as one (the database itself is only tried when opened)."""
    if not isinstance(url, str) or not url:
        return [f"{where} = {brief(url)} must be a database URL such as sqlite:///study.db or "
                "postgresql+psycopg2://user:password@host:5432/db (or null for the default)"]
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return [f"{where} = {brief(url)} is not a database URL: write it as dialect+driver://user:password@host:port/db, "
                "e.g. sqlite:///study.db or postgresql+psycopg2://lab@localhost:5432/lab"]
    if parsed.get_backend_name() == "sqlite" and (parsed.database in (None, "", ":memory:", "file::memory:")
                                                  or parsed.query.get("mode") == "memory"):
        return [f"{where} = {brief(url)} is an in-memory SQLite database: the study would vanish when this process "
                "ends (and --workers could not share it); name a file, e.g. sqlite:///study.db, or leave it out "
                "for results/<experiment>/study.db"]
    return []


class StorageError(Exception):
    pass


@contextlib.contextmanager
def quiet_optuna() -> Iterator[Any]:
    """optuna, with its log and warnings silenced inside the block: what matters is printed in our words."""
    import optuna

    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
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


def make_sampler(plan):
    import optuna

    if plan.sampler_name == "grid":
        # Every worker must shuffle the grid alike (its first trials take grid point = trial number):
        # the spec's seed, never a per-worker one.
        return KeepGoingGridSampler(plan.grid_space(), plan.spec.seeds[0])
    if plan.sampler_name == "random":
        return optuna.samplers.RandomSampler(seed=plan.seed)
    # 10 random trials before TPE models anything is Optuna's default; a short search starts earlier.
    return optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=max(2, min(10, plan.trials // 3)))


MEDIAN_STARTUP = 5  # completed trials before the median pruner stops any (Optuna's default)


def make_pruner(plan):
    import optuna

    train = plan.spec.runs[0].train if plan.spec.runs else None
    if plan.pruner_name == "median":
        # No pruning in the first third of a run: deeper or wider models often start slower, and a
        # search that stops them at the first evaluation answers a different question. Nor before
        # MEDIAN_STARTUP trials have completed: the median of two is their mean, which stopped 9 of 11
        # trials of a small search, a twin of its best among them.
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP,
                                           n_warmup_steps=train.steps // 3 if train else 0)
    if plan.pruner_name == "hyperband":
        searched = {p.key for p in plan.params}
        max_resource = "auto" if "train.steps" in searched or train is None else train.steps
        return optuna.pruners.HyperbandPruner(min_resource=max(1, train.eval_every if train else 1),
                                              max_resource=max_resource, reduction_factor=3)
    return optuna.pruners.NopPruner()


def distribution(param):
    """The Optuna distribution of a search.space Param (a study keeps one per key)."""
    import optuna

    if param.kind == "categorical":
        return optuna.distributions.CategoricalDistribution(param.encoded)
    if param.kind == "int":
        return optuna.distributions.IntDistribution(param.low, param.high, log=param.log, step=param.step or 1)
    return optuna.distributions.FloatDistribution(float(param.low), float(param.high), log=param.log,
                                                  step=None if param.step is None else float(param.step))


def open_study(plan):
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
        record, base = plan.search_record(), base_runs(plan.spec)
        check_base(study, plan, base)
        dists = {p.key: distribution(p) for p in plan.params}
        trials = study.get_trials(deepcopy=False)
        if trials:  # a resumed study: a sampler seeded as before would replay the draws already made
            plan.seed = plan.sampler_seed(len(trials))
            study.sampler = make_sampler(plan)
        for t in trials:
            for name, dist in t.distributions.items():
                if name in dists and dist != dists[name]:
                    raise StorageError(
                        f"the study '{plan.study_name}' in {mask(plan.storage_record)} already has trials "
                        f"where {name} is {dist}, and the spec now makes it {dists[name]}: a study keeps "
                        "one space; use another experiment name, or delete the study (optuna delete-study "
                        f"--study-name {plan.study_name} --storage URL)")
        for key, value in (("mode", record["mode"]), ("space", record["space"]), ("base_runs", base)):
            if key not in study.user_attrs:
                with contextlib.suppress(Exception):
                    study.set_user_attr(key, value)
    return study


def base_runs(spec) -> list[dict[str, Any]]:
    """What the spec's runs compute before a trial's values apply (their identities, as JSON keeps them):
    the same for every edit that changes no run (the search block, the device), different otherwise."""
    return json.loads(json.dumps([r.identity() for r in spec.runs_for({}, "base")], sort_keys=True, default=str))


def check_base(study, plan, now: list[dict[str, Any]]) -> None:
    """StorageError when the study's trials were run from another version of the spec than the one whose
    base_runs are `now` (an edited train.lr, say): resuming would count them as this spec's and train
    nothing. Studies older than the record pass."""
    recorded = study.user_attrs.get("base_runs")
    if recorded is None or recorded == now:
        return
    changed = sorted(set(flat(recorded[0]).items()) ^ set(flat(now[0]).items())) if recorded and now else []
    keys = list(dict.fromkeys(k for k, _ in changed)) or ["seeds"]
    raise StorageError(f"the study '{plan.study_name}' in {mask(plan.storage_record)} holds trials of another "
                       f"version of the spec (it differs in {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}): "
                       "its trials' runs are not this spec's, and resuming would train nothing; use another "
                       f"experiment name, or delete the study (optuna delete-study --study-name {plan.study_name} "
                       "--storage URL) and its folder")


def flat(tree: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts as dotted keys -> the JSON of each leaf."""
    if not isinstance(tree, dict):
        return {prefix: json.dumps(tree, sort_keys=True)}
    return {k: v for key, sub in tree.items() for k, v in flat(sub, f"{prefix}.{key}" if prefix else key).items()}


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


# -- reading a study from another terminal --------------------------------------------------------
def recorded_storage(search: dict[str, Any], exp_dir: Path) -> str:
    """The storage URL experiment.json records, made readable from here. The default study.db is the one
    in the experiment folder wherever that folder is now (the record holds the path the runner used,
    absolute or relative to where it started: a moved or copied experiment would read the original's);
    another relative SQLite path is tried as given, then from the experiment folder and the folder that
    `results/` sits in."""
    url = str(search.get("storage") or "")
    db = sqlite_file(url)
    if db is None:
        return url
    if search.get("default_storage", db.name == "study.db" and db.parent.name == exp_dir.name):  # older records
        return sqlite_url(exp_dir / "study.db")
    if db.is_absolute():
        return url
    return sqlite_url(next((c for c in (db, exp_dir / db, exp_dir.parent.parent / db) if c.is_file()), db))


def read_trials(url: str, study_name: str) -> list:
    """The study's trials (FrozenTrials), read without creating or changing anything: no table
    creation, no schema check, SQLite opened read-only. StorageError in plain words."""
    import inspect

    db = sqlite_file(url)
    engine: dict[str, Any] = {}
    if db is not None:
        if not db.is_file():
            raise StorageError(f"the study file {db} does not exist (yet)")
        url, engine["connect_args"] = f"sqlite:///file:{db.resolve().as_posix()}?mode=ro&uri=true", {"timeout": 10}
    elif url.split(":", 1)[0].split("+", 1)[0].startswith(("postgres", "mysql")):
        engine["connect_args"] = {"connect_timeout": 10}
    with quiet_optuna() as optuna:
        params = inspect.signature(optuna.storages.RDBStorage.__init__).parameters
        extra = {"skip_table_creation": True} if "skip_table_creation" in params else {}
        try:
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine, skip_compatibility_check=True, **extra)
            return storage.get_all_trials(storage.get_study_id_from_name(study_name), deepcopy=False)
        except Exception as err:  # any driver, any failure: one line
            raise StorageError(storage_failure(url, err).split(" — ")[0]) from None
