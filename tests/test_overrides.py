"""KEY=VALUE overrides on `python -m experiments.run SPEC`: parsed as YAML, checked exactly like the
spec (the same messages), applied before run ids, recorded in the experiment's spec.yaml."""
from __future__ import annotations

import copy
import json
import types
from pathlib import Path

import pytest
import yaml

from experiments import overrides
from experiments.run import main
from experiments.search import cli as search_cli
from experiments.spec import parse_spec
from registry import SpecError

SPEC = {"experiment": "ov", "seeds": [0, 1],
        "data": {"corpus": "embedded", "tokenizer": "char"},
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context_length": 16},
        "train": {"steps": 30, "batch_size": 4, "warmup": 2, "eval_every": 10, "eval_batches": 2},
        "sample": {"tokens": 0},
        "grid": {"model.block": ["pre", "post"]}}


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    """One token cache for the module: the embedded corpus is tokenized once."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LAB_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def write(tmp_path: Path, raw: dict, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def merged(items: list[str], raw: dict | None = None) -> dict:
    tree, problems = overrides.apply_overrides(raw or SPEC, overrides.parse_overrides(items))
    assert not problems
    return tree


def test_values_are_yaml_and_3e_4_is_a_number():
    parsed = overrides.parse_overrides(["train.steps=100", "train.lr=3e-4", "seeds=[0, 1]", "train.min_lr=",
                                        "model.attention={name: grouped_query, n_kv_heads: 2}", "train.compile=true",
                                        "sample.prompt=a=b"])
    assert parsed == {"train.steps": 100, "train.lr": 3e-4, "seeds": [0, 1], "train.min_lr": None,
                      "model.attention": {"name": "grouped_query", "n_kv_heads": 2}, "train.compile": True,
                      "sample.prompt": "a=b"}
    assert type(parsed["train.steps"]) is int and type(parsed["train.lr"]) is float


def test_yaml_1_1_base_60_and_octal_numbers_stay_text():
    """1:30 is not 90, nor 010 8: the field's type check refuses them; hex says what it is."""
    assert overrides.parse_overrides(["train.lr=1:30", "train.steps=010", "seeds=[0x10]"]) == {
        "train.lr": "1:30", "train.steps": "010", "seeds": [16]}


@pytest.mark.parametrize("items, expected", [
    (["train.steps"], "must be KEY=VALUE"),
    (["=3"], "must be KEY=VALUE"),
    (["train..steps=3"], "must be KEY=VALUE"),
    (["seeds=[0, 1"], "is not valid YAML"),
    (["train.steps=1", "train.steps=2"], "is given twice"),
])
def test_malformed_overrides_are_named(items, expected):
    with pytest.raises(SpecError) as err:
        overrides.parse_overrides(items)
    assert expected in str(err.value) and items[-1].partition("=")[0] in str(err.value)


@pytest.mark.parametrize("item, block", [("tune.train.lr=[1.0e-3, 3.0e-3]", "tune"),
                                         ("scale.model.d_model=[32, 64, 128]", "scale")])
def test_tune_and_scale_are_overridden_whole(tmp_path, item, block):
    with pytest.raises(SpecError) as err:
        overrides.load_spec_with(write(tmp_path, SPEC), [item])
    assert str(err.value) == (f"override key '{item.partition('=')[0]}' does not exist: {block} is set as a whole "
                              f"block, e.g. {overrides.WHOLE_BLOCKS[block]}")
    spec, _, _ = overrides.load_spec_with(write(tmp_path, SPEC), [overrides.WHOLE_BLOCKS[block].strip("'")])
    assert getattr(spec.sweeps, block) is not None                    # what the message suggests works


def test_every_kind_of_key_lands_where_the_file_would_have_it():
    raw = copy.deepcopy(SPEC) | {"variants": {"baseline": {}}}
    tree = merged(["seeds=[3]", "train.steps=5", "model.attention.impl=naive", "grid.model.positional=[rope]",
                   "variants.wide.model.d_model=64", "variants.baseline={}", "data.tokenizer=byte"], raw)
    assert tree["seeds"] == [3] and tree["train"]["steps"] == 5 and tree["data"]["tokenizer"] == "byte"
    assert tree["model"]["attention"] == {"name": "multi_head", "impl": "naive"}   # the default component, kept
    assert tree["grid"] == {"model.block": ["pre", "post"], "model.positional": ["rope"]}
    assert tree["variants"] == {"baseline": {}, "wide": {"model.d_model": 64}}
    assert SPEC["train"]["steps"] == 30                                            # the file's tree is not touched
    search = merged(["search.trials=4", "search.space.train.lr={float: [1.0e-4, 1.0e-3]}"])
    assert search["search"] == {"trials": 4, "space": {"train.lr": {"float": [1e-4, 1e-3]}}}


