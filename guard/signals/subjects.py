"""Subject identifiers (RFC 9493) and who they name in guard.

Formats: `iss_sub`, `email`, `uri` (a SPIFFE ID names a workload), `opaque`, and `complex`
(its members, e.g. `user`, `application`, `device`, each one of the simple formats). Any other
format is refused (`SubjectError`), before the SET's jti is used up.

Who a subject names is decided by two small functions, so the keys can change in one place:
- `agent_candidates`: the agent subs it may be (an inventory entry or agent seen, a SPIFFE ID,
  an OAuth client `client:<client_id>`);
- `person_keys`: how a person appears in tasks (`requested_by`, the signed-in user who
  consented) and as an agent's `owner` — compared case-insensitively.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

__all__ = ["FORMATS", "SubjectError", "SubjectId", "agent_candidates", "parse_subject", "person_keys", "same_person",
           "sessions_ended_key"]

FORMATS = ("iss_sub", "email", "uri", "opaque", "complex")
_FIELDS = {"iss_sub": ("iss", "sub"), "email": ("email",), "uri": ("uri",), "opaque": ("id",)}
_MAX_VALUE = 1024


class SubjectError(ValueError):
    """A subject guard cannot read (unknown format, missing or oversized member)."""


@dataclass(frozen=True, slots=True)
class SubjectId:
    format: str
    values: tuple[tuple[str, str], ...]  # (member name, value), e.g. (("iss", ...), ("sub", ...))

    def get(self, name: str) -> str:
        return dict(self.values)[name]

    def describe(self) -> str:
        """How the audit names the subject (its format and value, never more than 200 characters)."""
        return f"{self.format}:" + "|".join(v for _, v in self.values)[:200]


def _simple(raw: Any, where: str) -> SubjectId:
    if not isinstance(raw, dict):
        raise SubjectError(f"{where}: a subject identifier is an object")
    fmt = raw.get("format")
    if fmt not in _FIELDS:
        raise SubjectError(f"{where}: unknown subject format {str(fmt)[:40]!r} (guard reads {', '.join(FORMATS)})")
    values = []
    for name in _FIELDS[fmt]:
        v = raw.get(name)
        if not isinstance(v, str) or not 0 < len(v) <= _MAX_VALUE:
            raise SubjectError(f"{where}: format {fmt} needs {name} (a string of 1 to {_MAX_VALUE} characters)")
        values.append((name, v))
    return SubjectId(str(fmt), tuple(values))


def parse_subject(raw: Any) -> list[SubjectId]:
    """The simple identifiers a subject is made of (one, or each member of a `complex` one)."""
    if isinstance(raw, dict) and raw.get("format") == "complex":
        members = [(k, v) for k, v in raw.items() if k != "format"]
        if not members or len(members) > 8:
            raise SubjectError("a complex subject has 1 to 8 members")
        return [_simple(v, f"complex.{k}") for k, v in members]
    return [_simple(raw, "subject")]


def agent_candidates(s: SubjectId) -> list[str]:
    """The agent subs a simple identifier may name."""
    if s.format == "uri":
        return [s.get("uri")]
    if s.format == "iss_sub":
        return [s.get("sub"), f"client:{s.get('sub')}"]
    if s.format == "opaque":
        return [s.get("id"), f"client:{s.get('id')}"]
    return []


def person_keys(s: SubjectId) -> set[str]:
    """How the person a simple identifier may name is written in `requested_by` and `owner`,
    casefolded. People signed in through `sso` are keyed `<iss>#<sub>` (guard.oauth.sso.person_key);
    an `iss_sub` also names a plain `sub` written as an owner or `requested_by` (a revocation too many
    rather than one too few)."""
    if s.format == "email":
        return {s.get("email").casefold()}
    if s.format == "iss_sub":
        return {f"{s.get('iss')}#{s.get('sub')}".casefold(), s.get("sub").casefold()}
    if s.format == "opaque":
        return {s.get("id").casefold()}
    uri = s.get("uri")
    return {uri.removeprefix("mailto:").casefold()} if uri.startswith("mailto:") else set()


def same_person(written: str | None, keys: set[str]) -> bool:
    """Whether a `requested_by` or `owner` value names one of `keys`."""
    return written is not None and written.casefold() in keys


def sessions_ended_key(person_key: str) -> str:
    """The grant key under which the time a person's sessions were ended is kept (guard.oauth.sessions)."""
    return hashlib.sha256(person_key.casefold().encode()).hexdigest()
