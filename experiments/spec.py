"""Experiment specs: load YAML, validate everything at once, expand variants x grid x seeds into runs.

A spec is plain data (experiments/specfile.py reads it), checked against experiments/schema.py (every key's
default, type and range) and, for a search block, experiments/search/space.py. Every problem in it
is collected and reported in one `SpecError` before anything is built or written. Each expanded run
is a `RunSpec` whose id is a short hash of its canonical resolved form, so the same run always
lands in the same folder.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

from components.attention import with_head_size
from components.model import PRESETS
from experiments import sweeps as sweep_blocks
from experiments.budget import warmup_steps, warmup_too_long
from experiments.schema import (COMPONENT_FIELDS, DATA, LIMITS, MODEL, NAME_MAX_CHARS, SECTIONS, TOP, TRAIN,
                                TrainSettings, is_number, key_problem, label, repeats)
from experiments.search import space
from experiments.specfile import read_yaml
from registry import FAMILIES, SpecError, bool_hint, brief, choices_hint, cut, load_all

TOP_LEVEL = ("experiment", "seeds", "data", "model", "train", "sample", "grid", "variants", "search", "tune", "scale")
# Execution details that do not change what a run computes are left out of its id.
NOT_IN_RUN_ID = {"train": ("device", "compile", "checkpoint_every", "tensorboard")}
MAPPING_EXAMPLES = {"data": "{corpus: embedded}", "model": "{d_model: 64}", "train": "{steps: 100}",
                    "sample": "{tokens: 100}", "grid": "{model.block: [pre, post]}", "variants": "{baseline: {}}"}
NAME = re.compile(rf"[A-Za-z0-9_-]{{1,{NAME_MAX_CHARS}}}")


@dataclasses.dataclass
class RunSpec:
    """One fully resolved training run."""

    experiment: str
    variant: str
    axes: dict[str, Any]
    seed: int
    data: dict[str, Any]
    model: dict[str, Any]             # ModelConfig fields but vocab_size, preset expanded
    train: TrainSettings
    sample: dict[str, Any]
    corpus_sha256: str = ""           # bound once the corpus is read, so an edited data file is a new run
    precision: str = ""               # train.precision resolved on the run's device (fp32 | bf16), once bound
    run_id: str = ""

    def identity(self) -> dict[str, Any]:
        """What the run computes (the id's input): data (and its content hash), model, train (with the
        precision it resolves to: `auto` is fp32 on one machine and bf16 on another), seed."""
        train = {k: v for k, v in dataclasses.asdict(self.train).items() if k not in NOT_IN_RUN_ID["train"]}
        train["precision"] = self.precision or train["precision"]
        return {"data": self.data, "corpus_sha256": self.corpus_sha256, "model": self.model,
                "train": train, "seed": self.seed}

    def bind_corpus(self, sha256: str) -> None:
        self.corpus_sha256 = sha256
        self.run_id = run_id(self)

    def bind_precision(self, precision: str) -> None:
        """Fix what train.precision means for this run (experiments.hardware.resolve_precision)."""
        self.precision = precision
        self.run_id = run_id(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Spec:
    """A validated spec and the runs it expands to."""

    experiment: str
    seeds: list[int]
    raw: dict[str, Any]
    runs: list[RunSpec]
    axes: list[str]
    variants: list[str]
    search: dict[str, Any] | None = None
    base: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # the spec's own sections
    sweeps: sweep_blocks.Sweeps = dataclasses.field(default_factory=sweep_blocks.Sweeps)  # tune:, scale:
    grid: dict[str, list[Any]] = dataclasses.field(default_factory=dict)  # the grid's axes, then the sweeps'

    def runs_for(self, overrides: dict[str, Any], variant: str, axes: dict[str, Any] | None = None) -> list[RunSpec]:
        """One run per seed of the base spec with dotted `overrides` applied (a search trial, say)."""
        problems = [p for k in overrides if (p := key_problem(str(k), variant))]
        if problems:
            raise SpecError(problems)
        runs, problems = expand(self.experiment, self.seeds, self.base, {}, {variant: overrides})
        if problems:
            raise SpecError(dedupe(problems))
        for run in runs:
            run.axes = dict(axes if axes is not None else overrides)
        return runs

    @property
    def baseline(self) -> str | None:
        return "baseline" if "baseline" in self.variants else (self.variants[0] if self.variants else None)


# -- loading -------------------------------------------------------------------------------------
def load_spec(path: str | Path) -> Spec:
    return parse_spec(read_yaml(path))


# -- validation and expansion --------------------------------------------------------------------
def parse_spec(raw: Any) -> Spec:
    """Validate a parsed spec and expand it; raise one SpecError listing every problem."""
    if not isinstance(raw, dict):
        raise SpecError(f"a spec must be a mapping of sections ({', '.join(TOP_LEVEL)}), not {type(raw).__name__}")
    problems = [f"unknown section {brief(key)}{choices_hint(key, TOP_LEVEL, 'valid sections')}"
                for key in raw if key not in TOP_LEVEL]
    experiment = raw.get("experiment")
    if problem := TOP["experiment"].problem(experiment, "experiment"):
        problems.append(problem)
    seeds = raw.get("seeds", TOP["seeds"].default)
    if (problem := TOP["seeds"].problem(seeds, "seeds")) or not seeds or len(set(map(str, seeds))) != len(seeds):
        problems.append(problem or f"seeds = {brief(seeds)} must be {TOP['seeds'].describe()}")
        seeds = TOP["seeds"].default
    base = {s: section(raw, s, problems) for s in SECTIONS}
    grid = checked_grid(mapping(raw, "grid", problems), problems)
    variants = checked_variants(mapping(raw, "variants", problems), problems)
    search = raw.get("search")
    if search is not None:
        problems += space.check_block(search, base)
    sweeps = sweep_blocks.parse(raw, grid, variants, problems)
    grid = {**grid, **sweeps.grid}
    if problem := size_problem(grid, variants, seeds):  # counted, never expanded
        raise SpecError(dedupe(problems + [problem]))
    runs, run_problems = expand(str(experiment), seeds, base, grid, variants, sweeps.linked)
    problems = dedupe(problems + run_problems)
    if problems:
        raise SpecError(problems)
    axes = [str(k) for k in grid]
    return Spec(experiment, seeds, raw, runs, axes, [str(v) for v in variants], search, base, sweeps, grid)


def checked_grid(grid: dict, problems: list[str]) -> dict:
    """The grid's valid axes; a problem for each other one (dropped, so the rest are expanded and checked)."""
    for key, values in list(grid.items()):
        problem = key_problem(str(key), "grid")
        if not isinstance(values, list) or not values:
            problem = problem or f"grid.{cut(key)} = {brief(values)} must be a non-empty list of values"
        elif repeats(values):
            problem = problem or (f"grid.{cut(key)} = {brief(values)} lists a value twice: each value must "
                                  "appear once (the same value twice would be the same runs)")
        if problem:
            problems.append(problem)
            del grid[key]
    return grid


