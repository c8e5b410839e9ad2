"""Named, interchangeable parts: one `Registry` per component family.

A variant is a class that registers itself with a decorator right above its definition. Its
constructor takes keyword arguments only:

* required ones (no default) are the *shared sizes* the backbone hands to every variant of the
  family (``d_model``, ``n_heads``, ``context_length`` …);
* ones with a default are the variant's *options*, settable from a spec as
  ``{name: rope, base: 10000}``; their annotations are checked before anything is built.

``python -m registry`` prints the whole catalogue.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import inspect
import math
import reprlib
import types
import typing
from typing import Annotated, Any, Callable, Literal

MESSAGE_VALUE_CHARS = 80  # a value quoted in a message is cut to this many characters


class SpecError(ValueError):
    """A problem with what the user asked for, worded for the user: no traceback needed."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__(format_problems(self.problems))


def format_problems(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems: " + "; ".join(f"({i}) {p}" for i, p in enumerate(problems, 1))


class _Brief(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        # str() of a huge int is slow (and refused past 4,300 digits): say how big it is instead.
        return repr(x) if abs(x) < 10**40 else f"<an integer of {len(f'{x:x}') * 4} bits>"


_BRIEF = _Brief()
_BRIEF.maxlevel, _BRIEF.maxlist, _BRIEF.maxdict, _BRIEF.maxtuple = 3, 8, 8, 8
_BRIEF.maxstring = _BRIEF.maxother = MESSAGE_VALUE_CHARS


def brief(value: Any) -> str:
    """repr(value), cut to ~80 characters, for messages: a value from a spec can be as large as the
    memory holds (a YAML alias bomb's full repr would take gigabytes), so none is quoted whole."""
    text = _BRIEF.repr(value)
    return text if len(text) <= MESSAGE_VALUE_CHARS else text[:MESSAGE_VALUE_CHARS - 3] + "..."


def cut(text: Any) -> str:
    """str(text) cut to ~80 characters: a key or name from a spec, quoted in a message without repr's quotes."""
    text = text if isinstance(text, str) else brief(text)
    return text if len(text) <= MESSAGE_VALUE_CHARS else text[:MESSAGE_VALUE_CHARS - 3] + "..."


@dataclasses.dataclass(frozen=True)
class Range:
    """Where a number may lie: from `low` to `high` (None: unbounded), each end closed unless open.
    Spec fields (experiments/schema.py) and component options (``Annotated[float, Range(0,
    low_open=True)]``) declare theirs with it."""

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
        low, high = (f"{x:g}" if isinstance(x, float) else str(x) for x in (self.low, self.high))
        if self.low == 0 and self.low_open and (self.high is None or noun == "integer" and not self.high_open):
            return f"a positive {noun}" + (f" <= {high}" if self.high is not None else "")
        if self.high is None:
            return f"{article} {noun} {'>' if self.low_open else '>='} {low}"
        return (f"{article} {noun} in {'(' if self.low_open else '['}{low}, "
                f"{high}{')' if self.high_open else ']'}")


def close_matches(word: str, choices: list[str]) -> str:
    """' — did you mean 'x'?' or '' when nothing is close."""
    word = str(word)[:MESSAGE_VALUE_CHARS] if isinstance(word, str) else brief(word)
    found = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" — did you mean '{found[0]}'?" if found else ""


def choices_hint(word: Any, choices: Any, label: str = "valid") -> str:
    """The tail of an "unknown value" message: ' — did you mean 'x'? <label>: a, b, c' (' — <label>: …'
    when nothing is close)."""
    choices = [str(c) for c in choices]
    return f"{close_matches(str(word), choices) or ' —'} {label}: {', '.join(choices)}"


def takes_string(annotation: Any) -> bool:
    """Whether `annotation` (as type_problem reads it) accepts some string."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return takes_string(typing.get_args(annotation)[0])
    if origin is Literal:
        return any(isinstance(c, str) for c in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return any(takes_string(a) for a in typing.get_args(annotation))
    return annotation is str


def bool_hint(value: Any, annotation: Any = str) -> str:
    """A note for a boolean given where a string is wanted: YAML 1.1 reads `experiment: yes` or
    `positional: no` as true and false, which the user never meant. '' for anything else."""
    if isinstance(value, bool) and takes_string(annotation):
        return " (YAML reads yes/no/on/off/true/false as booleans: quote it)"
    return ""


def type_problem(value: Any, annotation: Any) -> str | None:
    """Why `value` does not fit `annotation` (int, float, bool, str, dict, list[X], Literal, unions), or
    None. The one type check of the lab: component options here, spec fields (experiments/schema.py)
    and search ranges use it. A number must be finite: .inf and .nan are never valid. An
    ``Annotated[float, Range(...)]`` checks the range too."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        inner, *extras = typing.get_args(annotation)
        if (want := type_problem(value, inner)) is not None:
            return want
        ranges = [r for r in extras if isinstance(r, Range)]
        noun = "integer" if inner is int else "number"
        bad = next((r for r in ranges if value is not None and value not in r), None)
        return None if bad is None else bad.describe(noun)
    if annotation is list or origin is list:
        item = (typing.get_args(annotation) or (Any,))[0]
        if not isinstance(value, list):
            return "a list"
        wrong = next((want for v in value if (want := type_problem(v, item)) is not None), None)
        return None if wrong is None else f"a list, each item {wrong}"
    if annotation is dict:
        return None if isinstance(value, dict) else "a mapping"
    if origin is Literal:
        choices = typing.get_args(annotation)
        return None if value in choices else "one of " + ", ".join(repr(c) for c in choices)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if any(type_problem(value, a) is None for a in options):
            return None
        return " or ".join(type_problem(None, a) or "None" for a in options if a is not type(None))
    if annotation is type(None):
        return None if value is None else "None"
    if annotation is bool:
        return None if isinstance(value, bool) else "true or false"
    if annotation is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if annotation is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return "a number"
        try:
            finite = math.isfinite(value)
        except OverflowError:  # an integer beyond a float's range
            finite = False
        return None if finite else "a finite number"
    if annotation is str:
        return None if isinstance(value, str) else "a string"
    return None  # other annotations are not checked


class Registry:
    """The variants of one component family, by name."""

    def __init__(self, family: str):
        self.family = family
        self._classes: dict[str, type] = {}
        self._aliases: dict[str, str] = {}
        self._options: dict[type, dict[str, inspect.Parameter]] = {}

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[type], type]:
        def decorate(cls: type) -> type:
            for key in (name, *aliases):
                if key in self._classes or key in self._aliases:
                    owner = self._classes.get(key) or self._classes[self._aliases[key]]
                    raise ValueError(
                        f"{self.family} '{key}' is already registered (by {owner.__module__}."
                        f"{owner.__qualname__}); pick another name for {cls.__qualname__}")
            self._classes[name] = cls
            self._aliases.update({alias: name for alias in aliases})
            cls.registered_name = name
            return cls
        return decorate

    # -- lookup -------------------------------------------------------------------------------
    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._classes if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._classes or name in self._aliases)

    def get(self, name: str, path: str | None = None) -> type:
        key = self._aliases.get(name, name) if isinstance(name, str) else None
        if key not in self._classes:
            raise SpecError(self.unknown(name, path))
        return self._classes[key]

    def unknown(self, name: Any, path: str | None) -> str:
        where = f" at {path}" if path else ""
        return f"unknown {self.family} {brief(name)}{where}{choices_hint(name, self.names(), 'registered')}{bool_hint(name)}"

    def __iter__(self):
        return iter(self.names())

    def options(self, name: str) -> dict[str, inspect.Parameter]:
        """The variant's options (keyword arguments with defaults), annotations resolved. Read once per
        variant (resolving the annotations was most of the time a 10,000-run spec took to expand)."""
        cls = self.get(name)
        if cls not in self._options:
            hints = typing.get_type_hints(cls.__init__, include_extras=True)  # Annotated ranges kept
            self._options[cls] = {p.name: p.replace(annotation=hints.get(p.name, Any))
                                  for p in inspect.signature(cls.__init__).parameters.values()
                                  if p.default is not inspect.Parameter.empty and p.name != "self"}
        return self._options[cls]

    def describe(self, name: str) -> str:
        """'name — first docstring line [options: a=1, b='x']'."""
        cls = self.get(name)
        doc = (inspect.getdoc(cls) or "").splitlines()
        line = f"{name} — {doc[0] if doc else '(no description)'}"
        opts = ", ".join(f"{k}={p.default:.6g}" if isinstance(p.default, float) and len(repr(p.default)) > 8
                         else f"{k}={p.default!r}" for k, p in self.options(name).items())  # 8/3: 2.66667
        return line + (f"  [options: {opts}]" if opts else "")

    # -- building -----------------------------------------------------------------------------
    @staticmethod
    def split(spec: Any) -> tuple[Any, dict[str, Any]]:
        """'rope' -> ('rope', {}); {name: rope, base: 10} -> ('rope', {'base': 10})."""
        if isinstance(spec, dict):
            options = dict(spec)
            return options.pop("name", None), options
        return spec, {}

    def check(self, spec: Any, path: str | None = None, dims: dict[str, Any] | None = None) -> list[str]:
        """Every problem with `spec` (a name or {name: ..., option: ...}); [] when it is fine.

        A variant may define ``check_dims(dims, options) -> list[str]`` for cross-field rules
        (say ``n_heads % n_kv_heads``); it runs when `dims` is given.
        """
        where = path or self.family
        name, given = self.split(spec)
        if name is None:
            return [f"{where} needs a 'name' (one of: {', '.join(self.names())})"]
        if name not in self:
            return [self.unknown(name, where)]
        allowed = self.options(name)
        problems = []
        for key, value in given.items():
            if key not in allowed:
                valid = ", ".join(allowed) or "none"
                hint = close_matches(key, list(allowed)) or " —"
                problems.append(f"unknown option {brief(key)} for {self.family} '{name}' at {where}{hint}"
                                f" valid options: {valid}")
            elif (want := type_problem(value, allowed[key].annotation)) is not None:
                problems.append(f"{where}.{key} = {brief(value)} for {self.family} '{name}' must be {want}"
                                f"{bool_hint(value, allowed[key].annotation)}")
        cls = self.get(name)
        if not problems and dims is not None and hasattr(cls, "check_dims"):
            options = {k: p.default for k, p in allowed.items()} | given
            problems += [f"{where}: {p}" for p in cls.check_dims(dims, options)]
        return problems

    def canonical(self, spec: Any) -> dict[str, Any]:
        """{name: <registered name>, every option: its value}: one form for every way of writing a choice."""
        name, given = self.split(spec)
        cls = self.get(name)
        return {"name": cls.registered_name} | {k: p.default for k, p in self.options(name).items()} | given

    def build(self, spec: Any, dims: dict[str, Any] | None = None, path: str | None = None) -> Any:
        """An instance of the variant `spec` names, given the shared sizes it asks for from `dims`."""
        dims = dims or {}
        problems = self.check(spec, path, dims)
        if problems:
            raise SpecError(problems)
        name, options = self.split(spec)
        cls = self.get(name)
        params = inspect.signature(cls.__init__).parameters
        shared = {k: dims[k] for k, p in params.items()
                  if k in dims and p.default is inspect.Parameter.empty}
        missing = [k for k, p in params.items() if k != "self" and p.default is inspect.Parameter.empty
                   and p.kind is p.KEYWORD_ONLY and k not in shared]
        if missing:
            raise TypeError(f"{self.family} '{name}' needs {', '.join(missing)}, which the caller did not pass")
        return cls(**shared, **options)


