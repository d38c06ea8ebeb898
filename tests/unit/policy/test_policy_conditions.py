"""Args conditions: every operator under both quantifiers, exists, type mismatches, paths."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from jsonpath_ng.ext.parser import parse as jsonpath_parse

from guard.policy.conditions import ConditionError, compile_condition, compile_path


def holds(op: str, expected: Any, args: Any, path: str = "$.v", q: Literal["all", "any"] = "all") -> bool:
    return compile_condition(path, [(op, expected)], q).holds(args)


# (operator, expected, a value that satisfies it, a value that does not)
CASES: list[tuple[str, Any, Any, Any]] = [
    ("eq", "prod", "prod", "dev"),
    ("eq", 3, 3.0, 4),
    ("ne", "prod", "dev", "prod"),
    ("gt", 10, 11, 10),
    ("gte", 10, 10, 9),
    ("lt", 10, 9, 10),
    ("lte", 10, 10, 11),
    ("gt", "b", "c", "a"),
    ("in", ["public", "internal"], "public", "secret"),
    ("not_in", ["secret"], "public", "secret"),
    ("matches", r"[a-z]+-\d+", "abc-12", "abc-12x"),
    ("contains", "lo", "hello", "help"),
    ("contains", "x", ["x", "y"], ["y"]),
    ("len_gt", 3, "abcd", "abc"),
    ("len_gt", 1, [1, 2], [1]),
    ("len_lt", 2, {"a": 1}, {"a": 1, "b": 2}),
]


@pytest.mark.parametrize(("op", "expected", "good", "bad"), CASES)
def test_operator_on_single_value(op: str, expected: Any, good: Any, bad: Any) -> None:
    assert holds(op, expected, {"v": good})
    assert not holds(op, expected, {"v": bad})


@pytest.mark.parametrize(("op", "expected", "good", "bad"), CASES)
def test_quantifier_all_needs_every_value(op: str, expected: Any, good: Any, bad: Any) -> None:
    assert holds(op, expected, {"v": [good, good]}, "$.v[*]", "all")
    assert not holds(op, expected, {"v": [good, bad]}, "$.v[*]", "all")


@pytest.mark.parametrize(("op", "expected", "good", "bad"), CASES)
def test_quantifier_any_needs_one_value(op: str, expected: Any, good: Any, bad: Any) -> None:
    assert holds(op, expected, {"v": [bad, good]}, "$.v[*]", "any")
    assert not holds(op, expected, {"v": [bad, bad]}, "$.v[*]", "any")


@pytest.mark.parametrize(("op", "expected", "good", "bad"), CASES)
def test_nothing_found_never_holds(op: str, expected: Any, good: Any, bad: Any) -> None:
    assert not holds(op, expected, {"other": good})
    assert not holds(op, expected, {"v": []}, "$.v[*]", "any")
    assert not holds(op, expected, {"v": []}, "$.v[*]", "all")


def test_exists_true_and_false() -> None:
    assert holds("exists", True, {"v": None})
    assert not holds("exists", True, {"w": 1})
    assert holds("exists", False, {"w": 1})
    assert not holds("exists", False, {"v": 0})
    assert holds("exists", False, {"v": []}, "$.v[*]")
    assert holds("exists", True, {"v": [1]}, "$.v[*]", "any")


@pytest.mark.parametrize(
    ("op", "expected", "value"),
    [
        ("gt", 5, "10"),
        ("lt", "z", 1),
        ("gte", 1, True),
        ("eq", 1, True),
        ("eq", "1", 1),
        ("in", [1, 2], "1"),
        ("matches", ".*", 12),
        ("contains", "a", 5),
        ("contains", 1, "1"),
        ("len_gt", 0, 12),
        ("len_lt", 5, None),
        ("gt", 1, None),
        ("gt", 1, [2]),
    ],
)
def test_type_mismatch_is_false_not_an_error(op: str, expected: Any, value: Any) -> None:
    assert not holds(op, expected, {"v": value})


def test_ne_and_not_in_hold_across_types() -> None:
    assert holds("ne", 1, {"v": True})
    assert holds("not_in", ["1"], {"v": 1})


def test_matches_is_whole_value() -> None:
    assert holds("matches", "ab", {"v": "ab"})
    assert not holds("matches", "ab", {"v": "xaby"})
    assert not holds("matches", "a|ab", {"v": "abc"})


def test_nested_and_quoted_simple_paths() -> None:
    args = {"a": {"b-c": [{"d": 7}]}}
    assert holds("eq", 7, args, "$.a['b-c'][0].d")
    assert holds("eq", 7, args, '$["a"]["b-c"][0]["d"]')
    assert not holds("eq", 7, args, "$.a['b-c'][1].d")
    assert not holds("exists", True, {"a": "str"}, "$.a.b")
    assert not holds("exists", True, {"a": {"0": 1}}, "$.a[0]")


def test_root_path_sees_whole_args() -> None:
    assert holds("len_gt", 1, {"a": 1, "b": 2}, "$")


def test_filter_and_recursive_paths() -> None:
    args = {"items": [{"n": 1, "tag": "a"}, {"n": 5, "tag": "b"}], "deep": {"tag": "a"}}
    assert holds("eq", "b", args, "$.items[?(@.n > 2)].tag")
    assert holds("in", ["a", "b"], args, "$..tag")
    assert not holds("eq", "a", args, "$..tag")
    assert holds("eq", "a", args, "$..tag", "any")


@pytest.mark.parametrize("path", ["$", "$.a", "$.a.b", "$['a']['b']", "$.a.list[1]", "$.missing", "$.a.b.c"])
def test_fast_path_agrees_with_jsonpath_ng(path: str) -> None:
    args = {"a": {"b": {"c": 1}, "list": [10, 20]}}
    assert compile_path(path)(args) == [m.value for m in jsonpath_parse(path).find(args)]


def test_args_that_are_not_objects() -> None:
    assert not holds("eq", 1, None)
    assert not holds("eq", 1, [1])
    assert holds("eq", "x", "x", "$")


@pytest.mark.parametrize(
    ("path", "ops", "key"),
    [
        ("$.v", [], ""),
        ("$.v", [("eq", 1), ("ne", 2)], ""),
        ("v", [("eq", 1)], "path"),
        ("$.v[", [("eq", 1)], "path"),
        ("$.v", [("matches", "([a-z")], "matches"),
        ("$.v", [("matches", 5)], "matches"),
        ("$.v", [("in", "abc")], "in"),
        ("$.v", [("len_gt", "3")], "len_gt"),
        ("$.v", [("gt", [1])], "gt"),
        ("$.v", [("exists", "yes")], "exists"),
    ],
)
def test_bad_conditions_name_the_key(path: str, ops: list[tuple[str, Any]], key: str) -> None:
    with pytest.raises(ConditionError) as err:
        compile_condition(path, ops)
    assert err.value.key == key
