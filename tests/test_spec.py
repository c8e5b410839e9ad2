"""Spec loading, validation and expansion (no training here)."""
import pytest
import yaml

from experiments.spec import label, parse_spec
from registry import SpecError

BASE = {"experiment": "t", "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "context_length": 16},
        "train": {"steps": 5, "warmup": 1}}


def spec(**extra):
    return parse_spec({**BASE, **extra})


def test_defaults_fill_every_field():
    run = spec().runs[0]
    assert run.model["block"] == {"name": "pre"} and run.model["attention"] == {"name": "multi_head", "impl": "sdpa"}
    assert run.train.min_lr == pytest.approx(0.1 * run.train.lr)
    assert run.train.checkpoint_every == run.train.eval_every
    assert run.variant == "baseline" and run.seed == 0


def test_grid_times_variants_times_seeds():
    s = spec(seeds=[0, 1], grid={"model.block": ["post", "pre"]},
             variants={"baseline": {}, "wide": {"model.d_model": 64}})
    assert len(s.runs) == 2 * 2 * 2
    assert [r.seed for r in s.runs] == [0] * 4 + [1] * 4  # every variant's seed 0 first
    labels = {r.variant for r in s.runs}
    assert labels == {"baseline, block=post", "baseline, block=pre", "wide, block=post", "wide, block=pre"}
    assert s.axes == ["model.block"] and s.baseline == "baseline"
    assert len({r.run_id for r in s.runs}) == 8


def test_run_id_is_stable_and_ignores_spelling_and_execution_details():
    a = spec(model={**BASE["model"], "positional": "rope"}).runs[0]
    b = spec(model={**BASE["model"], "positional": {"name": "rope", "base": 10000.0}},
             train={**BASE["train"], "device": "cpu", "compile": True}).runs[0]
    assert a.run_id == b.run_id
    c = spec(model={**BASE["model"], "positional": {"name": "rope", "base": 500.0}}).runs[0]
    assert c.run_id != a.run_id
    d = spec(model={**BASE["model"], "positional": "rope"}).runs[0]
    d.bind_corpus("abc")
    assert d.run_id != a.run_id  # the corpus content is part of what a run computes


def test_preset_is_overridden_by_explicit_fields():
    run = parse_spec({"experiment": "p", "model": {"preset": "seed-final", "n_layers": 2}}).runs[0]
    assert run.model["d_model"] == 512 and run.model["n_layers"] == 2
    assert run.model["positional"]["name"] == "sinusoidal" and run.model["block"] == {"name": "post"}


def test_dotted_option_keys_promote_a_bare_component_name():
    s = spec(grid={"model.attention.impl": ["sdpa", "naive"]})
    assert [r.model["attention"] for r in s.runs] == [{"name": "multi_head", "impl": "sdpa"},
                                                     {"name": "multi_head", "impl": "naive"}]
    assert s.runs[1].variant == "attention.impl=naive"


def test_every_problem_is_reported_at_once():
    with pytest.raises(SpecError) as err:
        parse_spec({"experiment": "x/y", "train": {"stpes": 3, "lr": 0}, "model": {"norm": "layrnorm"},
                    "grid": {"model.blok": ["pre"]}})
    problems = err.value.problems
    assert len(problems) == 5, problems
    assert any("did you mean 'steps'" in p for p in problems)
    assert any("did you mean 'layernorm'" in p for p in problems)


def test_component_labels():
    assert label({"name": "rope", "base": 500}) == "rope(base=500)" and label(4) == "4"


def test_yaml_round_trip_of_a_run():
    run = spec().runs[0]
    assert yaml.safe_load(yaml.safe_dump(run.to_dict())) == run.to_dict()


def test_readme_documents_every_spec_key():
    from pathlib import Path

    from experiments.schema import SECTIONS

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    missing = [f"{s}.{k}" for s, fields in SECTIONS.items() for k in fields if f"`{s}.{k}`" not in readme]
    assert not missing, f"README.md does not document: {missing}"


