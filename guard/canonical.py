"""Canonical JSON and the digests built on it (contract: keys sorted, `,` and `:`, UTF-8)."""

from __future__ import annotations

import binascii
import hashlib
import json
from collections.abc import Callable
from functools import partial
from json.encoder import c_encode_basestring, c_make_encoder  # type: ignore[attr-defined]
from typing import Any

__all__ = [
    "args_digest", "b64url", "call_digest", "canonical_json", "compact_json", "json_encoder", "sha256_hex",
    "strict_loads",
]


def _no_default(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def json_encoder(sort_keys: bool, default: Callable[[Any], Any] = _no_default) -> Callable[[Any], str]:
    """A compact (`,` and `:`), UTF-8 (not ASCII-escaped) JSON encoder, built once: the same
    C encoder `json.dumps` uses, without building a JSONEncoder on every call."""
    if c_make_encoder is None:  # an interpreter without the C accelerator
        return partial(json.dumps, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False, default=default)
    encode = c_make_encoder(None, default, c_encode_basestring, None, ":", ",", sort_keys, False, True)
    return lambda value: "".join(encode(value, 0))


compact_json = json_encoder(sort_keys=False)
_canonical = json_encoder(sort_keys=True)


def canonical_json(value: Any) -> bytes:
    return _canonical(value).encode()


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def b64url(data: bytes) -> str:
    """base64url without padding (what base64.urlsafe_b64encode gives, without its two layers of
    Python around binascii: five encodings a call)."""
    return binascii.b2a_base64(data, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


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


_strict = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def strict_loads(data: bytes | str) -> Any:
    """JSON as the guard decides on it, refusing what parsers disagree about: duplicate keys
    (which one wins differs between the guard and a tool) and NaN/Infinity. (What `json.loads`
    does with these options, with the decoder built once instead of on every call.)"""
    if isinstance(data, str):
        if data.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
    else:
        data = data.decode(json.detect_encoding(data), "surrogatepass")
    return _strict.decode(data)
