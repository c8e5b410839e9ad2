"""Command-line overrides of a spec: `python -m experiments.run SPEC train.steps=100 'seeds=[0]'`.

Each KEY=VALUE sets one dotted key of the spec's YAML tree before the spec is validated, so an
override is checked exactly like the file (the same messages, naming the key) and changes run ids
as the same edit of the file would. Values are YAML: 100, 3.0e-4, 3e-4, [0, 1], {name: rope,
base: 500}, true, null ("KEY=" is null too).

    seeds, experiment, grid, variants, search     a whole top-level entry: seeds=[0], grid={}
    tune, scale                                   only whole: 'tune={train.lr: [1.0e-3, 3.0e-3]}'
    data, model, train, sample                    a whole section: train= (null) is its defaults
    data.F, model.F, train.F, sample.F            a field: model.attention={name: grouped_query, n_kv_heads: 2}
    model.COMPONENT.OPTION, data.tokenizer.OPTION one option of a component, its name kept: model.attention.impl=naive
    grid.SECTION.F[.OPTION]                       one axis of the grid: grid.model.block=[pre,post]
    variants.NAME, variants.NAME.SECTION.F        one variant, or one key of it
    search.KEY, search.space.SECTION.F            one key of the search block, or one dimension of its space
"""
from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from components.model import PRESETS
from experiments import specfile
from experiments.schema import LIMITS, SECTIONS, key_problem
from experiments.search import space
from experiments.spec import Spec, parse_spec, read_yaml
from experiments.specfile import count_values
from registry import SpecError, brief, cut

COMMAND = "python -m experiments.run"
# Blocks whose keys are dotted spec keys themselves, so `tune.train.lr=...` could not say where it ends.
WHOLE_BLOCKS = {"tune": "'tune={train.lr: [1.0e-3, 3.0e-3]}'",
                "scale": "'scale={model.d_model: [32, 64, 128], model.n_layers: [1, 2, 3]}'"}


