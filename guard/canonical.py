"""Canonical JSON and the digests built on it (contract: keys sorted, `,` and `:`, UTF-8)."""

from __future__ import annotations

import binascii
import hashlib
import json
from collections.abc import Callable
from typing import Any

import orjson

__all__ = [
    "args_digest", "b64url", "call_digest", "canonical_json", "compact_json", "json_encoder", "sha256_hex",
    "strict_loads",
]


def _no_default(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# orjson writes a few values differently from json.dumps, or not at all: those go to the standard
# library's encoder instead. Subclasses of the JSON types (orjson's `default` sees them, and
# refuses them here), ints beyond 64 bits, keys that are not strings and nesting deeper than 254
# raise. Floats below 1e-4 with a one-digit exponent are written differently: orjson `1e-7` and
# `0.000025`, json `1e-07` and `2.5e-05` (every other float, the same).
_PASS = orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_DATETIME
_DIGITS = b"0123456789"


def _small_float(out: bytes) -> bool:
    """Whether orjson's bytes may hold such a float: a digit, `e-`, one digit, no digit after
    it; or `.0000`. (A text that reads so is written by json too: the same bytes, more slowly.
    Searched, not matched by a regular expression: tried at every position, one cost more than
    orjson saves.)"""
    at = out.find(b"e-")
    while at >= 0:
        exponent = out[at + 2:at + 4]
        if at > 0 and out[at - 1] in _DIGITS and exponent[:1].isdigit() and not exponent[1:].isdigit():
            return True
        at = out.find(b"e-", at + 2)
    return out.find(b".0000") >= 0  # (not `in`: bytes.__contains__ tries its argument as an int first, and raises)


_JSON_TYPES = (str, int, float, dict, list, tuple)


def json_encoder(sort_keys: bool, default: Callable[[Any], Any] = _no_default) -> Callable[[Any], bytes]:
    """A compact (`,` and `:`), UTF-8 (not ASCII-escaped) JSON encoder: what
    `json.dumps(value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False,
    default=default).encode()` gives, but for the form of small floats (orjson `1e-7`, json
    `1e-07`: the same number). `canonical_json` gives json's bytes exactly.

    orjson writes it, in about a tenth of the instructions of the standard library's C encoder
    (an allowed call encodes six values: its arguments, two audit records, two token payloads,
    a log line). What orjson cannot write as json does goes to the standard library's encoder
    (above). Not JSON, and written differently: NaN and the infinities (orjson: null) and the
    types orjson knows besides JSON's (UUID, Enum); the guard builds neither."""
    std = json.JSONEncoder(sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False, default=default).encode
    option = _PASS | orjson.OPT_SORT_KEYS if sort_keys else _PASS

    def other(value: Any) -> Any:
        if isinstance(value, _JSON_TYPES):  # a subclass: json.dumps writes it as its base type
            raise TypeError("a subclass of a JSON type")
        return default(value)

    def encode(value: Any) -> bytes:
        try:
            return orjson.dumps(value, other, option)
        except TypeError:  # orjson.JSONEncodeError
            return std(value).encode()

    return encode


compact_json = json_encoder(sort_keys=False)
_sorted = json_encoder(sort_keys=True)
_sorted_std = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def canonical_json(value: Any) -> bytes:
    """Canonical JSON (digests, audit hashes): json's bytes exactly, small floats included."""
    out = _sorted(value)
    return _sorted_std(value).encode() if _small_float(out) else out


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
    does with these options, with the decoder built once instead of on every call.)

    Bytes that orjson parses and writes back identically are their value's compact form, which
    holds no duplicate key (a dict has none) and nothing parsers read differently: their value
    is returned at once (a quarter of the standard library's instructions; compact JSON is what
    most agent frameworks send). Any other input takes the standard library's strict parse."""
    if isinstance(data, bytes):
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
        else:
            if orjson.dumps(value) == data:  # the input is exactly its value's compact form (see above)
                return value
    if isinstance(data, str):
        if data.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", data, 0)
    else:
        data = data.decode(json.detect_encoding(data), "surrogatepass")
    return _strict.decode(data)
