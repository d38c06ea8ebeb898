"""Args conditions: a JSONPath compiled once, one operator, and a quantifier.

Simple paths (`$.a.b`, `$['a']`, `$.items[0]`) become plain key lookups; anything else
(wildcards, filters, `..`) uses the compiled jsonpath-ng expression. Operators never raise:
a comparison between values of different JSON types is false.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from jsonpath_ng.ext.parser import parse as jsonpath_parse

__all__ = ["OPERATORS", "Condition", "ConditionError", "compile_condition", "compile_path"]

Finder = Callable[[Any], list[Any]]
Test = Callable[[Any], bool]


class ConditionError(ValueError):
    """A condition that cannot compile; `key` is the condition key at fault."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key
        self.reason = reason


# --------------------------------------------------------------------------- paths

_SIMPLE_STEP = re.compile(
    r"\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\['(?P<sq>[^'\\]*)'\]"
    r'|\["(?P<dq>[^"\\]*)"\]'
    r"|\[(?P<index>[0-9]+)\]"
)


def _simple_steps(path: str) -> tuple[str | int, ...] | None:
    """The key/index steps of a path made only of plain keys and indexes, else None."""
    if not path.startswith("$"):
        return None
    steps: list[str | int] = []
    pos = 1
    while pos < len(path):
        found = _SIMPLE_STEP.match(path, pos)
        if found is None:
            return None
        index = found.group("index")
        if index is not None:
            steps.append(int(index))
        else:
            steps.append(next(g for g in found.group("name", "sq", "dq") if g is not None))
        pos = found.end()
    return tuple(steps)


def _lookup(steps: tuple[str | int, ...]) -> Finder:
    def find(value: Any) -> list[Any]:
        for step in steps:
            if isinstance(step, int):
                if not isinstance(value, list) or step >= len(value):
                    return []
            elif not isinstance(value, dict) or step not in value:
                return []
            value = value[step]
        return [value]

    return find


def compile_path(path: str) -> Finder:
    """A function from a JSON value to the list of values the path finds in it."""
    if not path.startswith("$"):
        raise ConditionError("path", f"JSONPath must start with '$': {path!r}")
    steps = _simple_steps(path)
    if steps is not None:
        return _lookup(steps)
    try:
        expr = jsonpath_parse(path)
    except Exception as exc:  # jsonpath-ng raises several unrelated types
        raise ConditionError("path", f"bad JSONPath {path!r}: {exc}") from None

    def find(value: Any) -> list[Any]:
        try:
            return [m.value for m in expr.find(value)]
        except Exception:  # a filter comparing odd types: treat as found nothing
            return []

    return find


# --------------------------------------------------------------------------- operators


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def json_eq(a: Any, b: Any) -> bool:
    """JSON equality: `true` is not `1`, `1` is `1.0`."""
    return _kind(a) == _kind(b) and bool(a == b)


def _ordered(expected: Any, check: Callable[[Any, Any], bool]) -> Test:
    kind = _kind(expected)
    if kind not in ("number", "string"):
        raise ConditionError("", f"needs a number or a string, got {kind}")
    return lambda v: _kind(v) == kind and check(v, expected)


def _members(expected: Any) -> list[Any]:
    if not isinstance(expected, list):
        raise ConditionError("", "needs a list of values")
    return expected


def _length(expected: Any, check: Callable[[int, int], bool]) -> Test:
    if _kind(expected) != "number" or not isinstance(expected, int):
        raise ConditionError("", "needs an integer")
    return lambda v: isinstance(v, str | list | dict) and check(len(v), expected)


def _regex(expected: Any) -> Test:
    if not isinstance(expected, str):
        raise ConditionError("", "needs a regular expression string")
    try:
        pattern = re.compile(expected)
    except re.error as exc:
        raise ConditionError("", f"bad regular expression {expected!r}: {exc}") from None
    return lambda v: isinstance(v, str) and pattern.fullmatch(v) is not None


def _contains(expected: Any) -> Test:
    def test(v: Any) -> bool:
        if isinstance(v, str):
            return isinstance(expected, str) and expected in v
        if isinstance(v, list):
            return any(json_eq(item, expected) for item in v)
        return False

    return test


def _in(expected: Any) -> Test:
    members = _members(expected)
    return lambda v: any(json_eq(v, m) for m in members)


def _not_in(expected: Any) -> Test:
    members = _members(expected)
    return lambda v: not any(json_eq(v, m) for m in members)


OPERATORS: dict[str, Callable[[Any], Test]] = {
    "eq": lambda e: lambda v: json_eq(v, e),
    "ne": lambda e: lambda v: not json_eq(v, e),
    "gt": lambda e: _ordered(e, lambda a, b: a > b),
    "gte": lambda e: _ordered(e, lambda a, b: a >= b),
    "lt": lambda e: _ordered(e, lambda a, b: a < b),
    "lte": lambda e: _ordered(e, lambda a, b: a <= b),
    "in": _in,
    "not_in": _not_in,
    "matches": _regex,
    "contains": _contains,
    "len_gt": lambda e: _length(e, lambda a, b: a > b),
    "len_lt": lambda e: _length(e, lambda a, b: a < b),
}


# --------------------------------------------------------------------------- conditions


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled args condition. `exists` is None for every operator but `exists`."""

    path: str
    operator: str
    find: Finder
    test: Test
    quantifier: Literal["all", "any"] = "all"
    exists: bool | None = None

    def holds(self, args: Any) -> bool:
        found = self.find(args)
        if self.exists is not None:
            return bool(found) == self.exists
        if not found:
            return False
        if self.quantifier == "all":
            return all(self.test(v) for v in found)
        return any(self.test(v) for v in found)


def _never(_: Any) -> bool:
    return False


def compile_condition(
    path: str, operators: Sequence[tuple[str, Any]], quantifier: Literal["all", "any"] = "all"
) -> Condition:
    """Compile one condition; raise ConditionError naming the key at fault."""
    if len(operators) != 1:
        names = ", ".join(n for n, _ in operators) or "none"
        raise ConditionError("", f"needs exactly one operator of {_operator_list()}, got {names}")
    name, expected = operators[0]
    find = compile_path(path)
    if name == "exists":
        if not isinstance(expected, bool):
            raise ConditionError("exists", "needs true or false")
        return Condition(path, name, find, _never, quantifier, exists=expected)
    try:
        test = OPERATORS[name](expected)
    except ConditionError as exc:
        raise ConditionError(name, exc.reason) from None
    return Condition(path, name, find, test, quantifier)


def _operator_list() -> str:
    return " ".join([*OPERATORS, "exists"])