def checked_variants(variants: dict, problems: list[str]) -> dict:
    """The variants, each a mapping of valid dotted keys; a problem for each name or key that is not."""
    for name, overrides in list(variants.items()):
        if not isinstance(name, str) or not NAME.fullmatch(name):
            problems.append(f"variant name {brief(name)} must be 1 to {NAME_MAX_CHARS} letters, digits, '-' and '_'")
        if overrides is not None and not isinstance(overrides, dict):
            problems.append(f"variants.{cut(name)} must be a mapping of dotted keys to values (or {{}}), "
                            f"not {brief(overrides)}")
            del variants[name]
            continue
        for key in list(overrides or {}):
            if problem := key_problem(str(key), f"variants.{cut(name)}"):
                problems.append(problem)
                del overrides[key]
    return variants


def size_problem(grid: dict, variants: dict, seeds: list) -> str | None:
    """Why the spec names too many runs to be one experiment (None when it does not)."""
    points = math.prod(len(v) for v in grid.values())
    runs = max(1, len(variants)) * points * len(seeds)
    if runs <= LIMITS["runs"]:
        return None
    widest = max(grid, key=lambda k: len(grid[k]), default=None)
    split = (f"e.g. one spec per value of grid.{cut(widest)}, with experiment names of their own" if widest
             else "e.g. a few variants per spec, with experiment names of their own")
    return (f"the spec expands to {runs:,} runs ({max(1, len(variants)):,} variant(s) x {points:,} grid point(s) x "
            f"{len(seeds):,} seed(s)), more than the {LIMITS['runs']:,} one experiment may hold: split it into "
            f"several specs ({split}), or let a search: block sample the space instead")


