"""The one schema of a spec: every key of every section, with its default, type, range and meaning.

Each key is written once, in the tables below (README.md's tables follow them). What reads a spec
derives from them: spec.py's defaults and checks, the search space's checks of candidate values
(experiments/search/space.py), and the typed settings a run carries, `ModelConfig` (the model
section plus the data's vocabulary size) and `TrainSettings` (the train section).
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import math
import re
from typing import Any, Callable, Literal

from registry import FAMILIES, Range, bool_hint, brief, choices_hint, close_matches, cut, type_problem

COMPONENT_FIELDS = ("positional", "attention", "norm", "block", "feedforward", "head")
Component = str | dict  # a registered name, or {name: ..., option: ...}; the family's registry checks both


def is_int(value: Any) -> bool:
    return type_problem(value, int) is None


def is_number(value: Any) -> bool:
    return type_problem(value, float) is None


@dataclasses.dataclass(frozen=True)
class Field:
    """One spec key: its default, what it must be, and what it means."""

    default: Any
    type: Any                    # what registry.type_problem checks: int, float, bool, str, Literal, X | None, list[X]
    doc: str
    range: Range | None = None   # for a number, or each number of a list
    pattern: str | None = None   # a string's whole value must match it
    length: int | None = None    # a list's length
    rule: str = ""               # how a valid value reads in messages; derived from type and range when empty
    check: Callable[[Any], str | None] | None = None  # a further rule: why a typed value is wrong, or None
    family: str | None = None    # a component's registry: its names are listed when the value is not one

    def valid(self, value: Any) -> bool:
        if type_problem(value, self.type) is not None:
            return False
        if value is None:
            return True
        items = value if isinstance(value, list) else [value]
        return ((self.length is None or len(items) == self.length)
                and (self.range is None or all(v in self.range for v in items))
                and (self.pattern is None or re.fullmatch(self.pattern, value) is not None)
                and (self.check is None or self.check(value) is None))

    def problem(self, value: Any, path: str) -> str | None:
        """'<path> = <value> must be <rule>', or None when the value is valid."""
        if self.valid(value):
            return None
        if any(isinstance(v, float) and not math.isfinite(v) for v in (value if isinstance(value, list) else [value])):
            return f"{path} = {brief(value)} is not finite: it must be {self.describe()}"
        why = self.check(value) if self.check and type_problem(value, self.type) is None else None
        names = FAMILIES[self.family].names() if self.family else []
        return (f"{path} = {brief(value)} {why + '; it ' if why else ''}must be {self.describe()}"
                f"{choices_hint(value, names, 'registered') if names else ''}{bool_hint(value, self.type)}")

    def describe(self) -> str:
        return self.rule or describe_type(self.type, self.range)


def describe_type(annotation: Any, range_: Range | None = None) -> str:
    if getattr(annotation, "__origin__", None) is Literal:
        return "one of " + ", ".join(map(str, annotation.__args__))
    if type(None) in getattr(annotation, "__args__", ()):
        inner = [a for a in annotation.__args__ if a is not type(None)]
        return describe_type(inner[0], range_) + " or null"
    noun = {int: "integer", float: "number"}.get(annotation)
    if noun:
        return range_.describe(noun) if range_ else f"{'an' if noun == 'integer' else 'a'} {noun}"
    return {bool: "true or false", str: "a string"}.get(annotation, str(annotation))


MAX_INT = 2**31 - 1  # every count and size of a spec: larger ones are never meant, and overflow on the way


def positive_int(default: int, doc: str) -> Field:
    return Field(default, int, doc, Range(0, MAX_INT, low_open=True))


def one_of(default: str, doc: str, *choices: str) -> Field:
    return Field(default, Literal[choices], doc)


def component(family: str, default: str, doc: str) -> Field:
    # Names and options are checked by the family's registry, not here.
    return Field(default, Component, doc, rule=f"a registered {family} name or {{name: ..., option: ...}}", family=family)


AT_LEAST_0 = Range(0)
COUNT = Range(0, MAX_INT)  # an integer >= 0
NAME_MAX_CHARS = 100  # an experiment's (and a variant's) name: a folder name, and a column of every table

TOP = {
    "experiment": Field(None, str, "names the folder results/<experiment>/",
                        pattern=rf"[A-Za-z0-9_-]{{1,{NAME_MAX_CHARS}}}",
                        rule=f"a name of letters, digits, '-' and '_', at most {NAME_MAX_CHARS} characters long (it "
                        "names the folder results/<experiment>/)"),
    "seeds": Field([0], list[int], "every run is repeated per seed", Range(0, 2**32 - 1),
                   rule="a non-empty list of distinct integers in [0, 2^32 - 1], e.g. [0, 1, 2]"),
}

# -- limits: a spec that asks for more is refused before anything is built ---------------------------
LIMITS = {
    "spec_bytes": 1 << 20,       # the spec file's size
    "spec_values": 100_000,      # values in the spec once YAML aliases are expanded (an alias bomb has billions)
    "runs": 10_000,              # runs a spec expands to: variants x grid points x seeds (or a search's grid)
}

# -- budgets: how long a run trains --------------------------------------------------------------
# train.budget holds exactly one of these; each run derives its own steps from it (experiments/budget.py).
BUDGET = {
    "steps": "optimizer steps (train.steps is shorthand for this)",
    "tokens": "tokens of training text seen",
    "bytes": "bytes of training text seen, at the bytes per token the run's tokenizer measures on the training text",
    "flops": "training FLOPs: tokens seen x the run's FLOPs per token (the dry run's figure)",
    "tokens_per_param": "tokens seen per parameter of the run's model (Hoffmann et al. 2022: about 20)",
}
BUDGET_RULE = "a mapping with exactly one of " + ", ".join(BUDGET) + ": a positive number, e.g. {flops: 2.0e+12}"


def budget_problem(budget: dict) -> str | None:
    """Why a train.budget mapping is not one budget, or None."""
    unknown = [k for k in budget if k not in BUDGET]
    if unknown:
        return f"names {', '.join(map(repr, unknown))}, not a budget{close_matches(str(unknown[0]), list(BUDGET))}"
    if len(budget) != 1:
        return f"gives {len(budget)} budgets ({', '.join(budget) or 'none'}); give exactly one"
    (kind, value), = budget.items()
    wanted = int if kind == "steps" else float
    if type_problem(value, wanted) is not None or not math.isfinite(value) or value <= 0:
        return f"has {kind} = {brief(value)}, not a positive {'integer' if kind == 'steps' else 'number'}"
    return None


# The smallest temperature > 0 that samples: logits are divided by it in float32, and below about this a
# logit of a few units overflows to inf (torch.multinomial then fails). 0 (greedy) is their limit.
MIN_TEMPERATURE = 1e-30


def temperature_problem(temperature: float) -> str | None:
    if 0 < temperature < MIN_TEMPERATURE:
        return "is too small to sample with (the logits divided by it overflow float32)"
    return None


def warmup_problem(warmup: float) -> str | None:
    """An integer is steps; a fraction of the run's steps is a number in [0, 1] written with a dot."""
    if isinstance(warmup, float) and warmup > 1:
        return "is neither an integer number of steps nor a fraction in [0, 1]"
    return None

