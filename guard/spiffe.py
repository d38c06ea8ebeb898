"""SPIFFE IDs: what a valid one looks like, and whether one matches a glob."""

from __future__ import annotations

import re
from fnmatch import fnmatchcase

__all__ = ["spiffe_matches", "valid_spiffe_id"]

_SPIFFE_ID = re.compile(r"spiffe://[a-z0-9._-]+(/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*")


def valid_spiffe_id(value: str) -> bool:
    """A SPIFFE ID: `spiffe://<trust domain>/<path>`, no empty, `.` or `..` segments."""
    if not _SPIFFE_ID.fullmatch(value) or len(value) > 2048:
        return False
    return all(seg not in (".", "..") for seg in value[len("spiffe://"):].split("/")[1:])


def spiffe_matches(pattern: str, spiffe_id: str) -> bool:
    return fnmatchcase(spiffe_id, pattern)
