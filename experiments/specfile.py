"""Reading a spec file: YAML as plain data, within bounds, every failure one paragraph.

PyYAML's safe loader (no tags that build objects), with what people write and attackers craft in mind:

* a key given twice in one mapping is an error (PyYAML would keep the last one silently);
* ``1e-3`` and ``3e-4`` are numbers (YAML 1.1 wants ``1.0e-3`` and reads ``1e-3`` as a string);
* ``1:30`` and ``010`` are strings, not YAML 1.1's base-60 90 and octal 8;
* a file larger than LIMITS["spec_bytes"] is refused before it is parsed, and a document whose
  values, aliases expanded, number more than LIMITS["spec_values"] after it is (a YAML alias bomb is
  a few lines that expand to billions of values; a document that contains itself never ends);
* numbers too long to convert and nesting too deep to parse are errors, not tracebacks.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from experiments.files import not_a_file
from experiments.schema import LIMITS
from registry import SpecError, brief

MERGE_TAG = "tag:yaml.org,2002:merge"
INT_TAG, FLOAT_TAG = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
# YAML 1.1's numbers less its base-60 ones (1:30 is 90, a time written as a number) and its octal ones
# (010 is 8): both stay strings, which every number field refuses. Hex and binary (0x10, 0b101) say
# what they are, so they stay numbers.
INT = re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$")
FLOAT = re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?"
                   r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$")
# YAML 1.2's floats without a dot (1e-3, 2E+5, 1.5e3): YAML 1.1's resolver requires the dot and a signed exponent.
EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class DuplicateKey(yaml.YAMLError):
    def __init__(self, keys: tuple[Any, Any], first: yaml.Mark, again: yaml.Mark):
        super().__init__()
        lines = f"(lines {first.line + 1} and {again.line + 1})"
        if type(keys[0]) is type(keys[1]):
            self.problem = f"the key {brief(keys[1])} is given twice {lines}"
        else:  # 1, 1.0 and true are one key of a Python mapping: the last would silently win
            self.problem = (f"the keys {brief(keys[0])} and {brief(keys[1])} {lines} are one key once read (true "
                            "is 1, and 1.0 is 1): give one, or quote them to keep them apart as strings")
        self.problem_mark = again


class SpecLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys and reads 1e-3 as a number."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, tuple[Any, yaml.Mark]] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:  # `<<: *base` then an explicit key overrides it: that is allowed
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first, mark = seen.setdefault(key, (key, key_node.start_mark))
            except TypeError:  # an unhashable key: the base class says so
                continue
            if mark is not key_node.start_mark:
                raise DuplicateKey((first, key), mark, key_node.start_mark)
        return super().construct_mapping(node, deep)


SpecLoader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag not in (INT_TAG, FLOAT_TAG)]
                                      for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
SpecLoader.add_implicit_resolver(INT_TAG, INT, list("-+0123456789"))
SpecLoader.add_implicit_resolver(FLOAT_TAG, FLOAT, list("-+0123456789."))
SpecLoader.add_implicit_resolver(FLOAT_TAG, EXPONENT_FLOAT, list("-+0123456789"))


def read_yaml(path: str | Path) -> Any:
    """A spec file's document as plain data (mappings, lists, strings, numbers, booleans, null);
    a SpecError for anything else."""
    path = Path(path)
    if why := not_a_file(path):
        raise SpecError(f"spec file {brief(str(path))} {why}")
    limit = LIMITS["spec_bytes"]
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise SpecError(f"spec file {brief(str(path))} cannot be read: {err.strerror or err}") from None
    if len(data) > limit:
        raise SpecError(f"{path} is larger than {limit:,} bytes: a spec is a short YAML file (a grid of "
                        "thousands of runs fits in a few lines), so this is not one")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise SpecError(f"{brief(str(path))} is not UTF-8 text: byte 0x{data[err.start]:02X} at offset {err.start} "
                        f"(line {line}); save the spec as UTF-8") from None
    raw = parse(text, path)
    if raw is None:
        raise SpecError(f"{path} is empty: a spec needs at least 'experiment' (see specs/quickstart.yaml)")
    if count_values(raw, LIMITS["spec_values"]) > LIMITS["spec_values"]:
        raise SpecError(f"{path} expands to more than {LIMITS['spec_values']:,} values once its YAML aliases "
                        "(*name) are expanded (or it contains itself): a spec that large is refused; write the "
                        "values out, or split the spec")
    return raw


def parse(text: str, path: "Path | str") -> Any:
    """The YAML document in `text` as plain data; `path` names it in messages (a file, or an override)."""
    try:
        return yaml.load(text, Loader=SpecLoader)  # noqa: S506 (SpecLoader is a SafeLoader)
    except yaml.constructor.ConstructorError as err:
        if "could not determine a constructor" not in str(err.problem):
            raise SpecError(f"{path} is not valid YAML {where(err)}: {err.problem}") from None
        raise SpecError(f"{path} {where(err)}: the tag {err.problem.split()[-1] if err.problem else ''} is not "
                        "allowed; a spec is plain data (mappings, lists, strings, numbers), and tags such as "
                        "!!python/... are refused") from None
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or brief(str(err))
        raise SpecError(f"{path} is not valid YAML {where(err)}: {problem}") from None
    except ValueError as err:  # an integer of thousands of digits, a date like 2024-13-45
        raise SpecError(f"{path} holds a value that cannot be read: {brief(str(err))}") from None
    except RecursionError:
        raise SpecError(f"{path} nests its mappings or lists too deeply to be a spec") from None


def where(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    return f"(line {mark.line + 1}, column {mark.column + 1})" if mark else ""


def count_values(document: Any, limit: int) -> int:
    """How many values `document` holds with every alias expanded, counting no further than limit + 1."""
    stack, count = [document], 0
    while stack and count + len(stack) <= limit:  # every value waiting on the stack counts too
        value = stack.pop()
        count += 1
        if isinstance(value, dict):
            stack += [*value.keys(), *value.values()]
        elif isinstance(value, list):
            stack += value
    return count + len(stack)
