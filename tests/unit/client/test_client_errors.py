"""guard.client raises guard's own error classes: every code of guard/errors.py comes back as its class."""

from __future__ import annotations

import pytest

from guard import errors
from guard.client import ApprovalRequired, from_problem

CLASSES = [c for c in (getattr(errors, n) for n in errors.__all__)  # each code of its own
           if isinstance(c, type) and issubclass(c, errors.GuardError) and c is not errors.GuardError
           and getattr(c.__mro__[1], "code", None) != c.code]


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_each_problem_becomes_the_class_guard_raised(cls: type[errors.GuardError]) -> None:
    sent = cls("why", task_id="task_1", rule_id="r").problem()
    got = from_problem(cls.status, sent)
    assert type(got) is cls and got.status == cls.status and got.code == cls.code
    assert got.detail == "why" and got.extra == {"task_id": "task_1", "rule_id": "r"}


def test_approval_required_carries_its_approval_id() -> None:
    got = from_problem(403, errors.ApprovalRequired("wait", approval_id="apr_1").problem())
    assert isinstance(got, ApprovalRequired) and got.approval_id == "apr_1"


def test_an_unknown_code_keeps_its_status_under_the_nearest_class() -> None:
    assert type(from_problem(403, {"code": "new_refusal", "detail": "d"})) is errors.Forbidden
    unknown = from_problem(503, {"code": "new_outage", "detail": "d"})  # 503 is shared: the base class
    assert type(unknown) is errors.GuardError and unknown.status == 503 and unknown.code == "new_outage"