DATA = {
    "corpus": Field("embedded", str, "the text to train on", pattern=r"[\s\S]+",
                    rule="'embedded', 'shakespeare' or a path to a UTF-8 text file"),
    "tokenizer": component("tokenizer", "char", "char | byte | gpt2 (BPE, offline)"),
    "val_fraction": Field(0.1, float, "the last fraction of the text's bytes held out for validation, whatever the tokenizer",
                          Range(0, 0.5, low_open=True)),
    "test_fraction": Field(0.0, float, "the fraction of the bytes just before the validation text held out as a test text",
                           Range(0, 0.5, high_open=True)),
}

MODEL = {
    "preset": Field(None, str | None, "start from a preset's sizes and components (explicit fields override it)",
                    rule="a preset name"),
    "d_model": positive_int(64, "width of the residual stream"),
    "n_layers": positive_int(2, "number of decoder blocks"),
    "n_heads": positive_int(4, "attention heads (d_model must divide by it)"),
    "context_length": positive_int(64, "tokens of context"),
    "positional": component("positional", "learned", "positional encoding"),
    "attention": component("attention", "multi_head", "attention sub-layer"),
    "norm": component("norm", "layernorm", "normalisation layer"),
    "block": component("block", "pre", "where the norms sit (post | pre | sandwich | parallel)"),
    "feedforward": component("feedforward", "gelu_mlp", "the MLP sub-layer"),
    "head": component("head", "tied", "output head: tied to the token embedding or not"),
    "dropout": Field(0.0, float, "dropout on embeddings, attention weights and sub-layer outputs",
                     Range(0, 1, high_open=True)),
    "init": one_of("gpt2", "weight init: gpt2 = N(0, 0.02), residual projections / sqrt(2 n_layers); "
                   "torch = PyTorch's", "gpt2", "torch"),
}

