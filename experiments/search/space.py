"""A spec's `search:` block: its keys and defaults, the space as `Param`s, and the metrics a search
can optimise. Every key and value is checked before anything is built, candidate values against
the spec's own fields (experiments/schema.py). No Optuna here: spec.py reads search blocks with it.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

from components.model import PRESETS
from experiments import metrics
from experiments.schema import LIMITS, SECTIONS, is_component, key_problem, positive_int, repeats
from experiments.schema import label as spec_label
from experiments.search.study import STORAGE_ENV, has_password, storage_problems
from registry import FAMILIES, bool_hint, brief, choices_hint, close_matches, cut, load_all, type_problem

SEARCH_KEYS = ("trials", "metric", "direction", "sampler", "pruner", "storage", "space")
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
DIRECTIONS = ("minimize", "maximize")
RANGE_KEYS = ("int", "float", "log", "step")
DEFAULT_TRIALS = 20
# Keys that change the text a trial is scored on, or what its score means: trials that differ in
# them are not comparable, so the search would pick whichever scores on the easiest text.
SCORED_TEXT = {"data.corpus": "the text itself", "data.val_fraction": "the validation text",
               "data.test_fraction": "where the validation text starts and the held-out test text"}
PER_TOKEN = "data.tokenizer"       # a per-token loss has another unit under another tokenizer (bits per byte do not)
# Keys that change the sampled windows of the periodic evaluations, which metrics.SAMPLED are read off.
WINDOWS = {"train.eval_batches": "how many there are", "model.context_length": "how long they are",
           "data.tokenizer": "which tokens they hold"}
# Keys that make one optimizer step mean different things in different trials, while a pruner compares
# trials at the same step: how much text it has trained on, or how far through its schedule it is.
TEXT_PER_STEP = "how much text one step trains on, so the pruner would favour the trials that had seen more text by then"
SCHEDULE_LENGTH = ("how many steps a trial trains, so at a given step the longer trials are earlier in their "
                   "learning-rate schedule and the pruner would favour the shorter ones")
PACED = {"train.batch_size": TEXT_PER_STEP, "train.grad_accum": TEXT_PER_STEP, "model.context_length": TEXT_PER_STEP,
         "data.tokenizer": TEXT_PER_STEP, "train.steps": SCHEDULE_LENGTH, "train.budget": SCHEDULE_LENGTH}
PRIMITIVE = (str, int, float, bool, type(None))
POSITIVE_INT = positive_int(DEFAULT_TRIALS, "finished trials wanted")


def metric_table() -> dict[str, tuple[str, str | None]]:
    """search.metric -> (summary.json key, metrics.csv column reported at each evaluation or None).
    A curve's name means its final value; final_* and best_* name themselves."""
    table: dict[str, tuple[str, str | None]] = {}
    for curve in metrics.CURVES:
        table[curve] = table[metrics.final(curve)] = (metrics.final(curve), curve)
    for curve in (metrics.VAL_BPB, metrics.VAL_LOSS):
        table[metrics.best(curve)] = (metrics.best(curve), curve)
    for cost in (metrics.TOKENS_PER_S, metrics.WALL_S, metrics.TRAIN_S, metrics.PARAMS, metrics.FLOPS_PER_TOKEN):
        table[cost] = (cost, None)
    return table


METRICS = metric_table()


