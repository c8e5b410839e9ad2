"""The Optuna search: the search block's checks, trials as runs, pruning, invalid points, resume,
grids as studies, bad storage, and two worker processes on one study (SQLite and PostgreSQL), one
of them killed with SIGKILL mid-run."""
from __future__ import annotations

import collections
import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from experiments.search import space
from experiments.search import study as optuna_side
from experiments.run import main
from experiments.spec import parse_spec
from registry import SpecError

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ENV = "LAB_TEST_POSTGRES_URL"
TINY = {"experiment": "srch", "seeds": [0],
        "data": {"corpus": "embedded", "tokenizer": "char"},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context_length": 16},
        "train": {"steps": 20, "batch_size": 8, "warmup": 2, "eval_every": 5, "eval_batches": 2,
                  "device": "cpu"},  # pinned to the CPU: its tolerances are float32 ones
        "sample": {"tokens": 0}}


def make(search_block: dict | None = None, **extra) -> dict:
    raw = copy.deepcopy(TINY) | extra
    if search_block is not None:
        raw["search"] = search_block
    return raw


def write(tmp_path: Path, raw: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def problems(block) -> str:
    with pytest.raises(SpecError) as err:
        parse_spec(make(block))
    return str(err.value)


def load(url: str, name: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.load_study(study_name=name, storage=url)


def log_events(exp: Path) -> list[dict]:
    return [json.loads(line) for line in (exp / "trials.log").read_text().splitlines()]


@pytest.fixture
def one_thread(lab_cache):
    """Tiny models train several times faster on one thread than on two busy cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield lab_cache
    torch.set_num_threads(before)


# -- the search block ----------------------------------------------------------------------------
@pytest.mark.parametrize("block, expected", [
    ({"trails": 3, "space": {"model.n_heads": [1, 2]}},
     "unknown key search.trails — did you mean 'trials'? valid keys: trials, metric"),
    ({"space": {"model.n_heads": []}}, "search.space.model.n_heads = [] must be a non-empty list"),
    ({"space": {"model.n_layers": {"int": [6, 1]}}}, "search.space.model.n_layers.int = [6, 1]: low 6 > high 1"),
    ({"space": {"train.lr": {"float": [3.0e-3, 1.0e-4], "log": True}}}, "low 0.003 > high 0.0001"),
    ({"space": {"model.attention": ["multi_head", "mult_head"]}},
     "unknown attention 'mult_head' at search.space.model.attention — did you mean 'multi_head'?"),
    ({"space": {"model.norm": ["rmsnorm", "batchnorm"]}}, "unknown norm 'batchnorm' at search.space.model.norm"),
    ({"space": {"model.n_head": [1, 2]}}, "search.space key 'model.n_head' does not exist — did you mean 'n_heads'?"),
    ({"space": {"modle.n_heads": [1, 2]}}, "must start with one of data, model, train, sample — did you mean 'model'?"),
    ({"space": {"model.positional.bse": [100, 1000]}}, "unknown option 'bse' for positional"),
    ({"sampler": "tpee", "space": {"model.n_heads": [1, 2]}},
     "search.sampler = 'tpee' is not a sampler — did you mean 'tpe'? valid: tpe, random, grid"),
    ({"pruner": "medain", "space": {"model.n_heads": [1, 2]}}, "did you mean 'median'? valid: median, hyperband, none"),
    ({"metric": "val_bpp", "space": {"model.n_heads": [1, 2]}}, "search.metric = 'val_bpp' is not a summary metric — did you mean 'val_bpb'?"),
    ({"metric": "wall_s", "pruner": "median", "space": {"model.n_heads": [1, 2]}}, "needs a metric measured at every evaluation"),
    ({"direction": "down", "space": {"model.n_heads": [1, 2]}}, "search.direction = 'down' must be one of minimize, maximize"),
    ({"trials": 0, "space": {"model.n_heads": [1, 2]}}, "search.trials = 0 must be a positive integer"),
    ({"trials": 3}, "search.space is missing"),
    ({"space": {"model.n_heads": 4}}, "search.space.model.n_heads = 4 must be a list of values (categorical) or a range"),
    ({"space": {"model.n_heads": [0, 2]}}, "search.space.model.n_heads: model.n_heads = 0 must be a positive integer"),
    ({"space": {"train.lr": [1, 1.0]}}, "search.space.train.lr = [1, 1.0] lists a value twice"),  # one number
    ({"space": {"model.n_layers": {"int": [1, 2], "step": 5}}}, "with step 5: the step is larger than high - low = 1"),
    ({"space": {"model.n_layers": {"int": [1, 10], "step": 2}}}, "is not a multiple of the step; give high 9 or 11"),
    ({"space": {"train.lr": {"float": [0.0, 0.001], "step": 1.0e-320}}}, "the step is too small for the range"),
    ({"space": {"train.lr": {"float": [0.1, 1.0], "step": 0.2}}}, "high - low = 0.9 is not a multiple of the step; "
                                                                  "give high 0.9 or 1.1"),
    ({"space": {"train.lr": {"float": [1e-3, 1e-3], "log": True}}},
     "search.space.train.lr.float = [0.001, 0.001] holds one value (low = high), so every trial would train the same"),
    ({"space": {"model.n_layers": {"float": [1, 4]}}}, "search.space.model.n_layers: model.n_layers = 1.0 must be a positive integer"),
    ({"space": {"model.n_layers": {"int": [1, 4], "lg": True}}}, "unknown key 'lg' in search.space.model.n_layers — did you mean 'log'?"),
    ({"space": {"model.n_layers": {"int": [1, 4], "float": [1, 2]}}}, "must name exactly one of int or float"),
    ({"space": {"train.lr": {"float": [0.0, 1.0e-3], "log": True}}}, "log: true needs low > 0"),
    ({"space": {"model.preset": ["tiny", "tiyn"]}}, "search.space.model.preset = 'tiyn' is not a preset — did you mean 'tiny'?"),
    ({"sampler": "grid", "space": {"train.lr": {"float": [1.0e-4, 1.0e-3]}}}, "search.space.train.lr is a continuous range"),
    ({"storage": "not a url", "space": {"model.n_heads": [1, 2]}}, "search.storage = 'not a url' is not a database URL"),
    ({"storage": "sqlite:///:memory:", "space": {"model.n_heads": [1, 2]}},
     "search.storage = 'sqlite:///:memory:' is an in-memory SQLite database: the study would vanish"),
    ([1, 2], "search must be a mapping"),
])
def test_search_block_problems_name_the_field_and_the_choices(block, expected):
    assert expected in problems(block)


def test_every_problem_of_a_search_block_is_reported_at_once():
    message = problems({"trails": 3, "sampler": "tpee",
                        "space": {"model.n_heads": [], "model.n_layers": {"int": [4, 1]}}})
    assert message.startswith("4 problems:")


def test_a_valid_block_parses_into_params_with_defaults():
    spec = parse_spec(make({"space": {"model.n_heads": [1, 2, 4], "model.n_layers": {"int": [1, 4]},
                                      "train.lr": {"float": [1e-4, 3e-3], "log": True},
                                      "model.positional": ["learned", {"name": "rope", "base": 500.0}]}}))
    block, found = space.parse_block(spec.search, spec.base)
    assert found == [] and block["trials"] == space.DEFAULT_TRIALS
    assert (block["summary_key"], block["reported"], block["pruner"], block["sampler"]) == \
        ("final_val_bpb", "val_bpb", "median", "tpe")
    kinds = {p.key: p.kind for p in block["params"]}
    assert kinds == {"model.n_heads": "categorical", "model.n_layers": "int", "train.lr": "float",
                     "model.positional": "categorical"}
    positional = block["params"][3]
    assert positional.encoded == ["learned", "rope(base=500.0)"]       # Optuna stores scalars only
    assert positional.decode("rope(base=500.0)") == {"name": "rope", "base": 500.0}
    grid = space.parse_block({"sampler": "grid", "space": {"model.n_heads": [1, 2], "model.n_layers": {"int": [1, 3]}}},
                              spec.base)[0]
    assert grid["trials"] == 6                                          # a grid's size caps trials
    assert space.parse_block({"metric": "tokens_per_s", "space": {"model.n_heads": [1]}}, spec.base)[0]["pruner"] == "none"


def test_a_bad_space_through_the_cli_is_one_paragraph_and_writes_nothing(tmp_path, capsys):
    spec = write(tmp_path, make({"space": {"model.n_heads": [], "model.n_layers": {"int": [3, 1]}}}))
    assert main([str(spec), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 2 problems") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("url", ["postgresql+psycopg2://nobody@127.0.0.1:1/nowhere", "sqlite:////no/such/dir/x.db",
                                 "no-url-at-all"])
def test_unreachable_storage_exits_2_without_traceback_or_results(tmp_path, capsys, url, lab_cache):
    spec = write(tmp_path, make({"trials": 2, "space": {"model.n_heads": [1, 2]}}))
    assert main([str(spec), "--results", str(tmp_path / "results"), "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert ("cannot open the Optuna storage" in err) or ("is not a database URL" in err)
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("url", ["sqlite:///", "sqlite://", "sqlite:///:memory:", "sqlite:///file:s?mode=memory&uri=true"])
def test_an_in_memory_study_is_refused(tmp_path, capsys, url):
    spec = write(tmp_path, make({"trials": 2, "space": {"model.n_heads": [1, 2]}}))
    assert main([str(spec), "--results", str(tmp_path / "results"), "--storage", url, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --storage = 'sqlite:") and err.count("\n") == 1
    assert "is an in-memory SQLite database: the study would vanish when this process ends" in err
    assert not (tmp_path / "results").exists()


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys, lab_cache):
    spec = write(tmp_path, make({"trials": 5, "space": {"model.n_heads": [1, 2], "train.lr": {"float": [1e-4, 1e-2], "log": True}}}))
    assert main([str(spec), "--results", str(tmp_path / "results"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "5 finished trials wanted" in out and "train.lr: a number in [0.0001, 0.01], log scale" in out
    assert not (tmp_path / "results").exists()
    assert main([str(spec), "--results", str(tmp_path / "results"), "--force"]) == 2
    assert "--force does not apply to a search" in capsys.readouterr().err
    both = write(tmp_path, make({"space": {"model.n_heads": [1, 2]}}, grid={"model.n_layers": [1, 2]}), "both.yaml")
    assert main([str(both), "--results", str(tmp_path / "results")]) == 2
    assert "cannot also have grid or variants" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_the_heads_layers_spec_is_valid():
    spec = parse_spec(yaml.safe_load((ROOT / "specs" / "search_heads_layers.yaml").read_text()))
    block = space.parse_block(spec.search, spec.base)[0]
    assert block["trials"] == 12
    assert {p.key: p.describe() for p in block["params"]} == {
        "model.n_heads": "one of 1, 2, 4, 8", "model.n_layers": "an integer in [1, 4]"}


# -- searches in this process --------------------------------------------------------------------
def test_search_finishes_resumes_and_records_trials(tmp_path, one_thread, capsys):
    raw = make({"trials": 3, "sampler": "random", "pruner": "none",
                "space": {"model.n_heads": [1, 2], "model.n_layers": {"int": [1, 2]}}}, seeds=[0, 1])
    spec = write(tmp_path, raw)
    results = tmp_path / "results"
    assert main([str(spec), "--results", str(results)]) == 0
    exp = results / "srch"
    plan = json.loads((exp / "experiment.json").read_text())
    assert plan["search"]["storage"] == f"sqlite:///{(results / 'srch' / 'study.db').as_posix()}"
    assert plan["search"].items() >= {"study_name": "srch", "metric": "final_val_bpb", "direction": "minimize"}.items()
    assert plan["axes"] == ["model.n_heads", "model.n_layers"]
    study = load(f"sqlite:///{exp / 'study.db'}", "srch")
    firsts = [t for t in study.trials if "repeat_of" not in t.user_attrs]   # a repeat does not count
    assert [t.state.name for t in firsts] == ["COMPLETE"] * 3
    assert len({tuple(t.params.items()) for t in firsts}) == 3
    for t in firsts:                             # a trial's value is the mean over the spec's seeds
        values = [json.loads((exp / "runs" / rid / "summary.json").read_text())["final_val_bpb"]
                  for rid in t.user_attrs["run_ids"]]
        assert len(values) == 2 and t.value == pytest.approx(sum(values) / 2)
    header, *rows = (exp / "runs.csv").read_text().splitlines()
    assert header.startswith("run_id,variant,model.n_heads,model.n_layers,seed,trial,state,status")
    distinct = {rid for t in study.trials for rid in t.user_attrs.get("run_ids", [])}
    assert len(rows) == len(distinct)                         # one row per run, however many trials share it
    report = (exp / "report.md").read_text()
    assert "## Search" in report and "Best trial" in report and "Its resolved spec" in report
    assert (exp / "plots" / "search_history.png").is_file() and (exp / "plots" / "search_parallel.png").is_file()
    moved = tmp_path / "elsewhere" / "srch"      # a copy reads its own study.db, not the original's
    shutil.copytree(exp, moved)
    results.rename(tmp_path / "away")
    try:
        from analysis.plots import load_study
        from analysis.tables import load_experiment
        assert plan["search"]["default_storage"] is True
        assert optuna_side.recorded_storage(plan["search"], moved) == optuna_side.sqlite_url(moved / "study.db")
        assert len(load_study(load_experiment(moved)).trials) == len(study.trials)
        older = {k: v for k, v in plan["search"].items() if k != "default_storage"}  # recorded before the flag
        assert optuna_side.recorded_storage(older, moved) == optuna_side.sqlite_url(moved / "study.db")
    finally:
        (tmp_path / "away").rename(results)

    trained = sum(e["event"] == "end" and e["trained"] for e in log_events(exp))
    before = len(study.trials)
    assert main([str(spec), "--results", str(results), "--no-report"]) == 0   # done already: nothing runs
    assert sum(e["event"] == "end" and e["trained"] for e in log_events(exp)) == trained
    assert len(load(f"sqlite:///{exp / 'study.db'}", "srch").trials) == before

    raw["search"]["trials"] = 5                          # resume up to 5: capped at the space's 4 points
    write(tmp_path, raw)
    assert main([str(spec), "--results", str(results), "--no-report"]) == 0
    study = load(f"sqlite:///{exp / 'study.db'}", "srch")
    firsts = [t for t in study.trials if "repeat_of" not in t.user_attrs]
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in firsts) == 4
    ends = collections.Counter(e["run_id"] for e in log_events(exp) if e["event"] == "end" and e["trained"])
    assert max(ends.values()) == 1                                            # no run id trained twice
    assert "best: trial" in capsys.readouterr().out


def test_invalid_combinations_are_pruned_and_a_changed_study_is_refused(tmp_path, one_thread, capsys):
    raw = make({"sampler": "grid", "space": {"model.n_heads": [2, 3]}})  # d_model 32 % 3 != 0
    results = tmp_path / "results"
    assert main([str(write(tmp_path, raw)), "--results", str(results), "--no-report"]) == 0
    study = load(f"sqlite:///{results / 'srch' / 'study.db'}", "srch")
    by_heads = {t.params["model.n_heads"]: t for t in study.trials}
    assert by_heads[2].state.name == "COMPLETE"
    assert by_heads[3].state.name == "PRUNED"
    assert "must be divisible by model.n_heads = 3" in by_heads[3].user_attrs["invalid"]
    assert "run_ids" not in by_heads[3].user_attrs
    raw["search"]["space"]["model.n_heads"] = [2, 4]              # a study keeps one space
    assert main([str(write(tmp_path, raw)), "--results", str(results), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "already has trials where model.n_heads is" in err and "Traceback" not in err
    raw["search"]["space"]["model.n_heads"] = [2, 3]
    raw["search"]["direction"] = "maximize"
    assert main([str(write(tmp_path, raw)), "--results", str(results), "--no-report"]) == 2
    assert "was created to minimize, but the spec asks to maximize" in capsys.readouterr().err
    raw["search"]["direction"] = "minimize"
    raw["train"]["lr"] = 2e-3                                     # the base spec edited: other runs
    raw["train"]["device"] = "auto"                               # (the device alone changes no run)
    assert main([str(write(tmp_path, raw)), "--results", str(results), "--no-report"]) == 2
    err = capsys.readouterr().err
    assert "holds trials of another version of the spec (it differs in train.lr, train.min_lr)" in err
    assert "Traceback" not in err
    del raw["train"]["lr"]
    raw["search"]["trials"] = 3                                   # the search block alone: the same runs
    assert main([str(write(tmp_path, raw)), "--results", str(results), "--no-report"]) == 0


def test_the_pruner_stops_a_trial_at_an_evaluation(tmp_path, one_thread, monkeypatch):
    import optuna

    monkeypatch.setattr(optuna_side, "make_pruner", lambda plan: optuna.pruners.ThresholdPruner(upper=0.0))
    raw = make({"trials": 2, "sampler": "grid", "space": {"model.n_layers": [1, 2]}}, seeds=[0, 1])
    results = tmp_path / "results"
    assert main([str(write(tmp_path, raw)), "--results", str(results), "--no-report"]) == 1  # no best trial
    exp = results / "srch"
    study = load(f"sqlite:///{exp / 'study.db'}", "srch")
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]
    for t in study.trials:
        assert "pruner at step 5" in t.user_attrs["pruned"] and list(t.intermediate_values) == [5]
        [rid] = t.user_attrs["run_ids"]                      # the second seed never ran
        assert json.loads((exp / "runs" / rid / "summary.json").read_text())["status"] == "pruned"
    rows = (exp / "runs.csv").read_text().splitlines()[1:]
    assert len(rows) == 2 and all(",PRUNED,pruned," in r for r in rows)


def test_a_grid_spec_with_a_storage_runs_as_a_study(tmp_path, one_thread):
    raw = make(grid={"model.n_layers": [1, 2]}, variants={"baseline": {}, "wide": {"model.d_model": 48}})
    url = f"sqlite:///{tmp_path / 'grid.db'}"
    results = tmp_path / "results"
    assert main([str(write(tmp_path, raw)), "--results", str(results), "--storage", url, "--no-report"]) == 0
    study = load(url, "srch")
    assert len(study.trials) == 4 and {t.state.name for t in study.trials} == {"COMPLETE"}
    assert {(t.params["variant"], t.params["model.n_layers"]) for t in study.trials} == \
        {("baseline", 1), ("baseline", 2), ("wide", 1), ("wide", 2)}
    plan = json.loads((results / "srch" / "experiment.json").read_text())
    assert plan["axes"] == ["model.n_layers"] and plan["variants"] == ["baseline", "wide"]
    assert sorted(r["variant"] for r in plan["runs"]) == ["baseline, n_layers=1", "baseline, n_layers=2",
                                                          "wide, n_layers=1", "wide, n_layers=2"]
    assert all(r["state"] == "COMPLETE" and isinstance(r["trial"], int) for r in plan["runs"])
    assert main([str(write(tmp_path, raw)), "--results", str(results), "--storage", url, "--no-report"]) == 0
    assert len(load(url, "srch").trials) == 4                  # a finished grid adds no trial


# -- two worker processes, one killed ------------------------------------------------------------
def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"{POSTGRES_ENV} is not set: no PostgreSQL server to test against (.ci/run starts one "
                    "on localhost and sets it)")
    return url


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_share_a_study_and_survive_a_sigkill(tmp_path, backend, lab_cache):
    name = f"two-{backend}-{uuid.uuid4().hex[:8]}"
    if backend == "postgresql":
        url = postgres_url()
        optuna_side.open_storage(url)  # a server that was promised must answer: a failure here is an error
    else:
        url = f"sqlite:///{tmp_path / 'study.db'}"
    raw = make({"trials": 12, "pruner": "none",
                "space": {"model.n_heads": [1, 2, 4], "model.n_layers": {"int": [1, 2]},
                          "train.lr": [1.0e-3, 2.0e-3, 3.0e-3]}},
               experiment=name, train={**TINY["train"], "steps": 60, "eval_every": 10})
    spec = write(tmp_path, raw)
    results = tmp_path / "results"
    exp = results / name
    env = {**os.environ, "OMP_NUM_THREADS": "1", optuna_side.HEARTBEAT_ENV: "1,3", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "experiments.run", str(spec), "--results", str(results), "--storage", url,
           "--no-report"]
    # SQLite: two separate invocations (as on two machines); PostgreSQL: one invocation with --workers 2.
    if backend == "sqlite":
        procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True) for _ in range(2)]
    else:
        procs = [subprocess.Popen(cmd + ["--workers", "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)]
    try:
        victim, victim_run = wait_for_a_run_mid_training(exp, procs, timeout=120, max_step=30)
        os.kill(victim, signal.SIGKILL)
        outputs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    try:
        check_the_study(url, name, exp, procs, victim, victim_run, outputs)
    finally:
        if backend == "postgresql":  # the database outlives the test: leave no study behind
            import optuna

            with contextlib.suppress(Exception):
                optuna.delete_study(study_name=name, storage=url)


def check_the_study(url, name, exp, procs, victim, victim_run, outputs) -> None:
    codes = [p.returncode for p in procs]
    survivors = [c for p, c in zip(procs, codes) if p.pid != victim]
    assert survivors and all(c == 0 for c in survivors), outputs

    study = load(url, name)
    states = collections.Counter(t.state.name for t in study.trials if "repeat_of" not in t.user_attrs)
    assert states["COMPLETE"] + states["PRUNED"] == 12, (states, outputs)     # repeats do not count
    assert states["RUNNING"] == 0 and states["WAITING"] == 0
    killed = [t for t in study.trials if t.state.name == "FAIL" and victim_run in t.user_attrs.get("run_ids", [])]
    assert killed, "the killed worker's trial should have been failed by its stale heartbeat"
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed[0].number]
    assert [t.state.name for t in retries] == ["COMPLETE"]

    events = log_events(exp)
    trained = collections.Counter(e["run_id"] for e in events if e["event"] == "end" and e["trained"])
    assert trained and max(trained.values()) == 1, trained        # no run id trained twice
    assert not any(e["pid"] == victim and e["event"] == "end" and e["run_id"] == victim_run for e in events)
    [resumed] = [e for e in events if e["event"] == "end" and e["trained"] and e["run_id"] == victim_run]
    assert resumed["pid"] != victim and resumed["resumed_at_step"] >= 10   # resumed from the checkpoint
    for t in study.trials:
        if t.state.name == "COMPLETE":
            for rid in t.user_attrs.get("run_ids", []):
                assert json.loads((exp / "runs" / rid / "summary.json").read_text())["status"] == "done"
    rows = (exp / "runs.csv").read_text().splitlines()
    assert rows[0].startswith("run_id,variant,model.n_heads,model.n_layers,train.lr,seed,trial,state,status")
    assert len(rows) - 1 == len({rid for t in study.trials for rid in t.user_attrs.get("run_ids", [])})


def wait_for_a_run_mid_training(exp: Path, procs, timeout: float, max_step: int) -> tuple[int, str]:
    """(pid, run id) of a worker that holds a run with a checkpoint and no summary yet."""
    workers = {p.pid for p in procs}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for lock in (exp / "runs").glob("*/lock") if (exp / "runs").is_dir() else []:
            run = lock.parent
            if not (run / "checkpoint.pt").exists() or (run / "summary.json").exists():
                continue
            try:  # well before its end, so the kill cannot race the run's last steps
                step = int((run / "metrics.csv").read_text().strip().splitlines()[-1].split(",")[0])
            except (IndexError, ValueError, OSError):
                continue
            if not 0 < step <= max_step:
                continue
            try:
                pid = int(lock.read_text().split()[1])
            except (IndexError, ValueError, OSError):
                continue
            if (run / "summary.json").exists():
                continue
            if pid in workers or len(procs) == 1:   # --workers: the lock names a child of the one process
                return pid, run.name
        if any(p.poll() is not None for p in procs):
            raise AssertionError("a worker ended before any run was caught mid-training: "
                                 + "".join(p.communicate()[0] for p in procs))
        time.sleep(0.02)
    raise AssertionError("no run was caught mid-training")


def test_the_study_loads_by_the_readme_names_and_status_shows_its_trials(tmp_path, one_thread, monkeypatch):
    """README: `optuna-dashboard sqlite:///results/<experiment>/study.db`, study name = the experiment."""
    import optuna

    from experiments import status

    monkeypatch.chdir(tmp_path)
    raw = make({"trials": 2, "sampler": "grid", "pruner": "none", "space": {"model.n_heads": [1, 2]}},
               experiment="dash")
    assert main([str(write(tmp_path, raw)), "--no-report"]) == 0           # into ./results, as a user would
    study = optuna.load_study(study_name="dash", storage="sqlite:///results/dash/study.db")
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert {t.params["model.n_heads"] for t in study.trials} == {1, 2}
    db = tmp_path / "results" / "dash" / "study.db"
    before = db.stat().st_mtime_ns
    text, unfinished = status.report(Path("results/dash"))
    assert not unfinished and db.stat().st_mtime_ns == before              # read, never written
    assert "study 'dash' in sqlite:///" in text and "2 of 2 finished trials wanted; COMPLETE 2" in text
    header = text.splitlines()[2].split()
    assert header[:6] == ["run_id", "variant", "seed", "trial", "state", "status"]
