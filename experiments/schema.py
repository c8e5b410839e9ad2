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
import re
from typing import Any, Literal

from registry import close_matches, type_problem

COMPONENT_FIELDS = ("positional", "attention", "norm", "block", "feedforward", "head")
Component = str | dict  # a registered name, or {name: ..., option: ...}; the family's registry checks both


def is_int(value: Any) -> bool:
    return type_problem(value, int) is None


def is_number(value: Any) -> bool:
    return type_problem(value, float) is None


@dataclasses.dataclass(frozen=True)
class Range:
    """Where a number may lie: from `low` to `high` (None: unbounded), each end closed unless open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def describe(self, noun: str) -> str:
        """'a positive integer', 'a number >= 0', 'a number in (0, 0.5]'."""
        article = "an" if noun[0] in "aeiou" else "a"
        if self.high is None:
            if self.low == 0 and self.low_open:
                return f"a positive {noun}"
            return f"{article} {noun} {'>' if self.low_open else '>='} {self.low:g}"
        return (f"{article} {noun} in {'(' if self.low_open else '['}{self.low:g}, "
                f"{self.high:g}{')' if self.high_open else ']'}")


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

    def valid(self, value: Any) -> bool:
        if type_problem(value, self.type) is not None:
            return False
        if value is None:
            return True
        items = value if isinstance(value, list) else [value]
        return ((self.length is None or len(items) == self.length)
                and (self.range is None or all(v in self.range for v in items))
                and (self.pattern is None or re.fullmatch(self.pattern, value) is not None))

    def problem(self, value: Any, path: str) -> str | None:
        """'<path> = <value> must be <rule>', or None when the value is valid."""
        return None if self.valid(value) else f"{path} = {value!r} must be {self.describe()}"

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


def positive_int(default: int, doc: str) -> Field:
    return Field(default, int, doc, Range(0, low_open=True))


def one_of(default: str, doc: str, *choices: str) -> Field:
    return Field(default, Literal[choices], doc)


def component(family: str, default: str, doc: str) -> Field:
    # Names and options are checked by the family's registry, not here.
    return Field(default, Component, doc, rule=f"a registered {family} name or {{name: ..., option: ...}}")


AT_LEAST_0 = Range(0)

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

TRAIN = {
    "steps": positive_int(600, "optimizer steps"),
    "batch_size": positive_int(32, "sequences per micro-batch"),
    "grad_accum": positive_int(1, "micro-batches per optimizer step"),
    "lr": Field(1e-3, float, "peak learning rate", Range(0, low_open=True)),
    "min_lr": Field(None, float | None, "learning rate at the end of the schedule", AT_LEAST_0,
                    rule="a number >= 0 (default 0.1 * lr)"),
    "warmup": Field(50, int, "linear warm-up steps", AT_LEAST_0),
    "schedule": one_of("cosine", "learning rate after warm-up", "cosine", "constant", "linear"),
    "weight_decay": Field(0.1, float, "AdamW weight decay, on weights with >= 2 dimensions only", AT_LEAST_0),
    "betas": Field([0.9, 0.95], list[float], "AdamW betas", Range(0, 1, high_open=True), length=2,
                   rule="two numbers in [0, 1)"),
    "grad_clip": Field(1.0, float, "gradient norm clip", AT_LEAST_0, rule="a number >= 0 (0 = off)"),
    "eval_every": positive_int(100, "steps between evaluations (and the last step)"),
    "eval_batches": positive_int(20, "batches per evaluation (fixed per seed)"),
    "checkpoint_every": Field(None, int | None, "steps between checkpoints", AT_LEAST_0,
                              rule="an integer >= 0 (default eval_every; 0 = only at the end)"),
    "precision": one_of("auto", "fp32, bf16 autocast, or auto (bf16 where the device runs it natively and faster)",
                        "auto", "fp32", "bf16"),
    "compile": Field(False, bool, "torch.compile the model"),
    "device": Field("auto", str, "where to train (auto = CUDA > MPS > CPU)", pattern=r"auto|cpu|mps|cuda(:\d+)?",
                    rule="auto, cpu, cuda, cuda:N or mps"),
}

SAMPLE = {
    "prompt": Field(None, str | None, "prompt for the sample written to samples.txt",
                    rule="a string (default: the first 16 tokens of the validation text)"),
    "tokens": Field(200, int, "tokens to sample at the end of a run", AT_LEAST_0),
    "temperature": Field(0.8, float, "sampling temperature", AT_LEAST_0, rule="a number >= 0 (0 = greedy)"),
    "top_k": Field(200, int | None, "sample among the k most likely tokens", Range(0, low_open=True)),
}

SECTIONS: dict[str, dict[str, Field]] = {"data": DATA, "model": MODEL, "train": TRAIN, "sample": SAMPLE}


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
        return (f"{where} key {key!r} does not exist: it must start with one of "
                f"{', '.join(SECTIONS)}{close_matches(parts[0], list(SECTIONS))}")
    fields = SECTIONS[parts[0]]
    if len(parts) < 2 or parts[1] not in fields:
        hint = close_matches(parts[1], list(fields)) if len(parts) > 1 else ""
        valid = ", ".join(f"{parts[0]}.{f}" for f in fields)
        return f"{where} key {key!r} does not exist{hint or ' —'} valid: {valid}"
    if len(parts) > 3 or (len(parts) == 3 and not is_component(parts[0], parts[1])):
        return f"{where} key {key!r} does not exist: only component fields take a third part (their options)"
    return None


def is_component(section: str, field: str) -> bool:
    return (section == "model" and field in COMPONENT_FIELDS) or (section, field) == ("data", "tokenizer")


def label(value: Any) -> str:
    """How a value reads in a variant name or a table: 'rope(base=500)' for a component with options."""
    if isinstance(value, dict):
        name = value.get("name", "")
        return name + "(" + ",".join(f"{k}={v}" for k, v in value.items() if k != "name") + ")"
    return str(value)
