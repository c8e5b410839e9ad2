"""Experiment specs: load YAML, validate everything at once, expand variants x grid x seeds into runs.

A spec is plain data (``yaml.safe_load`` only). Every problem in it is collected and reported in
one `SpecError` before anything is built or written. Each expanded run is a `RunSpec` whose id is
a short hash of its canonical resolved form, so the same run always lands in the same folder.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from registry import FAMILIES, SpecError, choices_hint, close_matches, format_problems

COMPONENT_FIELDS = ("positional", "attention", "norm", "block", "feedforward", "head")


@dataclasses.dataclass(frozen=True)
class Field:
    """One spec key: its default, what it must be, and what it means (the README table follows these)."""

    default: Any
    rule: str                                  # what a valid value looks like, for messages and docs
    valid: Callable[[Any], bool]
    doc: str


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive_int(doc: str, default: Any) -> Field:
    return Field(default, "a positive integer", lambda v: is_int(v) and v > 0, doc)


def one_of(doc: str, default: str, *choices: str) -> Field:
    return Field(default, "one of " + ", ".join(choices), lambda v: v in choices, doc)


def component(family: str, default: str, doc: str) -> Field:
    # Names and options are checked by the family's registry, not here.
    return Field(default, f"a registered {family} name or {{name: ..., option: ...}}",
                 lambda v: isinstance(v, (str, dict)), doc)


DATA = {
    "corpus": Field("embedded", "'embedded', 'shakespeare' or a path to a UTF-8 text file",
                    lambda v: isinstance(v, str) and v != "", "the text to train on"),
    "tokenizer": component("tokenizer", "char", "char | byte | gpt2 (BPE, offline)"),
    "val_fraction": Field(0.1, "a number in (0, 0.5]", lambda v: is_number(v) and 0 < v <= 0.5,
                          "the last fraction of the text's bytes held out for validation, whatever the tokenizer"),
    "test_fraction": Field(0.0, "a number in [0, 0.5)", lambda v: is_number(v) and 0 <= v < 0.5,
                           "the fraction of the bytes just before the validation text held out as a test text"),
}

MODEL = {
    "preset": Field(None, "a preset name", lambda v: v is None or isinstance(v, str),
                    "start from a preset's sizes and components (explicit fields override it)"),
    "d_model": positive_int("width of the residual stream", 64),
    "n_layers": positive_int("number of decoder blocks", 2),
    "n_heads": positive_int("attention heads (d_model must divide by it)", 4),
    "context_length": positive_int("tokens of context", 64),
    "positional": component("positional", "learned", "positional encoding"),
    "attention": component("attention", "multi_head", "attention sub-layer"),
    "norm": component("norm", "layernorm", "normalisation layer"),
    "block": component("block", "pre", "where the norms sit (post | pre | sandwich | parallel)"),
    "feedforward": component("feedforward", "gelu_mlp", "the MLP sub-layer"),
    "head": component("head", "tied", "output head: tied to the token embedding or not"),
    "dropout": Field(0.0, "a number in [0, 1)", lambda v: is_number(v) and 0 <= v < 1,
                     "dropout on embeddings, attention weights and sub-layer outputs"),
    "init": one_of("weight init: gpt2 = N(0, 0.02), residual projections / sqrt(2 n_layers); torch = PyTorch's",
                   "gpt2", "gpt2", "torch"),
}

TRAIN = {
    "steps": positive_int("optimizer steps", 600),
    "batch_size": positive_int("sequences per micro-batch", 32),
    "grad_accum": positive_int("micro-batches per optimizer step", 1),
    "lr": Field(1e-3, "a positive number", lambda v: is_number(v) and v > 0, "peak learning rate"),
    "min_lr": Field(None, "a number >= 0 (default 0.1 * lr)", lambda v: v is None or (is_number(v) and v >= 0),
                    "learning rate at the end of the schedule"),
    "warmup": Field(50, "an integer >= 0", lambda v: is_int(v) and v >= 0, "linear warm-up steps"),
    "schedule": one_of("learning rate after warm-up", "cosine", "cosine", "constant", "linear"),
    "weight_decay": Field(0.1, "a number >= 0", lambda v: is_number(v) and v >= 0,
                          "AdamW weight decay, on weights with >= 2 dimensions only"),
    "betas": Field([0.9, 0.95], "two numbers in [0, 1)",
                   lambda v: isinstance(v, list) and len(v) == 2 and all(is_number(b) and 0 <= b < 1 for b in v),
                   "AdamW betas"),
    "grad_clip": Field(1.0, "a number >= 0 (0 = off)", lambda v: is_number(v) and v >= 0, "gradient norm clip"),
    "eval_every": positive_int("steps between evaluations (and the last step)", 100),
    "eval_batches": positive_int("batches per evaluation (fixed per seed)", 20),
    "checkpoint_every": Field(None, "an integer >= 0 (default eval_every; 0 = only at the end)",
                              lambda v: v is None or (is_int(v) and v >= 0), "steps between checkpoints"),
    "precision": one_of("fp32, bf16 autocast, or auto (bf16 on CUDA, fp32 elsewhere)", "auto", "auto", "fp32", "bf16"),
    "compile": Field(False, "true or false", lambda v: isinstance(v, bool), "torch.compile the model"),
    "device": Field("auto", "auto, cpu, cuda, cuda:N or mps",
                    lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None,
                    "where to train (auto = CUDA > MPS > CPU)"),
}

SAMPLE = {
    "prompt": Field(None, "a string (default: the first 16 tokens of the validation text)",
                    lambda v: v is None or isinstance(v, str), "prompt for the sample written to samples.txt"),
    "tokens": Field(200, "an integer >= 0", lambda v: is_int(v) and v >= 0, "tokens to sample at the end of a run"),
    "temperature": Field(0.8, "a number >= 0 (0 = greedy)", lambda v: is_number(v) and v >= 0, "sampling temperature"),
    "top_k": Field(200, "a positive integer or null", lambda v: v is None or (is_int(v) and v > 0),
                   "sample among the k most likely tokens"),
}

SECTIONS: dict[str, dict[str, Field]] = {"data": DATA, "model": MODEL, "train": TRAIN, "sample": SAMPLE}
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
    train: dict[str, Any]
    sample: dict[str, Any]
    corpus_sha256: str = ""           # bound once the corpus is read, so an edited data file is a new run
    run_id: str = ""

    def identity(self) -> dict[str, Any]:
        """What the run computes (the id's input): data (and its content hash), model, train, seed."""
        train = {k: v for k, v in self.train.items() if k not in NOT_IN_RUN_ID["train"]}
        return {"data": self.data, "corpus_sha256": self.corpus_sha256, "model": self.model,
                "train": train, "seed": self.seed}

    def bind_corpus(self, sha256: str) -> None:
        self.corpus_sha256 = sha256
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
        problems = [p for k in overrides if (p := key_problem(str(k), self.base, variant))]
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
        problem = key_problem(str(key), base, "grid")
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
            if problem := key_problem(str(key), base, f"variants.{name}"):
                problems.append(problem)
                del overrides[key]
    search = raw.get("search")
    if search is not None:
        from experiments import search as search_module  # only specs that search need Optuna's side
        problems += search_module.check_block(search, base)

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


def key_problem(key: str, base: dict, where_: str) -> str | None:
    """Whether a dotted override key names a spec field (or a component's option)."""
    parts = key.split(".")
    if parts[0] not in SECTIONS:
        return (f"{where_} key {key!r} does not exist: it must start with one of "
                f"{', '.join(SECTIONS)}{close_matches(parts[0], list(SECTIONS))}")
    fields = SECTIONS[parts[0]]
    if len(parts) < 2 or parts[1] not in fields:
        hint = close_matches(parts[1], list(fields)) if len(parts) > 1 else ""
        return f"{where_} key {key!r} does not exist{hint or ' —'} valid: " + ", ".join(f"{parts[0]}.{f}" for f in fields)
    is_component = parts[0] == "model" and parts[1] in COMPONENT_FIELDS or (parts[0], parts[1]) == ("data", "tokenizer")
    if len(parts) > 3 or (len(parts) == 3 and not is_component):
        return f"{where_} key {key!r} does not exist: only component fields take a third part (their options)"
    return None


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


def label(value: Any) -> str:
    if isinstance(value, dict):
        name = value.get("name", "")
        return name + "(" + ",".join(f"{k}={v}" for k, v in value.items() if k != "name") + ")"
    return str(value)


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


def resolve(tree: dict) -> tuple[dict[str, dict], list[str]]:
    """Defaults + preset + explicit fields, each value checked; components checked by their registry."""
    from components.model import PRESETS
    from registry import load_all

    load_all()  # every family's variants, tokenizers included
    problems: list[str] = []
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
        given = model_given if name == "model" else tree.get(name, {})
        values = {k: f.default for k, f in fields.items() if k != "preset"}
        values.update(start if name == "model" else {})
        values.update(given)
        for key, value in values.items():
            if not fields[key].valid(value):
                problems.append(f"{name}.{key} = {value!r} must be {fields[key].rule}")
        resolved[name] = values
    train, model = resolved["train"], resolved["model"]
    if isinstance(train["lr"], (int, float)) and train["min_lr"] is None:
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
    if DATA["tokenizer"].valid(resolved["data"]["tokenizer"]):
        problems += FAMILIES["tokenizer"].check(resolved["data"]["tokenizer"], "data.tokenizer")
    if not problems:
        for field in COMPONENT_FIELDS:
            model[field] = FAMILIES[field].canonical(model[field])
        resolved["data"]["tokenizer"] = FAMILIES["tokenizer"].canonical(resolved["data"]["tokenizer"])
    return resolved, problems


def run_id(run: RunSpec) -> str:
    canonical = json.dumps(run.identity(), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:10]


def dedupe(problems: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for p in problems:
        seen.setdefault(p, None)
    return list(seen)


__all__ = ["Spec", "RunSpec", "load_spec", "parse_spec", "read_yaml", "SpecError", "format_problems", "SECTIONS"]
