"""The registry: lookup, options, errors and the catalogue."""
import subprocess
import sys
from typing import Literal

import pytest

from registry import ATTENTION, FAMILIES, Registry, SpecError, catalogue

MODEL_FAMILIES = ("positional", "attention", "norm", "block", "feedforward", "head")


def make_registry() -> Registry:
    reg = Registry("widget")

    @reg.register("round", aliases=("circle",))
    class Round:
        """A round widget."""

        def __init__(self, *, size: int, radius: float = 1.0, style: Literal["flat", "shiny"] = "flat") -> None:
            self.size, self.radius, self.style = size, radius, style

    @reg.register("square")
    class Square:
        """A square widget."""

        def __init__(self, *, size: int) -> None:
            self.size = size

    return reg


def test_build_from_name_and_from_mapping():
    reg = make_registry()
    plain = reg.build("round", {"size": 3, "unused": 1})
    assert (plain.size, plain.radius, plain.style) == (3, 1.0, "flat")
    custom = reg.build({"name": "circle", "radius": 2, "style": "shiny"}, {"size": 3})
    assert (custom.radius, custom.style) == (2, "shiny")


def test_names_are_sorted_and_filtered():
    reg = make_registry()
    assert reg.names() == ["round", "square"]
    assert reg.names("s*") == ["square"]


def test_unknown_name_reads_like_the_design_example():
    with pytest.raises(SpecError) as err:
        ATTENTION.build("mult_head", {}, path="model.attention")
    assert str(err.value) == (
        "unknown attention 'mult_head' at model.attention — did you mean 'multi_head'? "
        "registered: grouped_query, multi_head, multi_query, none, single_head")


def test_unknown_name_without_close_match_lists_the_registered():
    with pytest.raises(SpecError, match="unknown widget 'zzz' at w — registered: round, square"):
        make_registry().build("zzz", {}, path="w")


def test_unknown_option_and_wrong_types_are_all_reported():
    problems = make_registry().check({"name": "round", "radus": 2, "style": "matte", "radius": "big"}, "w")
    assert len(problems) == 3
    assert "unknown option 'radus' for widget 'round' at w — did you mean 'radius'?" in problems[0]
    assert "w.style = 'matte'" in problems[1] and "'flat', 'shiny'" in problems[1]
    assert "w.radius = 'big'" in problems[2] and "a number" in problems[2]


def test_shared_sizes_are_not_options():
    with pytest.raises(SpecError, match="unknown option 'size'"):
        make_registry().build({"name": "square", "size": 9}, {"size": 3})


def test_missing_name_in_mapping():
    assert "needs a 'name'" in make_registry().check({"radius": 1}, "w")[0]


def test_duplicate_registration_is_refused():
    reg = make_registry()
    with pytest.raises(ValueError, match="already registered"):
        @reg.register("square")
        class Other:
            pass
    with pytest.raises(ValueError, match="already registered"):
        @reg.register("triangle", aliases=("circle",))
        class Another:
            pass
    assert reg.names() == ["round", "square"]


def test_describe_gives_doc_line_and_defaults():
    assert make_registry().describe("round") == (
        "round — A round widget.  [options: radius=1.0, style='flat']")


def test_cross_field_check_runs_with_dims():
    problems = ATTENTION.check({"name": "grouped_query", "n_kv_heads": 3}, "model.attention",
                               {"d_model": 32, "n_heads": 4})
    assert problems == ["model.attention: n_kv_heads = 3 must be a positive divisor of n_heads = 4"]


def test_catalogue_lists_all_23_model_variants_with_descriptions():
    text = catalogue()
    names = [n for fam in MODEL_FAMILIES for n in FAMILIES[fam].names()]
    assert len(names) == 23
    for family in MODEL_FAMILIES:
        for name in FAMILIES[family].names():
            doc = FAMILIES[family].describe(name)
            assert doc in text and " — " in doc and not doc.endswith("(no description)")


def test_python_m_registry_prints_the_catalogue():
    out = subprocess.run([sys.executable, "-m", "registry"], capture_output=True, text=True, check=True).stdout
    assert "attention:" in out and "grouped_query — " in out and "n_kv_heads=2" in out