def section(raw: dict, name: str, problems: list[str]) -> dict[str, Any]:
    value = mapping(raw, name, problems)
    fields = SECTIONS[name]
    for key in value:
        if key not in fields:
            problems.append(f"unknown key {name}.{cut(key)}{choices_hint(key, fields, 'valid keys')}")
    return {k: v for k, v in value.items() if k in fields}


def mapping(raw: dict, name: str, problems: list[str]) -> dict:
    """A top-level entry that must be a mapping. Only null (or no entry) means empty: false, 0, '' and []
    are refused, as a typo that silently gave every default (600 steps) would cost a whole run."""
    value = raw.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{name} = {brief(value)} must be a mapping of keys to values, e.g. {name}: "
                        f"{MAPPING_EXAMPLES.get(name, '{}')} (or null, or no {name} entry, for "
                        f"{'its defaults' if name in SECTIONS else 'none'})")
        return {}
    return value


def set_dotted(tree: dict, key: str, value: Any) -> None:
    section_name, field, *option = key.split(".")
    target = tree.setdefault(section_name, {})
    if option:  # an option of a component: promote a bare name to {name: ...}
        current = target.get(field, SECTIONS[section_name][field].default)
        current = {"name": current} if isinstance(current, str) else dict(current or {})
        current[option[0]] = value
        target[field] = current
    else:
        target[field] = value