# -- parsing -------------------------------------------------------------------------------------
def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['train.steps=100', 'seeds=[0]'] -> {'train.steps': 100, 'seeds': [0]}; every problem at once."""
    overrides: dict[str, Any] = {}
    problems = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not all(key.split(".")):
            problems.append(f"override {brief(item)} must be KEY=VALUE with a dotted spec key, e.g. train.steps=100 "
                            "or 'seeds=[0, 1]' (give one spec file, then any number of overrides)")
            continue
        if key in overrides:
            problems.append(f"override {brief(key)} is given twice: give it once")
            continue
        try:  # the spec file's own loader: plain data, 1e-3 a number, no duplicate keys, no alias bomb
            overrides[key] = specfile.parse(text, f"override {brief(item)}")
        except SpecError as err:
            problems.append(f"{err}; quote it for the shell, e.g. '{cut(key)}=[0, 1]' or "
                            f"'{cut(key)}={{name: rope, base: 500}}'")
            continue
        if count_values(overrides[key], LIMITS["spec_values"]) > LIMITS["spec_values"]:
            problems.append(f"override {cut(key)} expands to more than {LIMITS['spec_values']:,} values")
    if problems:
        raise SpecError(problems)
    return overrides


# -- applying ------------------------------------------------------------------------------------
def apply_overrides(raw: Any, overrides: dict[str, Any]) -> tuple[Any, list[str]]:
    """(a copy of the spec's YAML tree with every override set, the keys no spec could have). What
    the spec's rules forbid is left for parse_spec to report in its own words."""
    if not overrides or not isinstance(raw, dict):
        return raw, []
    tree = copy.deepcopy(raw)
    problems = [p for key, value in overrides.items() if (p := set_key(tree, key, copy.deepcopy(value)))]
    how_long = {".".join(p[:2]) for k in overrides if isinstance(p := locate(k), list)} & {"train.steps", "train.budget"}
    if len(how_long) == 1 and isinstance(tree.get("train"), dict):  # both say how long: one given replaces the other
        tree["train"].pop("budget" if "train.steps" in how_long else "steps", None)
    return tree, problems


def locate(key: str) -> list[str] | str:
    """Where a dotted key lives in the spec's tree (train.steps -> ['train', 'steps'], grid.model.block
    -> ['grid', 'model.block']), or why no spec has it. A section's unknown field is placed all the same:
    parse_spec names it, with the closest match."""
    head, *rest = key.split(".")
    if not rest:
        return [head]
    if head in SECTIONS:
        if rest[0] == "budget" and len(rest) == 2:  # train.budget.flops=1e10: the budget {flops: 1e10}
            return [head, *rest]
        return [head, *rest] if len(rest) == 1 else (key_problem(key, "override") or [head, *rest])
    if head == "grid":
        return ["grid", ".".join(rest)]
    if head == "variants":
        return ["variants", rest[0]] + ([".".join(rest[1:])] if len(rest) > 1 else [])
    if head == "search" and rest[0] == "space" and len(rest) > 1:
        return ["search", "space", ".".join(rest[1:])]
    if head == "search":
        return ["search", rest[0]] if len(rest) == 1 else (
            f"override key {brief(key)} does not exist: a search block takes search.KEY or search.space.SECTION.FIELD")
    if head in WHOLE_BLOCKS:
        return f"override key {brief(key)} does not exist: {head} is set as a whole block, e.g. {WHOLE_BLOCKS[head]}"
    return key_problem(key, "override") or f"override key {brief(key)} does not exist"


def set_key(tree: dict, key: str, value: Any) -> str | None:
    """Set one override in the tree; a problem only where the spec's own checks could not name it.
    A mapping on the way that is something else is left as it is: parse_spec says what it must be."""
    path = locate(key)
    if isinstance(path, str):
        return path
    if path[:2] == ["train", "budget"] and len(path) == 3:
        path, value = path[:2], {path[2]: value}
    if path[0] in SECTIONS and len(path) == 3:  # a component's option: the component's name is kept
        section = tree.get(path[0])
        if section is None:
            section = tree[path[0]] = {}
        if isinstance(section, dict):
            current = component_value(tree, path[0], path[1])
            current = {"name": current} if isinstance(current, str) else dict(current or {})
            section[path[1]] = current | {path[2]: value}
        return None
    node = tree
    for part in path[:-1]:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            return None
    node[path[-1]] = value
    return None


def component_value(tree: dict, section: str, field: str) -> Any:
    """A component field as the spec has it: written, else from the model's preset, else the default."""
    given = tree.get(section) if isinstance(tree.get(section), dict) else {}
    if given.get(field) is not None:
        return given[field]
    preset = given.get("preset") if section == "model" else None
    if isinstance(preset, str) and field in PRESETS.get(preset, {}):
        return PRESETS[preset][field]
    return SECTIONS[section][field].default


# -- the command's view --------------------------------------------------------------------------
def load_spec_with(path: str | Path, items: list[str]) -> tuple[Spec, Any, dict[str, Any]]:
    """(the validated spec with the overrides applied, the file's own tree, the overrides parsed)."""
    overrides = parse_overrides(items)
    original = read_yaml(path)
    tree, problems = apply_overrides(original, overrides)
    try:
        spec = parse_spec(tree)
    except SpecError as err:
        raise SpecError(problems + err.problems) from None
    if problems:
        raise SpecError(problems)
    return spec, original, overrides


def override_notes(original: Any, overrides: dict[str, Any], spec: Spec, limit: int = 10) -> list[str]:
    """Overrides that do less than they seem to: a component option that the runs whose variant or grid
    axis names that component never get, and one that changes no run and no search setting (checked by
    parsing the spec without it: up to `limit` overrides and 1,000 runs)."""
    notes = []
    for key, value in overrides.items():
        path = locate(key)
        if isinstance(path, list) and path[0] == "model" and len(path) == 3:
            missed = sorted({r.variant for r in spec.runs if not isinstance(r.model.get(path[1]), dict)
                             or r.model[path[1]].get(path[2]) != value})
            if missed:
                notes.append(f"{key}={flow(value)} does not reach {', '.join(missed[:5])}{' ...' * (len(missed) > 5)}: "
                             f"their variant or grid axis sets model.{path[1]} itself; give the option there "
                             f"(e.g. variants.NAME.model.{path[1]}={{name: ..., {path[2]}: {flow(value)}}})")
    done = effect(spec)
    for key in list(overrides) if len(overrides) <= limit and len(spec.runs) <= 1000 else []:
        tree, _ = apply_overrides(original, {k: v for k, v in overrides.items() if k != key})
        try:
            unchanged = effect(parse_spec(tree)) == done
        except SpecError:  # the spec needs this override to be valid: it does something
            continue
        if unchanged:
            notes.append(f"{key}={flow(overrides[key])} changes no run: every run already has that value, or the "
                         "spec's own fields, variants or grid set what it would change")
    return notes


def effect(spec: Spec) -> tuple[list[dict[str, Any]], Any]:
    """What a spec does: all of each run (some keys, train.device, are not in its id), and its search
    block with the defaults filled in (search.trials changes the study, not the base runs)."""
    search = space.parse_block(spec.search, spec.base)[0] if spec.search is not None else None
    return [r.to_dict() for r in spec.runs], search


def describe(original: Any, overrides: dict[str, Any]) -> str:
    """What the overrides change, one line each: 'train.steps: 300 -> 12' (for --dry-run)."""
    lines = [f"{len(overrides)} override(s) of the spec file:"]
    for key, value in overrides.items():
        lines.append(f"  {key}: {before(original, key)} -> {flow(value)}")
    return "\n".join(lines)


def before(raw: Any, key: str) -> str:
    """A key's value in the spec file, or where its value comes from when the file does not set it."""
    if key.startswith("train.budget."):  # the whole budget is replaced
        return before(raw, "train.budget")
    path = locate(key)
    node: Any = raw
    for part in path if isinstance(path, list) else []:
        if not isinstance(node, dict) or part not in node:
            break
        node = node[part]
    else:
        if isinstance(path, list):
            return flow(node)
    head, *rest = key.split(".")
    if head in SECTIONS and rest and rest[0] in SECTIONS[head] and isinstance(raw, dict):
        tree = {s: v for s, v in raw.items() if s in SECTIONS and isinstance(v, dict)}
        current = component_value(tree, head, rest[0])
        if len(rest) == 2:  # an option the spec does not set: the component's own default
            return f"(the default of {current['name'] if isinstance(current, dict) else current})"
        return f"{flow(current)} (preset or default)"
    return "(not set)"


def flow(value: Any) -> str:
    """A value as one line of YAML: [0, 1], {name: rope, base: 500}. PyYAML breaks a string with a newline
    over lines even in flow style; JSON (a subset of YAML) keeps it on one, as \\n."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip().removesuffix("\n...").strip()
    return text if not LINE_BREAK.search(text) else json.dumps(value, default=str)


# -- the record: results/<experiment>/spec.yaml --------------------------------------------------
# What cannot stand in a one-line YAML comment: YAML's line breaks (\n \r \x85 \u2028 \u2029), the
# characters a YAML file may not hold at all (other controls, lone surrogates: bytes of a non-UTF-8
# argument), and tabs (shown as \t, not as blanks).
UNSAFE = re.compile("[^\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
LINE_BREAK = re.compile("[\n\r\x85\u2028\u2029]")
ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\", "'": "\\'"}
HEADER = re.compile(rf"# {re.escape(COMMAND)}( |$)|# .* with \d+ command-line override\(s\): ")


def escape(char: str) -> str:
    """A character as bash's $'...' writes it: \\n, \\x01, \\u2028; a byte that was not UTF-8 (Python
    keeps it as a lone surrogate) as that byte again, \\xff."""
    code = ord(char)
    if char in ESCAPES:
        return ESCAPES[char]
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


def shell_word(arg: str) -> str:
    """One argument for the recorded command, on one line: shlex's quoting, else (a newline, a control
    character in it) bash's $'...', which the shell reads back as the same argument."""
    if not UNSAFE.search(arg):
        return shlex.quote(arg)
    return "$'" + "".join(escape(c) if UNSAFE.match(c) or c in ESCAPES else c for c in arg) + "'"