@dataclasses.dataclass
class Param:
    """One dimension of the space: a categorical list or an int/float range."""

    key: str
    kind: str                          # categorical | int | float
    choices: list[Any] = dataclasses.field(default_factory=list)   # categorical values as written
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False

    @property
    def encoded(self) -> list[Any]:
        """Categorical choices as Optuna stores them: the value, or its label when not a scalar."""
        return [encode(v) for v in self.choices]

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, self.encoded)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), step=self.step, log=self.log)

    def decode(self, value: Any) -> Any:
        if self.kind == "categorical":
            return self.choices[self.encoded.index(value)]
        return value

    def size(self) -> int | None:
        """How many values grid() lists, counted without listing them (None for a continuous range)."""
        if self.kind == "categorical":
            return len(self.choices)
        if self.kind == "int":
            return (self.high - self.low) // (self.step or 1) + 1
        return None if self.step is None else int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1

    def grid(self) -> list[Any] | None:
        """Every value, for the grid sampler (None for a continuous range)."""
        if self.kind == "categorical":
            return self.encoded
        if self.kind == "int":
            return list(range(self.low, self.high + 1, self.step or 1))
        if self.step is None:
            return None
        n = int(math.floor((self.high - self.low) / self.step + 1e-9))
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]

    def describe(self) -> str:
        if self.kind == "categorical":
            return "one of " + ", ".join(label(v) for v in self.choices)
        extra = (f", step {self.step}" if self.step else "") + (", log scale" if self.log else "")
        return f"{'an integer' if self.kind == 'int' else 'a number'} in [{self.low}, {self.high}]{extra}"


def encode(value: Any) -> Any:
    return value if isinstance(value, PRIMITIVE) else label(value)


def label(value: Any) -> str:
    """A value as a trial's parameters and tables show it: floats to 6 significant digits."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return spec_label(value)


def check_block(search: Any, base: dict) -> list[str]:
    """Every problem with a spec's `search:` block, each a readable sentence ([] when it is fine)."""
    return parse_block(search, base)[1]


def parse_block(search: Any, base: dict) -> tuple[dict[str, Any], list[str]]:
    """(the block with defaults filled and `space` parsed into Params, problems)."""
    if not isinstance(search, dict):
        return {}, [f"search must be a mapping with keys {', '.join(SEARCH_KEYS)} "
                    f"(e.g. search: {{trials: 20, space: {{model.n_heads: [1, 2, 4]}}}}), not {brief(search)}"]
    problems = [f"unknown key search.{key}{choices_hint(key, SEARCH_KEYS, 'valid keys')}"
                for key in search if key not in SEARCH_KEYS]
    trials = search.get("trials")
    if trials is not None and not POSITIVE_INT.valid(trials):
        problems.append(f"search.trials = {brief(trials)} must be {POSITIVE_INT.describe()} (finished trials wanted)")
        trials = None
    metric = search.get("metric", metrics.VAL_BPB)
    if not isinstance(metric, str) or metric not in METRICS:
        problems.append(f"search.metric = {brief(metric)} is not a summary metric"
                        f"{choices_hint(metric, METRICS)}")
        metric = metrics.VAL_BPB
    direction = search.get("direction", "minimize")
    if direction not in DIRECTIONS:
        problems.append(f"search.direction = {brief(direction)} must be one of {', '.join(DIRECTIONS)}"
                        f"{close_matches(str(direction), list(DIRECTIONS))}")
    sampler = search.get("sampler", "tpe")
    if sampler not in SAMPLERS:
        problems.append(f"search.sampler = {brief(sampler)} is not a sampler"
                        f"{choices_hint(sampler, SAMPLERS)}")
    reported = METRICS[metric][1]
    storage = search.get("storage")
    if storage is not None:
        problems += storage_problems(storage, "search.storage")
        if has_password(storage):
            problems.append(f"search.storage holds a password: a spec is copied into results/<experiment>/, "
                            f"where no password is ever written; leave it out of the URL and set "
                            f"{STORAGE_ENV}=<the whole URL> in the environment, or keep it in ~/.pgpass (PostgreSQL)")
    params, space_problems = parse_space(search.get("space"), base)
    space_problems += scored_text_problems(search.get("space"), metric, base)
    pruner = pruner_choice(search, metric, params, problems, base)
    problems += space_problems
    block = {"trials": trials, "metric": metric, "summary_key": METRICS[metric][0], "reported": reported,
             "direction": direction, "sampler": sampler, "pruner": pruner, "storage": storage, "params": params}
    continuous = [p.key for p in params if p.size() is None]
    size = math.prod(p.size() or 1 for p in params)
    block["space_size"] = None if continuous or space_problems else size
    if sampler != "grid" and block["space_size"] and (trials or DEFAULT_TRIALS) > size:
        # More distinct points cannot be had: the study stops once each was tried (see worker.py).
        block["capped"] = (trials or DEFAULT_TRIALS, size)
        block["trials"] = size
    if sampler == "grid" and not space_problems:
        if continuous:
            problems.append(f"search.sampler = 'grid' needs a finite set of values, but search.space."
                            f"{continuous[0]} is a continuous range: give it a list, a step, or use "
                            "sampler: tpe or random")
        elif size > LIMITS["runs"]:
            problems.append(f"search.sampler = 'grid' over this space walks {size:,} points, more than the "
                            f"{LIMITS['runs']:,} one experiment may hold: give the ranges larger steps or fewer "
                            "values, or use sampler: tpe or random with a number of trials")
        else:
            block["trials"] = min(trials or size, size)
    if block["trials"] is None:
        block["trials"] = DEFAULT_TRIALS
    return block, problems