def points(grid: dict, variants: dict, linked: dict | None = None) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(variant label, axes, overrides) for every variant x grid point, in spec order. `linked`: keys
    set together with an axis's value (scale's paired sizes), shown in the label after it."""
    named = list(variants.items()) or [(None, {})]
    keys = list(grid)
    short = {k: k.split(".", 1)[1] for k in keys}
    if len(set(short.values())) < len(keys):
        short = {k: k for k in keys}
    out = []
    for name, overrides in named:
        for values in itertools.product(*(grid[k] for k in keys)):
            axes = dict(zip(keys, values))
            parts = [name] if name else []
            for k, v in axes.items():
                with_it = sweep_blocks.linked_overrides(linked or {}, {k: v})
                parts += [f"{short[k]}={label(v)}"] + [f"{key.split('.', 1)[1]}={label(x)}" for key, x in with_it.items()]
            point = {**(overrides or {}), **sweep_blocks.linked_overrides(linked or {}, axes), **axes}
            out.append((", ".join(parts) or "baseline", axes, point))
    return out


def expand(experiment: str, seeds: list[int], base: dict, grid: dict, variants: dict, linked: dict | None = None):
    runs, made_by = [], {}
    where: dict[str, list[str]] = {}  # a problem -> the variants that have it: one line for them all
    for variant, axes, overrides in points(grid, variants, linked):
        tree = copy.deepcopy(base)
        for key, value in overrides.items():
            set_dotted(tree, key, value)
        resolved, found = resolve(tree)
        for p in found:
            where.setdefault(p, []).append(variant)
        if found:
            continue
        for seed in seeds:
            run = RunSpec(experiment, variant, axes, seed, **resolved)
            run.run_id = run_id(run)
            if run.run_id in made_by:  # two names for one run: its results would answer to both
                if seed == seeds[0]:
                    where.setdefault(f"{made_by[run.run_id]} and {variant} are the same run (every setting "
                                     "equal): make them differ, or drop one", [])
                continue
            made_by[run.run_id] = variant
            runs.append(run)
    # Seed outer: every variant's seed 0 first, so a full single-seed comparison exists early.
    runs.sort(key=lambda r: seeds.index(r.seed))
    return runs, [f"{p} (in {', '.join(names)})" if names and (grid or variants) else p for p, names in where.items()]


def resolve(tree: dict) -> tuple[dict[str, Any], list[str]]:
    """Defaults + preset + explicit fields, each value checked; components checked by their registry."""
    load_all()  # every family's variants, tokenizers included
    problems: list[str] = []
    resolved = section_values(tree, problems)
    train, model, data = resolved["train"], resolved["model"], resolved["data"]
    if is_number(train["lr"]) and train["min_lr"] is None:
        train["min_lr"] = 0.1 * train["lr"]
    if (all(TRAIN[k].valid(train[k]) for k in ("lr", "min_lr", "schedule")) and train["schedule"] != "constant"
            and train["min_lr"] > train["lr"]):
        problems.append(f"train.min_lr = {train['min_lr']} is above train.lr = {train['lr']}: the {train['schedule']} "
                        "schedule decays from lr to min_lr, so min_lr must be at most lr")
    resolve_budget(tree.get("train", {}), train, problems)
    if train["checkpoint_every"] is None:
        train["checkpoint_every"] = train["eval_every"]
    sizes = ("d_model", "n_layers", "n_heads", "context_length", "dropout")
    dims = {k: model[k] for k in sizes} if all(MODEL[k].valid(model[k]) for k in sizes) else None
    if dims and dims["d_model"] % dims["n_heads"]:
        problems.append(f"model.d_model = {dims['d_model']} must be divisible by model.n_heads = {dims['n_heads']}")
        dims = None  # cross-field checks of the components need sizes that fit
    attention_ok = MODEL["attention"].valid(model["attention"]) and not FAMILIES["attention"].check(model["attention"])
    for field in COMPONENT_FIELDS:
        if MODEL[field].valid(model[field]):  # a positional encoding sees the attention's head size
            field_dims = with_head_size(dims, model["attention"]) if dims and attention_ok else dims
            problems += FAMILIES[field].check(model[field], f"model.{field}", field_dims)
    if DATA["tokenizer"].valid(data["tokenizer"]):
        problems += FAMILIES["tokenizer"].check(data["tokenizer"], "data.tokenizer")
    if not problems:
        for field in COMPONENT_FIELDS:
            model[field] = FAMILIES[field].canonical(model[field])
        data["tokenizer"] = FAMILIES["tokenizer"].canonical(data["tokenizer"])
        resolved["train"] = TrainSettings(**train)
    return resolved, problems


def resolve_budget(given: dict, train: dict, problems: list[str]) -> None:
    """train.steps is shorthand for budget {steps: N}: a steps budget becomes train.steps (both forms
    give one run id) and a fractional warm-up its steps. Any other budget leaves steps and the warm-up
    to each run, once its data and model size are known (experiments/budget.py, at bind_data)."""
    budget, steps, warmup = train["budget"], train["steps"], train["warmup"]
    if not (TRAIN["budget"].valid(budget) and TRAIN["warmup"].valid(warmup) and TRAIN["steps"].valid(steps)):
        return
    if budget is not None and "steps" in given:
        problems.append(f"train.steps = {given['steps']!r} and train.budget = {budget!r} both say how long to "
                        "train: give one (train.steps is shorthand for budget: {steps: N})")
    elif budget is not None and "steps" not in budget:
        train["steps"] = None  # derived per run
    else:
        train["steps"] = steps = budget["steps"] if budget else steps
        train["budget"] = None
        if problem := warmup_too_long(warmup, steps, ""):
            problems.append(problem)
        train["warmup"] = warmup_steps(warmup, steps)


def section_values(tree: dict, problems: list[str]) -> dict[str, dict[str, Any]]:
    """Every section's every key: its default, the preset's value, then the spec's; each checked."""
    model_given = dict(tree.get("model", {}))
    preset = model_given.pop("preset", None)
    start: dict[str, Any] = {}
    if preset is not None:
        if not isinstance(preset, str) or preset not in PRESETS:
            problems.append(f"model.preset = {brief(preset)} is not a preset{choices_hint(preset, PRESETS, 'presets')}"
                            f"{bool_hint(preset)}")
        else:
            start = dict(PRESETS[preset])
    resolved = {}
    for name, fields in SECTIONS.items():
        values = {k: copy.deepcopy(f.default) for k, f in fields.items() if k != "preset"}
        values |= (start | model_given) if name == "model" else tree.get(name, {})
        problems += [p for key, value in values.items() if (p := fields[key].problem(value, f"{name}.{key}"))]
        resolved[name] = values
    return resolved


def run_id(run: RunSpec) -> str:
    canonical = json.dumps(run.identity(), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def dedupe(problems: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for p in problems:
        seen.setdefault(p, None)
    return list(seen)


__all__ = ["Spec", "RunSpec", "load_spec", "parse_spec", "read_yaml", "SpecError"]
