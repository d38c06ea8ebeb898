"""Canonical JSON and the digests built on it (contract: keys sorted, `,` and `:`, UTF-8)."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

__all__ = ["args_digest", "b64url", "call_digest", "canonical_json", "sha256_hex", "strict_loads"]


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def call_digest(method: str, path_with_query: str, body: bytes) -> str:
    """base64url(sha256(METHOD "\\n" path-with-query "\\n" body)), no padding."""
    h = hashlib.sha256()
    h.update(method.upper().encode())
    h.update(b"\n")
    h.update(path_with_query.encode())
    h.update(b"\n")
    h.update(body)
    return b64url(h.digest())


def args_digest(tool: str, action: str, args: Any) -> str:
    """The digest that binds an approval to one exact call: tool, action, canonical args."""
    return sha256_hex(canonical_json({"tool": tool, "action": action, "args": args}))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key in a JSON object")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def strict_loads(data: bytes | str) -> Any:
    """JSON as the guard decides on it, refusing what parsers disagree about: duplicate keys
    (which one wins differs between the guard and a tool) and NaN/Infinity."""
    return json.loads(data, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