def searched_fields(key: str, value: Any, base: dict) -> list[str]:
    """The section.field keys that searching `key` over `value` changes: model.preset also changes the
    context length where its presets' differ and the spec does not set its own."""
    head = ".".join(str(key).split(".")[:2])
    model = base.get("model") if isinstance(base.get("model"), dict) else {}
    if head != "model.preset" or not isinstance(value, list) or "context_length" in model:
        return [head]
    lengths = {PRESETS[v].get("context_length") for v in value if isinstance(v, str) and v in PRESETS}
    return [head, "model.context_length"] if len(lengths) > 1 else [head]


def scored_text_problem(field: str, metric: str, compared: str = "trials") -> str | None:
    """Why varying `field` would score the `compared` (a search's trials, a tune's values) by `metric` on
    different text, or in different units, and what to do instead; None when it may vary."""
    section = field.split(".")[0]
    if field in SCORED_TEXT:
        return (f"it changes {SCORED_TEXT[field]}, so the {compared} would not be scored alike; set it once in the "
                f"spec's {section}: section")
    if field == PER_TOKEN and METRICS[metric][0].endswith("_loss"):
        return (f"it changes the unit of {metric}, a loss per token of each tokenizer; search it with metric: "
                f"val_bpb, which compares tokenizers, or set it once in the spec's {section}: section")
    if field in WINDOWS and METRICS[metric][0] in metrics.SAMPLED:
        instead = "val_bpb" if field == PER_TOKEN else "val_bpb or val_loss"
        return (f"{metric} is read off the periodic evaluations' sampled windows, and it changes {WINDOWS[field]}, "
                f"so the {compared} would not be scored alike; search it with metric: {instead} (each finished run's "
                f"whole validation text), or set it once in the spec's {section}: section")
    return None


def scored_text_problems(space: Any, metric: str, base: dict | None = None) -> list[str]:
    """Search keys that would change the text the objective is scored on, or the unit of its score."""
    problems = []
    for key, value in (space.items() if isinstance(space, dict) else ()):
        fields = searched_fields(key, value, base or {})
        if why := next(filter(None, (scored_text_problem(f, metric) for f in fields)), None):
            through = f" (through {fields[-1]})" if len(fields) > 1 else ""
            problems.append(f"search.space.{cut(str(key))} = {brief(value)} cannot be searched{through}: {why}")
    return problems


