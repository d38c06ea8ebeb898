"""Exfiltration: which values a task received, and whether a call's arguments carry one of them.

A value is remembered as digests: of the whole value and of each run of 8 or more letters and
digits in it. A call's arguments are cut into the same tokens (and so are the texts their base64,
hex and percent-encoded runs decode to), and each token's digest is looked up: one hash lookup per
token, never a scan per remembered value. The digests are keyed (domain-separated) sha256,
truncated to 128 bits."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import re2

__all__ = ["MAX_TOKENS", "WHOLE_MIN", "arg_digests", "strings", "token_digest", "value_digests"]

WHOLE_MIN = 8  # a private result's string is remembered whole only from this length (as its runs are)
MAX_TOKENS = 20_000  # per value set: a bound on what one call may make the guard remember or look up
_RUN = re2.compile(r"[A-Za-z0-9]{8,}")
_B64_RUN = re2.compile(r"[A-Za-z0-9+/_\-]{11,}={0,2}")  # 11: the unpadded base64 of 8 bytes
_HEX_RUN = re2.compile(r"(?:[0-9A-Fa-f]{2}){6,}")
_PERCENT = re2.compile(r"%[0-9A-Fa-f]{2}")


def token_digest(token: str) -> str:
    return hashlib.sha256(b"guard-flow\x00" + token.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _tokens(text: str) -> Iterator[str]:
    yield text
    for m in _RUN.finditer(text):
        yield m.group(0)


def value_digests(value: str, whole_min: int = 0) -> set[str]:
    """The digests a value is remembered by: itself whole (when at least `whole_min` characters:
    a result's "1" or "ok" would otherwise match any argument that says so) and its runs of 8+
    letters and digits."""
    return {token_digest(t) for t in _tokens(value) if t is not value or len(t) >= whole_min}


def strings(value: Any, limit: int, keys: bool = True) -> list[str]:
    """The strings of a JSON value (object keys too, with `keys`), at most `limit` characters in all."""
    out: list[str] = []
    stack = [value]
    left = limit
    while stack and left > 0:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item[:left])
            left -= len(item)
        elif isinstance(item, dict):
            for k, v in item.items():
                stack.append(v)
                if keys:
                    stack.append(str(k))
        elif isinstance(item, list):
            stack.extend(item)
    return out


def _decoded(text: str) -> Iterator[str]:
    """The texts hidden in base64, hex and percent-encoded runs of `text`."""
    if "%" in text and _PERCENT.search(text) is not None:
        yield unquote(text.replace("+", " "))
    for m in _HEX_RUN.finditer(text):
        yield bytes.fromhex(m.group(0)).decode("utf-8", "ignore")
    for m in _B64_RUN.finditer(text):
        decoded = _b64(m.group(0).rstrip("="))
        if decoded is not None:
            yield decoded.decode("utf-8", "ignore")


def _b64(run: str) -> bytes | None:
    padded = run + "=" * (-len(run) % 4)
    alphabet = b"-_" if ("-" in run or "_" in run) else b"+/"
    try:
        return base64.b64decode(padded, altchars=alphabet, validate=True)
    except (binascii.Error, ValueError):
        return None


def arg_digests(texts: list[str]) -> set[str]:
    """The digests to look up for a call's argument strings: each string whole and its runs, and
    the same of what their encoded runs decode to (one level of base64, hex or percent-encoding)."""
    out: set[str] = set()
    for text in texts:
        for token in _tokens(text):
            out.add(token_digest(token))
        for decoded in _decoded(text):
            if decoded:
                out.update(token_digest(t) for t in _tokens(decoded))
        if len(out) >= MAX_TOKENS:
            break
    return out