EVAL_ROWS = 32  # windows per periodic evaluation batch: every batch size and accumulation scores the same ones
TRAIN = {
    "steps": positive_int(600, "optimizer steps (shorthand for budget: {steps: N})"),
    "budget": Field(None, dict | None, "how long each run trains: one of " + ", ".join(BUDGET) + "; each run "
                    "derives its own steps from it", check=budget_problem,
                    rule=BUDGET_RULE),
    "batch_size": positive_int(32, "sequences per micro-batch"),
    "grad_accum": positive_int(1, "micro-batches per optimizer step"),
    "lr": Field(1e-3, float, "peak learning rate", Range(0, low_open=True)),
    "min_lr": Field(None, float | None, "learning rate at the end of a cosine or linear schedule (the last step's)", AT_LEAST_0,
                    rule="a number >= 0 (default 0.1 * lr)"),
    "warmup": Field(50, float, "linear warm-up: an integer number of steps, or a fraction of the run's steps "
                    "(0.05)", AT_LEAST_0, check=warmup_problem,
                    rule="an integer >= 0 (steps) or a fraction in [0, 1] of the run's steps"),
    "schedule": one_of("cosine", "learning rate after warm-up: from lr down to min_lr at the last step", "cosine", "constant", "linear"),
    "weight_decay": Field(0.1, float, "AdamW weight decay, on weights with >= 2 dimensions only", AT_LEAST_0),
    "betas": Field([0.9, 0.95], list[float], "AdamW betas", Range(0, 1, high_open=True), length=2,
                   rule="two numbers in [0, 1)"),
    "grad_clip": Field(1.0, float, "gradient norm clip", AT_LEAST_0, rule="a number >= 0 (0 = off)"),
    "eval_every": positive_int(100, "steps between evaluations (and the last step)"),
    "eval_batches": positive_int(20, f"batches of {EVAL_ROWS} sampled windows per periodic evaluation (fixed per seed, "
                                     "the same whatever the batch size)"),
    "checkpoint_every": Field(None, int | None, "steps between checkpoints", COUNT,
                              rule="an integer >= 0 (default eval_every; 0 = only at the end)"),
    "precision": one_of("auto", "fp32, bf16 autocast, or auto (bf16 where the device runs it natively and faster)",
                        "auto", "fp32", "bf16"),
    "compile": Field(False, bool, "torch.compile the model (a fresh dynamo per run; summary.json says if it ran compiled)"),
    "device": Field("auto", str, "where to train (auto = CUDA > MPS > CPU)", pattern=r"auto|cpu|mps|cuda(:\d+)?",
                    rule="auto, cpu, cuda, cuda:N or mps"),
    "tensorboard": Field(True, bool, "write TensorBoard event files (curves, HParams) into the run folder"),
}

SAMPLE = {
    "prompt": Field(None, str | None, "prompt for the sample written to samples.txt",
                    rule="a string (default: the first 16 tokens of the validation text)"),
    "tokens": Field(200, int, "tokens to sample at the end of a run", COUNT),
    "temperature": Field(0.8, float, "sampling temperature", AT_LEAST_0, check=temperature_problem,
                         rule=f"0 (greedy) or a number >= {MIN_TEMPERATURE:g}"),
    "top_k": Field(200, int | None, "sample among the k most likely tokens", Range(0, MAX_INT, low_open=True)),
}