def pruner_choice(search: dict, metric: str, params: list[Param], problems: list[str], base: dict) -> str:
    """search.pruner, by default median where the metric is reported at each evaluation and no searched
    key changes what a step means (PACED; else none)."""
    reported = METRICS[metric][1]
    paced = [(p.key, f) for p in params for f in searched_fields(p.key, p.choices, base) if f in PACED]
    pruner = search.get("pruner", "median" if reported and not paced else "none")
    if pruner is None or pruner is False:
        pruner = "none"
    if pruner not in PRUNERS:
        problems.append(f"search.pruner = {brief(pruner)} is not a pruner"
                        f"{choices_hint(pruner, PRUNERS)}")
    elif pruner != "none" and paced:
        key, field = paced[0]
        through = f" (through {field})" if field != ".".join(key.split(".")[:2]) else ""
        problems.append(f"search.pruner = {brief(pruner)} compares trials at the same optimizer step, but "
                        f"search.space.{key}{through} changes {PACED[field]}: use pruner: none")
    elif pruner != "none" and reported is None:
        problems.append(f"search.pruner = {brief(pruner)} needs a metric measured at every evaluation, and "
                        f"search.metric = {brief(metric)} is only known at the end of a run: use pruner: none "
                        f"or one of {', '.join(m for m, (_, r) in METRICS.items() if r)}")
    return pruner


def parse_space(space: Any, base: dict) -> tuple[list[Param], list[str]]:
    if space is None:
        return [], ["search.space is missing: give the keys to search, e.g. space: {model.n_heads: [1, 2, 4], "
                    "model.n_layers: {int: [1, 4]}}"]
    if not isinstance(space, dict) or not space:
        return [], [f"search.space = {brief(space)} must be a non-empty mapping of dotted spec keys to a list "
                    "(categorical) or {int: [low, high]} / {float: [low, high], log: true}"]
    params, problems = [], []
    for key, value in space.items():
        key = str(key)
        where = f"search.space.{cut(key)}"
        if problem := key_problem(key, "search.space"):
            problems.append(problem)
            continue
        if isinstance(value, list):
            if not value:
                problems.append(f"{where} = [] must be a non-empty list of values")
                continue
            found = [p for v in value for p in value_problems(key, v, base, space)]
            if repeats([encode(v) for v in value]):  # as Optuna stores them: two that read alike collide
                found.append(f"{where} = {brief(value)} lists a value twice")
            problems += found
            if not found:
                params.append(Param(key, "categorical", choices=list(value)))
            continue
        if not isinstance(value, dict):
            problems.append(f"{where} = {brief(value)} must be a list of values (categorical) or a range: "
                            "{int: [low, high]} or {float: [low, high], log: true}")
            continue
        param, found = parse_range(key, value, base, space)
        problems += found
        if param is not None:
            params.append(param)
    return params, problems


def parse_range(key: str, value: dict, base: dict, space: dict) -> tuple[Param | None, list[str]]:
    where = f"search.space.{cut(key)}"
    problems = []
    for k in value:
        if k not in RANGE_KEYS:
            problems.append(f"unknown key {brief(k)} in {where}{close_matches(str(k), list(RANGE_KEYS)) or ' —'} "
                            f"a range is {{int: [low, high]}} or {{float: [low, high]}} with optional log: true "
                            "or step; a list of values is categorical")
    kinds = [k for k in ("int", "float") if k in value]
    if len(kinds) != 1:
        problems.append(f"{where} = {brief(value)} must name exactly one of int or float, e.g. {{int: [1, 6]}} "
                        "or {float: [1.0e-4, 3.0e-3], log: true}")
        return None, problems
    kind = kinds[0]
    bounds = value[kind]

    def ok_number(v: Any) -> bool:
        if kind == "int":
            return type_problem(v, int) is None
        return type_problem(v, float) is None and math.isfinite(v)

    if not (isinstance(bounds, list) and len(bounds) == 2 and all(ok_number(b) for b in bounds)):
        problems.append(f"{where}.{kind} = {brief(bounds)} must be [low, high], two "
                        f"{'integers' if kind == 'int' else 'numbers'}")
        return None, problems
    low, high = bounds
    log, step = value.get("log", False), value.get("step")
    if low > high:
        problems.append(f"{where}.{kind} = {brief(bounds)}: low {brief(low)} > high {brief(high)}")
    if not isinstance(log, bool):
        problems.append(f"{where}.log = {brief(log)} must be true or false")
        log = False
    if step is not None and not (ok_number(step) and step > 0):
        problems.append(f"{where}.step = {brief(step)} must be a positive {'integer' if kind == 'int' else 'number'}")
        step = None
    if log and low <= 0:
        problems.append(f"{where}: log: true needs low > 0, got {brief(low)}")
    if log and step not in (None, 1):
        problems.append(f"{where}: log: true and step cannot be used together")
    problems += span_problems(f"{where}.{kind}", bounds, None if log else step)
    for bound in (low, high):  # a float range suggests floats: the field must take them
        problems += value_problems(key, float(bound) if kind == "float" else bound, base, space)
    if problems:
        return None, list(dict.fromkeys(problems))
    return Param(key, kind, low=low, high=high, step=step, log=log), []


