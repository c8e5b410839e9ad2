"""Experiment specs: load YAML, validate everything at once, expand variants x grid x seeds into runs.

A spec is plain data (``yaml.safe_load`` only), checked against experiments/schema.py (every key's
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
import re
from pathlib import Path
from typing import Any

import yaml

from components.model import PRESETS
from experiments.schema import (COMPONENT_FIELDS, DATA, MODEL, SECTIONS, TrainSettings, is_int, is_number,
                                key_problem, label)
from experiments.search import space
from registry import FAMILIES, SpecError, choices_hint, load_all

TOP_LEVEL = ("experiment", "seeds", "data", "model", "train", "sample", "grid", "variants", "search")
# Execution details that do not change what a run computes are left out of its id.
NOT_IN_RUN_ID = {"train": ("device", "compile", "checkpoint_every")}
NAME = re.compile(r"[A-Za-z0-9_-]+")


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
def read_yaml(path: str | Path) -> Any:
    """Parse a spec file with safe_load; every failure becomes a one-paragraph SpecError."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {str(path)!r} {'is a folder' if path.is_dir() else 'does not exist'}")
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        raw = yaml.safe_load(text)
    except yaml.constructor.ConstructorError as err:
        raise SpecError(f"{path} {where(err)}: the tag {err.problem.split()[-1] if err.problem else ''} is not "
                        "allowed; a spec is plain data (mappings, lists, strings, numbers), and tags such as "
                        "!!python/... are refused") from None
    except yaml.YAMLError as err:
        raise SpecError(f"{path} is not valid YAML {where(err)}: {getattr(err, 'problem', None) or err}") from None
    if raw is None:
        raise SpecError(f"{path} is empty: a spec needs at least 'experiment' (see specs/quickstart.yaml)")
    return raw


def where(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    return f"(line {mark.line + 1}, column {mark.column + 1})" if mark else ""


def load_spec(path: str | Path) -> Spec:
    return parse_spec(read_yaml(path))


# -- validation and expansion --------------------------------------------------------------------
def parse_spec(raw: Any) -> Spec:
    """Validate a parsed spec and expand it; raise one SpecError listing every problem."""
    if not isinstance(raw, dict):
        raise SpecError(f"a spec must be a mapping of sections ({', '.join(TOP_LEVEL)}), not {type(raw).__name__}")
    problems: list[str] = []
    for key in raw:
        if key not in TOP_LEVEL:
            problems.append(f"unknown section {key!r}{choices_hint(key, TOP_LEVEL, 'valid sections')}")
    experiment = raw.get("experiment")
    if not isinstance(experiment, str) or not NAME.fullmatch(experiment) or experiment in (".", ".."):
        problems.append(f"experiment = {experiment!r} must be a name of letters, digits, '-' and '_' "
                        "(it names the folder results/<experiment>/)")
    seeds = raw.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(is_int(s) for s in seeds)) or len(set(map(str, seeds))) != len(seeds):
        problems.append(f"seeds = {seeds!r} must be a non-empty list of distinct integers, e.g. [0, 1, 2]")
        seeds = [0]
    base = {s: section(raw, s, problems) for s in SECTIONS}
    grid = mapping(raw, "grid", problems)
    variants = mapping(raw, "variants", problems)
    for key, values in list(grid.items()):
        problem = key_problem(str(key), "grid")
        if not isinstance(values, list) or not values:
            problem = problem or f"grid.{key} = {values!r} must be a non-empty list of values"
        if problem:
            problems.append(problem)
            del grid[key]  # expand the rest, so their problems are reported too
    for name, overrides in list(variants.items()):
        if not isinstance(name, str) or not NAME.fullmatch(name):
            problems.append(f"variant name {name!r} must use letters, digits, '-' and '_'")
        if overrides is not None and not isinstance(overrides, dict):
            problems.append(f"variants.{name} must be a mapping of dotted keys to values (or {{}}), not {overrides!r}")
            del variants[name]
            continue
        for key in list(overrides or {}):
            if problem := key_problem(str(key), f"variants.{name}"):
                problems.append(problem)
                del overrides[key]
    search = raw.get("search")
    if search is not None:
        problems += space.check_block(search, base)

    runs, run_problems = expand(str(experiment), seeds, base, grid, variants)
    problems = dedupe(problems + run_problems)
    if problems:
        raise SpecError(problems)
    axes = [str(k) for k in grid]
    return Spec(experiment, seeds, raw, runs, axes, [str(v) for v in variants], search, base)


