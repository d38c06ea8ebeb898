"""The client raises guard's own error tree (guard/errors.py): a refusal the guard answers with
problem details becomes the class of its `code` (`ApprovalRequired`, `Denied`, `TaskInactive` …,
each a `GuardError` with `status`, `code`, `detail` and the problem's other fields in `extra`).
An answer of the tool itself that is not a success is a `ToolError`."""

from __future__ import annotations

from typing import Any

from guard import errors
from guard.errors import ApprovalDenied, ApprovalRequired, GuardError

__all__ = ["ApprovalDenied", "ApprovalRequired", "GuardError", "ToolError", "from_problem"]


class ToolError(Exception):
    """The tool answered (through guard) with a status that is not a success."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"the tool answered {status}")
        self.status = status
        self.body = body


def _registry() -> tuple[dict[str, type[GuardError]], dict[int, type[GuardError]]]:
    """Each code's class; and for a status, the one class directly under GuardError that has it
    (403 Forbidden, 404 NotFound …; a status several share, like 503, maps to none). A class with
    its base's code (InvalidDpopProof, HTTPProblem) only renders differently: the base stands for it."""
    by_code: dict[str, type[GuardError]] = {}
    direct: dict[int, list[type[GuardError]]] = {}
    for name in errors.__all__:
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, GuardError) and cls is not GuardError \
                and getattr(cls.__mro__[1], "code", None) != cls.code:
            by_code[cls.code] = cls
            if cls.__mro__[1] is GuardError:
                direct.setdefault(cls.status, []).append(cls)
    return by_code, {status: found[0] for status, found in direct.items() if len(found) == 1}


_BY_CODE, _BY_STATUS = _registry()


def from_problem(status: int, problem: dict[str, Any]) -> GuardError:
    """The GuardError of a problem-details answer (by its code; else the class of its status)."""
    code = str(problem.get("code", ""))
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status, GuardError)
    extra = {k: v for k, v in problem.items() if k not in ("type", "title", "status", "detail", "code")}
    err = cls(str(problem.get("detail") or ""), **extra)
    if cls is GuardError or cls.status != status:  # a code this client does not know: keep what was said
        err.status = status  # type: ignore[misc]
        err.code = code or err.code  # type: ignore[misc]
    return err
