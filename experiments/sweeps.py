"""A spec's `tune:` and `scale:` blocks: checked, then turned into extra axes of its grid.

    tune:  {train.lr: [1.0e-3, 3.0e-3, 1.0e-2]}
        One spec key and at least two values. Every variant x seed runs at every value, and the report
        compares the variants each at its own best value (analysis/tuning.py).
    scale: {model.d_model: [32, 64, 128], model.n_layers: [1, 2, 3]}
        Model sizes: one list per size field (experiments/schema.py's SCALE_FIELDS), all of one length,
        paired (the i-th size takes the i-th value of every list), at least SCALE_MIN_SIZES of them. A
        size field that is not listed keeps the spec's value. Every variant x seed runs at every size
        under the spec's train.budget (`{tokens_per_param: 20}` gives each size its own), and the
        report fits loss against compute per variant (analysis/scaling.py).

Both become axes after the spec's own grid axes: tune's key is an axis; scale's first key is the
axis (its values must differ) and the other listed keys are linked to it, set with it at each size
and shown in the run's label. The checks here are the blocks' shape; every value is then checked
against its field like any grid value, when the runs are expanded.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from experiments import metrics
from experiments.schema import SCALE_FIELDS, SCALE_MIN_SIZES, TUNE_MIN_VALUES, key_problem, repeats
from experiments.search.space import scored_text_problem
from registry import brief, cut


@dataclasses.dataclass
class Sweeps:
    """The axes the blocks add to the grid, and what the report needs to know about them."""

    grid: dict[str, list[Any]] = dataclasses.field(default_factory=dict)   # axis key -> values
    linked: dict[str, dict[str, dict[str, Any]]] = dataclasses.field(default_factory=dict)  # axis -> repr(value) -> {key: value}
    tune: dict[str, Any] | None = None     # {"key": ..., "values": [...]}
    scale: dict[str, Any] | None = None    # {"axis": ..., "keys": [...], "sizes": [{key: value}, ...]}


def parse(raw: dict, grid: dict, variants: dict, problems: list[str]) -> Sweeps:
    """The tune and scale blocks of a spec; their problems are appended to `problems`."""
    sweeps = Sweeps()
    tune, scale = raw.get("tune"), raw.get("scale")
    if tune is not None:
        sweeps.tune = parse_tune(tune, problems)
    if scale is not None:
        sweeps.scale = parse_scale(scale, problems)
    if sweeps.tune and sweeps.scale:
        problems.append("tune and scale cannot be used together yet: tune the value at one size first "
                        "(a tune: spec), then scale with it (a scale: spec)")
        return Sweeps()
    if raw.get("search") is not None and (tune is not None or scale is not None):
        problems.append("a search block cannot be combined with tune or scale: a search picks its own "
                        "points; use tune: for a list of values of one key, or search: alone")
    if sweeps.tune:
        sweeps.grid[sweeps.tune["key"]] = list(sweeps.tune["values"])
    if sweeps.scale:
        axis, sizes = sweeps.scale["axis"], sweeps.scale["sizes"]
        sweeps.grid[axis] = [size[axis] for size in sizes]
        sweeps.linked[axis] = {repr(size[axis]): {k: v for k, v in size.items() if k != axis} for size in sizes}
    problems += conflicts(sweeps, grid, variants)
    return sweeps


def parse_tune(tune: Any, problems: list[str]) -> dict[str, Any] | None:
    example = "e.g. tune: {train.lr: [1.0e-3, 3.0e-3, 1.0e-2]}"
    if not isinstance(tune, dict) or len(tune) != 1:
        problems.append(f"tune = {brief(tune)} must be a mapping of exactly one spec key to a list of values, {example}")
        return None
    (key, values), = tune.items()
    if problem := key_problem(str(key), "tune"):
        problems.append(problem)
        return None
    # The report picks each variant's best value by its final validation bpb, as a search of val_bpb would.
    if why := scored_text_problem(".".join(str(key).split(".")[:2]), metrics.VAL_BPB, "values"):
        problems.append(f"tune.{cut(key)} = {brief(values)} cannot be tuned: a tune picks each variant's best value by its "
                        f"validation bpb, and {why}")
        return None
    if not isinstance(values, list) or len(values) < TUNE_MIN_VALUES:
        problems.append(f"tune.{key} = {brief(values)} must be a list of at least {TUNE_MIN_VALUES} values to "
                        f"choose from, {example}")
        return None
    if repeats(values):
        problems.append(f"tune.{key} = {brief(values)} lists a value twice")
        return None
    return {"key": str(key), "values": list(values)}


def parse_scale(scale: Any, problems: list[str]) -> dict[str, Any] | None:
    example = "e.g. scale: {model.d_model: [32, 64, 128], model.n_layers: [1, 2, 3]}"
    if not isinstance(scale, dict) or not scale:
        problems.append(f"scale = {brief(scale)} must be a mapping of size keys ({', '.join(SCALE_FIELDS)}) to "
                        f"lists of values, one value per size, {example}")
        return None
    found = [f"scale key {brief(k)} is not a size field: scale takes {', '.join(SCALE_FIELDS)}"
             for k in scale if k not in SCALE_FIELDS]
    lists = {str(k): v for k, v in scale.items() if k in SCALE_FIELDS}
    found += [f"scale.{k} = {brief(v)} must be a list of values, one per size" for k, v in lists.items()
              if not isinstance(v, list)]
    lengths = {len(v) for v in lists.values() if isinstance(v, list)}
    if not found and len(lengths) > 1:
        found.append(f"scale lists have different lengths ({', '.join(f'{k}: {len(v)}' for k, v in lists.items())}): "
                     "they are paired, the i-th size taking the i-th value of each")
    if not found and min(lengths) < SCALE_MIN_SIZES:
        found.append(f"scale gives {min(lengths)} sizes; a fit of L(C) = E + A*C^-alpha needs at least "
                     f"{SCALE_MIN_SIZES} (it has 3 parameters), {example}")
    axis = next(iter(lists), None)
    if not found and repeats(lists[axis]):
        found.append(f"scale.{axis} = {brief(lists[axis])} repeats a value: the first scale key names the sizes, "
                     "so its values must differ (list another key first)")
    if found:
        problems += found
        return None
    sizes = [dict(zip(lists, values)) for values in zip(*lists.values())]
    return {"axis": axis, "keys": list(lists), "sizes": sizes}


def conflicts(sweeps: Sweeps, grid: dict, variants: dict) -> list[str]:
    """A key the blocks sweep that the grid or a variant also sets: which value would win is unclear."""
    found = []
    keys = [("tune", k) for k in ([sweeps.tune["key"]] if sweeps.tune else [])]
    keys += [("scale", k) for k in (sweeps.scale["keys"] if sweeps.scale else [])]
    for block, key in keys:
        if key in grid:
            found.append(f"{key} is both a grid axis and in {block}: list its values in one of them")
        for name, overrides in variants.items():
            if key in (overrides or {}):
                found.append(f"variants.{name} sets {key}, which {block} runs over: drop it from the variant")
    return found


def linked_overrides(linked: dict[str, dict[str, dict[str, Any]]], axes: dict[str, Any]) -> dict[str, Any]:
    """The keys set together with the axes' values (scale's other size fields at each size)."""
    out: dict[str, Any] = {}
    for key, value in axes.items():
        out |= linked.get(key, {}).get(repr(value), {})
    return out


def record(sweeps: Sweeps) -> dict[str, Any]:
    """What experiment.json keeps of the blocks, for the analysis."""
    return {"tune": sweeps.tune, "scale": sweeps.scale}