def one_line(text: str) -> str:
    """`text` fit for a one-line comment: what cannot stand in one escaped (\\n, \\x01)."""
    return UNSAFE.sub(lambda m: escape(m.group()), text)


def spec_record(spec_path: str | Path, original: Any, overrides: dict[str, Any], argv: list[str]) -> str:
    """The text of results/<experiment>/spec.yaml: the command line that made it, then the spec as
    it ran (the file itself without overrides, else the merged tree), valid YAML either way. Each
    header line is one comment line, whatever the arguments hold; a spec file that is itself such a
    record (a rerun of results/<experiment>/spec.yaml) keeps its spec, not its old header."""
    header = [f"# {COMMAND} {' '.join(map(shell_word, argv))}"]
    if not overrides:
        return header[0] + "\n" + without_header(Path(spec_path).read_text(encoding="utf-8"))
    header.append(f"# {one_line(str(spec_path))} with {len(overrides)} command-line override(s): "
                  + ", ".join(f"{one_line(k)}={one_line(flow(v))}" for k, v in overrides.items()))
    body = yaml.safe_dump(apply_overrides(original, overrides)[0], sort_keys=False, allow_unicode=True)
    return "\n".join(header) + "\n" + body


def without_header(record: str) -> str:
    """A spec record without the comment lines spec_record put above the spec (every such line, also
    those an older version stacked up, one per rerun)."""
    lines = record.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if not HEADER.match(line)), len(lines))
    return "".join(lines[start:])


def same_spec_record(recorded: str, new: str) -> bool:
    """Whether two spec records hold the same spec: command lines that differ only in where the
    results go (--results, --only, --no-report ...) or in which file held the spec (the recorded
    spec.yaml itself, say) made the same experiment, so its spec.yaml stays."""
    return without_header(recorded) == without_header(new)