SECTIONS: dict[str, dict[str, Field]] = {"data": DATA, "model": MODEL, "train": TRAIN, "sample": SAMPLE}

# -- the tune: and scale: blocks (experiments/sweeps.py) ------------------------------------------
TUNE_MIN_VALUES = 2      # tune: {<one spec key>: [at least 2 values]}
SCALE_FIELDS = ("model.d_model", "model.n_layers", "model.n_heads")  # scale: {<size key>: [values], ...}
SCALE_MIN_SIZES = 3      # L(C) = E + A C^-alpha has 3 parameters


# -- typed settings, derived from the tables -----------------------------------------------------
def settings_fields(table: dict[str, Field], first: tuple = ()) -> type:
    """A frozen, keyword-only dataclass with one attribute per key of `table`, typed and defaulted by it."""
    fields = list(first)
    for key, f in table.items():
        default = f.default
        if isinstance(default, (list, dict)):  # each instance gets its own copy
            default = dataclasses.field(default_factory=functools.partial(copy.deepcopy, default))
        fields.append((key, f.type, default))
    return dataclasses.make_dataclass("Fields", fields, frozen=True, kw_only=True, namespace={"__module__": __name__})


class ModelConfig(settings_fields({k: f for k, f in MODEL.items() if k != "preset"}, first=(("vocab_size", int),))):
    """Everything that defines a model: the model section's keys (preset expanded; component fields
    a name or {name: ..., option: ...}) and the data's vocabulary size."""

    def dims(self) -> dict[str, Any]:
        """The shared sizes every variant may ask for."""
        return dict(vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
                    n_heads=self.n_heads, context_length=self.context_length, dropout=self.dropout)


class TrainSettings(settings_fields(TRAIN)):
    """The train section of a run, resolved: one attribute per TRAIN key (min_lr and checkpoint_every filled in)."""


# -- keys ----------------------------------------------------------------------------------------
def key_problem(key: str, where: str) -> str | None:
    """Why a dotted override key does not name a spec field (or a component's option); None when it does."""
    parts = key.split(".")
    if parts[0] not in SECTIONS:
        return (f"{where} key {brief(key)} does not exist: it must start with one of "
                f"{', '.join(SECTIONS)}{close_matches(parts[0], list(SECTIONS))}")
    fields = SECTIONS[parts[0]]
    if len(parts) < 2 or parts[1] not in fields:
        hint = close_matches(parts[1], list(fields)) if len(parts) > 1 else ""
        valid = ", ".join(f"{cut(parts[0])}.{f}" for f in fields)
        return f"{where} key {brief(key)} does not exist{hint or ' —'} valid: {valid}"
    if len(parts) > 3 or (len(parts) == 3 and not is_component(parts[0], parts[1])):
        return f"{where} key {brief(key)} does not exist: only component fields take a third part (their options)"
    return None


def is_component(section: str, field: str) -> bool:
    return (section == "model" and field in COMPONENT_FIELDS) or (section, field) == ("data", "tokenizer")


def value_key(value: Any) -> Any:
    """A value as a hashable key under which numbers compare by value (1 and 1.0 are one value) but
    true is not 1, nor '1' 1: what a list of candidate values (grid, tune, search) must not repeat.
    Run ids keep hashing the value as written."""
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", value)
    if isinstance(value, dict):
        return ("mapping", frozenset((value_key(k), value_key(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("list", tuple(map(value_key, value)))
    return (type(value).__name__, value if isinstance(value, (str, type(None))) else repr(value))  # a date, a !!set


def repeats(values: list) -> bool:
    """Whether a list of candidate values holds one value twice (value_key's sense)."""
    return len({value_key(v) for v in values}) < len(values)


def label(value: Any) -> str:
    """How a value reads in a variant name or a table: 'rope(base=500)' for a component with options."""
    if isinstance(value, dict):
        name = value.get("name", "")
        options = ",".join(f"{k}={v}" for k, v in value.items() if k != "name")
        return f"{name}({options})" if name else options  # a component, or a plain mapping (a budget)
    return str(value)