def test_empty_entries_of_the_file_are_filled():
    tree = merged(["grid.model.block=[pre]", "model.attention.impl=naive", "train.steps=3"],
                  {"experiment": "x", "grid": None, "model": None})
    assert tree == {"experiment": "x", "grid": {"model.block": ["pre"]},
                    "model": {"attention": {"name": "multi_head", "impl": "naive"}}, "train": {"steps": 3}}


def test_an_option_keeps_the_component_a_preset_chose():
    raw = {"experiment": "p", "model": {"preset": "seed-final"}}
    tree = merged(["model.positional.scale_embeddings=false"], raw)
    assert tree["model"]["positional"] == {"name": "sinusoidal", "scale_embeddings": False}


def spec_error(raw: dict) -> str:
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    return str(err.value)


@pytest.mark.parametrize("key, value", [("train.steps", -1), ("train.stpes", 10), ("model.attention", "mult_head"),
                                        ("grid.model.blok", ["pre"]), ("seeds", "zero"), ("sample.temperature", -1.0)])
def test_a_bad_override_gets_the_specs_own_message(tmp_path, key, value):
    """The override and the same edit of the file fail with the very same message."""
    edited = copy.deepcopy(SPEC)
    head, _, rest = key.partition(".")
    if head == "grid":
        edited["grid"][rest] = value
    elif rest:
        edited[head][rest] = value
    else:
        edited[head] = value
    expected = spec_error(edited)
    with pytest.raises(SpecError) as err:
        overrides.load_spec_with(write(tmp_path, SPEC), [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"])
    assert str(err.value) == expected


def test_keys_no_spec_has_are_reported_with_the_specs_problems(tmp_path):
    with pytest.raises(SpecError) as err:
        overrides.load_spec_with(write(tmp_path, SPEC), ["train.steps.x=1", "train.lr=-1"])
    text = str(err.value)
    assert "2 problems" in text and "override key 'train.steps.x' does not exist" in text
    assert "train.lr = -1 must be a positive number (in block=pre, block=post)" in text  # one line for both


def test_overrides_change_run_ids_as_the_same_edit_of_the_file_would(tmp_path):
    spec, _, _ = overrides.load_spec_with(write(tmp_path, SPEC), ["train.steps=12", "seeds=[0]"])
    edited = copy.deepcopy(SPEC) | {"seeds": [0]}
    edited["train"] = {**edited["train"], "steps": 12}
    assert [r.run_id for r in spec.runs] == [r.run_id for r in parse_spec(edited).runs]
    assert all(r.train.steps == 12 for r in spec.runs) and len(spec.runs) == 2


def test_the_cli_trains_what_the_overrides_say_and_records_them(tmp_path, capsys):
    spec_path = write(tmp_path, SPEC)
    results = tmp_path / "results"
    argv = [str(spec_path), "train.steps=12", "--results", str(results), "seeds=[0]", "grid.model.block=[pre]",
            "--no-report", "train.tensorboard=false"]
    assert main(argv) == 0
    exp = results / "ov"
    [entry] = json.loads((exp / "experiment.json").read_text())["runs"]
    summary = json.loads((exp / "runs" / entry["run_id"] / "summary.json").read_text())
    assert summary["steps"] == 12 and summary["seed"] == 0 and entry["variant"] == "block=pre"
    assert not (exp / "runs" / entry["run_id"] / "tensorboard").exists()       # switched off from the command line
    record = (exp / "spec.yaml").read_text()
    assert record.splitlines()[0] == "# python -m experiments.run " + " ".join(
        a if "[" not in a else f"'{a}'" for a in argv)
    assert yaml.safe_load(record)["train"]["steps"] == 12
    capsys.readouterr()
    assert main([str(exp / "spec.yaml"), "--results", str(results), "--no-report"]) == 0  # the record reruns as is
    assert "0 trained, 1 already done" in capsys.readouterr().out


def test_dry_run_shows_the_effect_and_a_bad_override_exits_2_without_results(tmp_path, capsys):
    spec_path = write(tmp_path, SPEC)
    results = tmp_path / "results"
    assert main([str(spec_path), "train.steps=12", "model.attention.impl=naive", "--dry-run",
                 "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "train.steps: 30 -> 12" in out and "model.attention.impl: (the default of multi_head) -> naive" in out
    assert " 768 " in out  # tokens per run: 12 steps x 4 sequences x 16 tokens
    assert main([str(spec_path), "train.steps=-1", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train.steps = -1 must be a positive integer" in err
    assert not results.exists()


def test_search_workers_get_the_same_overrides(spawned):
    class Args:
        spec, overrides, results, device = "s.yaml", ["train.steps=12", "seeds=[0, 1]"], "res", None

    class Plan:
        args, storage_url = Args, "sqlite:////tmp/x.db"
        spec = types.SimpleNamespace(runs=[types.SimpleNamespace(train=types.SimpleNamespace(device="cpu"))])

    assert search_cli.spawn_workers(Plan, 2) == 0
    assert len(spawned) == 2 and all(cmd[3:6] == ["s.yaml", "train.steps=12", "seeds=[0, 1]"] for cmd, _ in spawned)


@pytest.mark.parametrize("item", ["train=false", "train=0", "train=[]", "model=''", "data=[]", "sample=0",
                                  "grid=false", "variants=[]"])
def test_a_whole_section_set_to_a_falsy_non_mapping_is_refused(tmp_path, capsys, item):
    results = tmp_path / "results"
    assert main([str(write(tmp_path, SPEC)), item, "--dry-run", "--results", str(results)]) == 2
    err = capsys.readouterr().err
    key = item.partition("=")[0]
    assert err.startswith(f"error: {key} = ") and "must be a mapping of keys to values" in err
    assert err.count("\n") == 1 and not results.exists()


def test_a_whole_section_set_to_null_is_its_defaults(tmp_path):
    spec, _, _ = overrides.load_spec_with(write(tmp_path, SPEC), ["train=", "seeds=[0]", "grid="])
    assert [r.train.steps for r in spec.runs] == [600]


def test_a_newline_in_any_argument_keeps_the_record_valid_yaml(tmp_path):
    """Each header line is one comment line: a newline in an override, a glob or a path is escaped as
    bash's $'...' does, so the command still reads back as the same arguments."""
    spec_path = write(tmp_path, SPEC)
    items = ["seeds=[0,\n1]", "sample.prompt=\"a\\nb\""]
    spec, original, changes = overrides.load_spec_with(spec_path, items)
    argv = [str(spec_path), *items, "--only", "base\n*", "--results", "R\u2028x\x85y"]
    record = overrides.spec_record(spec_path, original, changes, argv)
    header = record.splitlines()[:2]
    assert header[0] == ("# python -m experiments.run " + str(spec_path) + " $'seeds=[0,\\n1]' "
                         "'sample.prompt=\"a\\nb\"' --only $'base\\n*' --results $'R\\u2028x\\u0085y'")
    assert header[1].endswith('seeds=[0, 1], sample.prompt="a\\nb"')
    record_path = tmp_path / "record.yaml"
    record_path.write_text(record, encoding="utf-8")
    rerun = overrides.load_spec_with(record_path, [])[0]
    assert [r.run_id for r in rerun.runs] == [r.run_id for r in spec.runs]


def test_the_record_of_a_rerun_from_the_record_is_the_same_record():
    record = "# python -m experiments.run s.yaml train.steps=3\n# s.yaml with 1 command-line override(s): x\nexperiment: a\n"
    rerun = "# python -m experiments.run results/a/spec.yaml --results results\n" + record
    assert overrides.same_spec_record(record, rerun)
    assert overrides.same_spec_record(record, "# python -m experiments.run\n" + rerun)   # older stacked headers
    assert not overrides.same_spec_record(record, record.replace("experiment: a", "experiment: b"))
    assert not overrides.same_spec_record("# python -m experiments.run s.yaml\n# mine\nexperiment: a\n",
                                          "# python -m experiments.run s.yaml\n# yours\nexperiment: a\n")


def test_rerunning_the_recorded_spec_leaves_it_alone(tmp_path, capsys):
    results = tmp_path / "results"
    first = [str(write(tmp_path, SPEC)), "seeds=[0]", "grid.model.block=[pre]", "train.steps=10",
             "--results", str(results), "--no-report"]
    assert main(first) == 0
    record_path = results / "ov" / "spec.yaml"
    record = record_path.read_text()
    for _ in range(2):
        assert main([str(record_path), "--results", str(results), "--no-report"]) == 0
    assert "0 trained, 1 already done" in capsys.readouterr().out
    assert record_path.read_text() == record and record.count("# python -m experiments.run") == 1


def test_a_dry_run_into_a_closed_pipe_ends_quietly(tmp_path):
    """`run SPEC --dry-run | head -2`: the closed pipe is not a results-folder failure, and no traceback."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen([sys.executable, "-m", "experiments.run", "specs/quickstart.yaml", "train.lr=3e-4",
                             "--dry-run", "--results", str(tmp_path / "r")], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141 and proc.stderr.read() == "" and not (tmp_path / "r").exists()


@pytest.mark.parametrize("items", [["train.budget.tokens=4096"], ["train.budget={tokens: 4096}"]])
def test_a_budget_from_the_command_line_replaces_the_specs_steps(tmp_path, items):
    """train.steps is shorthand for a steps budget: overriding the budget replaces it (and back)."""
    spec, _, _ = overrides.load_spec_with(write(tmp_path, SPEC), items)
    assert {r.train.budget["tokens"] for r in spec.runs} == {4096}
    with_budget = {**SPEC, "train": {**SPEC["train"], "budget": {"tokens": 4096}}}
    del with_budget["train"]["steps"]
    spec, _, _ = overrides.load_spec_with(write(tmp_path, with_budget, "b.yaml"), ["train.steps=12"])
    assert {r.train.steps for r in spec.runs} == {12}
    with pytest.raises(SpecError) as err:                       # both at once still say how long twice
        overrides.load_spec_with(write(tmp_path, SPEC, "c.yaml"), ["train.steps=12", "train.budget.tokens=4096"])
    assert "both say how long to train" in str(err.value)


def test_overrides_that_do_less_than_they_seem_are_named(tmp_path):
    raw = {**SPEC, "grid": {}, "variants": {"baseline": {}, "relu": {"model.feedforward": "relu_mlp"}}}
    items = ["model.feedforward.mult=2", "model.preset=small", "train.lr=0.001", "train.steps=12"]
    spec, original, changes = overrides.load_spec_with(write(tmp_path, raw), items)
    notes = overrides.override_notes(original, changes, spec)
    assert notes == [
        "model.feedforward.mult=2 does not reach relu: their variant or grid axis sets model.feedforward itself; "
        "give the option there (e.g. variants.NAME.model.feedforward={name: ..., mult: 2})",
        "model.preset=small changes no run: every run already has that value, or the spec's own fields, variants "
        "or grid set what it would change",                          # the spec sets every size small has
        "train.lr=0.001 changes no run: every run already has that value, or the spec's own fields, variants or "
        "grid set what it would change"]                             # lr's default


def test_a_device_this_machine_lacks_is_refused_before_any_run(tmp_path, capsys, monkeypatch):
    import torch

    from experiments import run
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert run.main([str(write(tmp_path, SPEC)), "train.device=mps", "--results", str(tmp_path / "r")]) == 2
    assert "error: device mps (train.device or --device) is not here" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("items", [["search.trials=40", "search.sampler=random"],
                                   ["search.space.model.n_layers={int: [1, 2]}"], ["search="]])
def test_an_override_of_the_search_block_is_not_said_to_change_nothing(items):
    search = Path(__file__).parent.parent / "specs" / "search_heads_layers.yaml"
    spec, original, changes = overrides.load_spec_with(search, items)
    assert overrides.override_notes(original, changes, spec) == []
    spec, original, changes = overrides.load_spec_with(search, ["search.trials=12"])  # the spec's own value
    assert overrides.override_notes(original, changes, spec) == [
        "search.trials=12 changes no run: every run already has that value, or the spec's own fields, variants or "
        "grid set what it would change"]