def span_problems(where: str, bounds: list, step: Any) -> list[str]:
    """A range that holds one value (every trial would train the same), or whose step does not end on
    high (Optuna would trim the range with a warning, or to [low, low] for a step wider than it)."""
    low, high = bounds
    if low > high:  # said already
        return []
    if low == high:
        return [f"{where} = {brief(bounds)} holds one value (low = high), so every trial would train the same: "
                "give a wider range, or set the value once in the spec"]
    if step is None:
        return []
    span = high - low
    if not math.isfinite(span / step) or span / step > 1e12:  # 1e-320: the count overflows, no grid is that fine
        return [f"{where} = {brief(bounds)} with step {brief(step)}: the step is too small for the range (more than "
                "1e12 points): give a larger step, or none"]
    count = span // step if isinstance(span, int) and isinstance(step, int) else math.floor(span / step + 1e-9)
    if count == 0:
        return [f"{where} = {brief(bounds)} with step {brief(step)}: the step is larger than high - low = "
                f"{span:.12g}, so the range would hold low alone: give a smaller step or a wider range"]
    below = low + count * step
    if math.isclose(below, high, rel_tol=1e-9, abs_tol=1e-12 * abs(step)):
        return []
    return [f"{where} = {brief(bounds)} with step {brief(step)}: high - low = {span:.12g} is not a multiple of "
            f"the step; give high {below:.12g} or {below + step:.12g}"]


def value_problems(key: str, value: Any, base: dict, space: dict) -> list[str]:
    """Whether one candidate value fits its field (each alone; combinations are checked per trial)."""
    load_all()
    section, field, *option = key.split(".")
    where = f"search.space.{cut(key)}"
    component = is_component(section, field)
    family = "tokenizer" if section == "data" else field
    if component and option:
        if f"{section}.{field}" in space:  # the component itself is searched: checked per trial
            return []
        given = base.get(section, {})
        preset = PRESETS.get(given.get("preset"), {}) if section == "model" else {}
        current = given.get(field, preset.get(field, SECTIONS[section][field].default))
        name, given = FAMILIES[family].split(current)
        # check() names the option itself: give it the component's path
        return FAMILIES[family].check({**given, "name": name, option[0]: value}, f"search.space.{section}.{field}")
    if component:
        if not isinstance(value, (str, dict)):
            return [f"{where} = {brief(value)} must be a registered {family} name or {{name: ..., option: ...}} "
                    f"(registered: {', '.join(FAMILIES[family].names())}){bool_hint(value)}"]
        return FAMILIES[family].check(value, where)
    if (section, field) == ("model", "preset"):
        if not isinstance(value, str) or value not in PRESETS:
            return [f"{where} = {brief(value)} is not a preset{choices_hint(value, PRESETS, 'presets')}{bool_hint(value)}"]
        return []
    problem = SECTIONS[section][field].problem(value, f"{section}.{field}")
    return [f"{where}: {problem}"] if problem else []