def test_one_schema_checks_types_and_ranges_and_gives_the_typed_settings():
    import dataclasses

    from experiments.schema import MODEL, SECTIONS, TRAIN, ModelConfig, TrainSettings

    for section, fields in SECTIONS.items():
        for key, field in fields.items():
            assert field.valid(field.default), f"{section}.{key}'s default breaks its own rule"
    assert TRAIN["lr"].problem(True, "train.lr") == "train.lr = True must be a positive number"  # a bool is no number
    assert TRAIN["betas"].problem([0.9, 1.0], "train.betas") == "train.betas = [0.9, 1.0] must be two numbers in [0, 1)"
    assert MODEL["dropout"].problem(0.5, "model.dropout") is None
    assert SECTIONS["sample"]["top_k"].describe() == "a positive integer <= 2147483647 or null"
    assert [f.name for f in dataclasses.fields(TrainSettings)] == list(TRAIN)
    config = ModelConfig(vocab_size=10)
    assert all(getattr(config, k) == f.default for k, f in MODEL.items() if k != "preset")
    assert TrainSettings().betas is not TrainSettings().betas  # a list default is each instance's own


# -- hostile and careless input (issue 14) ---------------------------------------------------------
def test_yaml_1_1_spellings_of_numbers_are_numbers(tmp_path):
    from experiments.specfile import read_yaml

    path = tmp_path / "s.yaml"
    path.write_text("experiment: t\ntrain: {lr: 3e-4, min_lr: 1E-5, weight_decay: 1.5e-2, steps: 10, warmup: 1}\n"
                    "sample: {prompt: '1e-3'}\n")
    raw = read_yaml(path)
    assert raw["train"]["lr"] == 3e-4 and raw["train"]["min_lr"] == 1e-5 and raw["train"]["weight_decay"] == 0.015
    assert raw["sample"]["prompt"] == "1e-3"  # quoted, it stays a string
    run = parse_spec(raw).runs[0]
    assert run.train.lr == 3e-4


def test_a_merge_key_may_be_overridden_but_a_key_may_not_be_given_twice(tmp_path):
    from experiments.specfile import read_yaml

    path = tmp_path / "s.yaml"
    path.write_text("experiment: t\nbase: &base {lr: 1.0e-3, steps: 5}\ntrain:\n  <<: *base\n  lr: 2.0e-3\n")
    assert read_yaml(path)["train"] == {"lr": 2.0e-3, "steps": 5}
    path.write_text("experiment: t\nvariants:\n  a: {}\n  b: {}\n  a: {model.d_model: 64}\n")
    with pytest.raises(SpecError, match=r"the key 'a' is given twice \(lines 3 and 5\)"):
        read_yaml(path)


def test_a_spec_file_over_the_size_limit_is_refused_unread(tmp_path):
    from experiments.schema import LIMITS

    path = tmp_path / "big.yaml"
    path.write_text("experiment: t\n# " + "x" * LIMITS["spec_bytes"] + "\n")
    with pytest.raises(SpecError, match=f"larger than {LIMITS['spec_bytes']:,} bytes"):
        from experiments.spec import load_spec
        load_spec(path)


def test_runs_are_counted_before_they_are_expanded(monkeypatch):
    import experiments.spec as spec_module

    monkeypatch.setattr(spec_module, "expand", lambda *a: pytest.fail("a spec over the limit was expanded"))
    grid = {f"train.{k}": list(range(1, 23)) for k in ("steps", "eval_every", "eval_batches")}  # 22^3 = 10,648
    with pytest.raises(SpecError, match="expands to 10,648 runs .* one spec per value of grid.train.steps"):
        spec(grid=grid)


def test_a_search_grid_is_counted_without_listing_it():
    from experiments.search.space import parse_block

    block, problems = parse_block({"sampler": "grid", "space": {"train.steps": {"int": [1, 10**9]}}}, {})
    assert problems == ["search.sampler = 'grid' over this space walks 1,000,000,000 points, more than the 10,000 "
                        "one experiment may hold: give the ranges larger steps or fewer values, or use sampler: tpe "
                        "or random with a number of trials"]