POSITIONAL = Registry("positional")
ATTENTION = Registry("attention")
NORM = Registry("norm")
BLOCK = Registry("block")
FEEDFORWARD = Registry("feedforward")
HEAD = Registry("head")
TOKENIZER = Registry("tokenizer")
CORPUS = Registry("corpus")

FAMILIES = {r.family: r for r in (POSITIONAL, ATTENTION, NORM, BLOCK, FEEDFORWARD, HEAD, TOKENIZER, CORPUS)}


def load_all() -> dict[str, Registry]:
    """Import every module that registers variants, so each registry is complete. (These imports,
    of modules that import this one, are the one exception to imports pointing down.)"""
    import components.attention  # noqa: F401
    import components.block  # noqa: F401
    import components.feedforward  # noqa: F401
    import components.head  # noqa: F401
    import components.norm  # noqa: F401
    import components.positional  # noqa: F401
    import components.tokenizer  # noqa: F401
    import experiments.data  # noqa: F401  (the corpora)
    return FAMILIES


def catalogue() -> str:
    lines = []
    for family, registry in load_all().items():
        lines.append(f"{family}:")
        lines += [f"  {registry.describe(name)}" for name in registry.names()]
    return "\n".join(lines)


if __name__ == "__main__":
    import registry  # the variants register into the imported module, not into this __main__ copy

    print(registry.catalogue())