def section(raw: dict, name: str, problems: list[str]) -> dict[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        problems.append(f"{name} must be a mapping of keys to values, not {value!r}")
        return {}
    fields = SECTIONS[name]
    for key in value:
        if key not in fields:
            problems.append(f"unknown key {name}.{key}{choices_hint(key, fields, 'valid keys')}")
    return {k: v for k, v in value.items() if k in fields}


def mapping(raw: dict, name: str, problems: list[str]) -> dict:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        problems.append(f"{name} must be a mapping, not {value!r}")
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


def points(grid: dict, variants: dict) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(variant label, axes, overrides) for every variant x grid point, in spec order."""
    named = list(variants.items()) or [(None, {})]
    keys = list(grid)
    short = {k: k.split(".", 1)[1] for k in keys}
    if len(set(short.values())) < len(keys):
        short = {k: k for k in keys}
    out = []
    for name, overrides in named:
        for values in itertools.product(*(grid[k] for k in keys)):
            axes = dict(zip(keys, values))
            parts = ([name] if name else []) + [f"{short[k]}={label(v)}" for k, v in axes.items()]
            out.append((", ".join(parts) or "baseline", axes, {**(overrides or {}), **axes}))
    return out


def expand(experiment: str, seeds: list[int], base: dict, grid: dict, variants: dict):
    runs, problems = [], []
    for variant, axes, overrides in points(grid, variants):
        tree = copy.deepcopy(base)
        for key, value in overrides.items():
            set_dotted(tree, key, value)
        resolved, found = resolve(tree)
        problems += [f"{p} (in {variant})" if (grid or variants) else p for p in found]
        if found:
            continue
        for seed in seeds:
            run = RunSpec(experiment, variant, axes, seed, **resolved)
            run.run_id = run_id(run)
            runs.append(run)
    # Seed outer: every variant's seed 0 first, so a full single-seed comparison exists early.
    runs.sort(key=lambda r: seeds.index(r.seed))
    return runs, problems


def resolve(tree: dict) -> tuple[dict[str, Any], list[str]]:
    """Defaults + preset + explicit fields, each value checked; components checked by their registry."""
    load_all()  # every family's variants, tokenizers included
    problems: list[str] = []
    resolved = section_values(tree, problems)
    train, model, data = resolved["train"], resolved["model"], resolved["data"]
    if is_number(train["lr"]) and train["min_lr"] is None:
        train["min_lr"] = 0.1 * train["lr"]
    if is_int(train["warmup"]) and is_int(train["steps"]) and train["warmup"] > train["steps"]:
        problems.append(f"train.warmup = {train['warmup']} is longer than train.steps = {train['steps']}")
    if train["checkpoint_every"] is None:
        train["checkpoint_every"] = train["eval_every"]
    sizes = ("d_model", "n_layers", "n_heads", "context_length", "dropout")
    dims = {k: model[k] for k in sizes} if all(MODEL[k].valid(model[k]) for k in sizes) else None
    if dims and dims["d_model"] % dims["n_heads"]:
        problems.append(f"model.d_model = {dims['d_model']} must be divisible by model.n_heads = {dims['n_heads']}")
        dims = None  # cross-field checks of the components need sizes that fit
    for field in COMPONENT_FIELDS:
        if MODEL[field].valid(model[field]):
            problems += FAMILIES[field].check(model[field], f"model.{field}", dims)
    if DATA["tokenizer"].valid(data["tokenizer"]):
        problems += FAMILIES["tokenizer"].check(data["tokenizer"], "data.tokenizer")
    if not problems:
        for field in COMPONENT_FIELDS:
            model[field] = FAMILIES[field].canonical(model[field])
        data["tokenizer"] = FAMILIES["tokenizer"].canonical(data["tokenizer"])
        resolved["train"] = TrainSettings(**train)
    return resolved, problems


def section_values(tree: dict, problems: list[str]) -> dict[str, dict[str, Any]]:
    """Every section's every key: its default, the preset's value, then the spec's; each checked."""
    model_given = dict(tree.get("model", {}))
    preset = model_given.pop("preset", None)
    start: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            problems.append(f"model.preset = {preset!r} is not a preset{choices_hint(preset, PRESETS, 'presets')}")
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