def test_names_and_values_in_messages_are_cut_short():
    from registry import brief

    bomb = [[0] * 10]
    for _ in range(30):  # 10^31 values if printed whole
        bomb = [bomb] * 10
    assert len(brief(bomb)) <= 80 and len(brief("x" * 10**6)) <= 80 and len(brief(10**5000)) <= 80
    with pytest.raises(SpecError) as err:
        spec(variants={"v" * 101: {}}, grid={"model.block": "x" * 10**5})
    assert all(len(p) < 300 for p in err.value.problems), err.value.problems
    assert any("must be 1 to 100 letters, digits" in p for p in err.value.problems)


def test_every_component_option_default_lies_in_its_declared_range():
    from registry import FAMILIES, load_all, type_problem

    load_all()
    checked = 0
    for family in FAMILIES.values():
        for name in family.names():
            for option, param in family.options(name).items():
                assert type_problem(param.default, param.annotation) is None, (family.family, name, option)
                checked += 1
    assert checked >= 10


@pytest.mark.parametrize("name", ["data", "model", "train", "sample", "grid", "variants"])
@pytest.mark.parametrize("value", [False, 0, "", [], 5])
def test_an_entry_that_is_not_a_mapping_is_refused_not_read_as_empty(name, value):
    """`train: false` (or 0, '', []) is a typo, not "the defaults": 600 default steps would run silently."""
    with pytest.raises(SpecError) as err:
        spec(**{name: value})
    assert f"{name} = {value!r} must be a mapping of keys to values" in str(err.value)


@pytest.mark.parametrize("name", ["data", "model", "train", "sample", "grid", "variants"])
def test_a_null_entry_is_an_empty_one(name):
    assert spec(**{name: None}).runs[0].train.steps == (5 if name != "train" else 600)


@pytest.mark.parametrize("attention, n_heads, head_dim", [("single_head", 2, None), ("none", 2, None),
                                                          ("multi_head", 2, 15), ("grouped_query", 6, 5)])
def test_rope_checks_the_head_size_the_attention_builds(attention, n_heads, head_dim):
    """single_head is one head of d_model whatever model.n_heads says; attention none has no heads."""
    from experiments.resources import meta_model

    raw = {"experiment": "x", "model": {"d_model": 30, "n_heads": n_heads, "attention": attention, "positional": "rope"}}
    if head_dim is None:
        assert meta_model(parse_spec(raw).runs[0].model, 65).num_params() > 0   # checked and built alike
        return
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    assert f"rope turns pairs of features, so it needs an even head size, and the heads are {head_dim} wide" in str(err.value)


def test_numbers_repeat_by_value_but_true_is_not_1():
    from experiments.schema import repeats

    assert repeats([1, 1.0]) and repeats([{"name": "rope", "base": 500}, {"name": "rope", "base": 500.0}])
    assert not repeats([True, 1]) and not repeats(["1", 1]) and not repeats([None, 0, False, ""])
    assert not repeats([[1, 2], [2, 1]]) and repeats([[1, 2.0], [1.0, 2]])


def test_a_boolean_where_a_string_is_wanted_says_yaml_read_yes_or_no():
    from registry import bool_hint

    hint = "(YAML reads yes/no/on/off/true/false as booleans: quote it)"
    with pytest.raises(SpecError) as err:
        parse_spec({"experiment": "t", "model": {"preset": False, "attention": {"name": "multi_head", "impl": True}},
                    "train": {"device": True}})
    for field in ("model.preset = False is not a preset", "impl = True for attention 'multi_head' must be",
                  "train.device = True must be auto"):
        assert field in str(err.value) and str(err.value).split(field)[1].split(";")[0].endswith(hint)
    assert bool_hint(True, str | None) and bool_hint(False, dict | str) and not bool_hint(True, int)
    assert not bool_hint("yes", str) and not bool_hint(1, str) and not bool_hint(True, bool)
