"""experiment.json's fields as its readers (`python -m experiments.status`, the analysis) rely on them:
what each must be, checked in one table, so that a damaged or hand-edited file is refused in one line
naming the field instead of crashing a reader. experiments/records.py writes the file."""
from __future__ import annotations

from typing import Any, Callable

from experiments.schema import BUDGET_RULE, budget_problem
from registry import brief, type_problem


def fields_problem(fields: dict[str, Any]) -> Callable[[dict], str | None]:
    """A check that an object's fields have these types (registry.type_problem; a missing one is null)."""
    def problem(value: dict) -> str | None:
        bad = next((k for k, kind in fields.items() if type_problem(value.get(k), kind) is not None), None)
        return None if bad is None else f"has {bad!r} = {brief(value[bad])}" if bad in value else f"lacks {bad!r}"
    return problem


def entries_problem(runs: list[dict]) -> str | None:
    bad = next((i for i, r in enumerate(runs)
                if r.get("run_id") in (None, "") or not isinstance(r.get("axes", {}), dict)), None)
    return None if bad is None else f"has entry {bad} = {brief(runs[bad])}"


# field: (its type, for registry.type_problem; what it must be; why a typed, non-empty value is wrong, or None)
PLAN_FIELDS: dict[str, tuple[Any, str, Callable[[Any], str | None] | None]] = {
    "experiment": (str | None, "the experiment's name (a string)", None),
    "axes": (list[str] | None, "a list of the grid's keys (strings)", None),
    "variants": (list[str] | None, "a list of variant names (strings)", None),
    "seeds": (list[int] | None, "a list of integer seeds", None),
    "runs": (list[dict] | None, "a list of the planned runs, each an object with a run_id", entries_problem),
    "baseline": (str | None, "a variant's name or null", None),
    "search": (dict | bool | None, "null or an object with the search's storage, study_name, trials and mode",
               fields_problem({"storage": str | None, "study_name": str | None, "trials": int | None,
                               "mode": str | None})),
    "tune": (dict | None, 'null or {"key": a spec key, "values": a list of values}',
             fields_problem({"key": str, "values": list})),
    "scale": (dict | None, 'null or {"axis": a size key, "keys": a list of size keys, "sizes": a list of objects}',
              fields_problem({"axis": str, "keys": list[str], "sizes": list[dict]})),
    "budget": (dict | None, f"null or {BUDGET_RULE}", budget_problem),
}


def plan_problem(plan: dict[str, Any], names: Any = PLAN_FIELDS) -> str | None:
    """Why one of experiment.json's fields (those named) cannot be used, or None: "'<field>' = <value> must
    be <what>". A damaged or hand-edited file is refused in one line instead of crashing a reader."""
    for name in names:
        kind, rule, check = PLAN_FIELDS[name]
        value = plan.get(name)
        if type_problem(value, kind) is not None:
            why = ""
        elif check is not None and isinstance(value, (dict, list)) and value and (found := check(value)):
            why = found + "; it "   # the older search form, a bare true, has nothing to check
        else:
            continue
        return f"{name!r} = {brief(value)} {why}must be {rule}"
    return None
