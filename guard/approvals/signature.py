"""The `Guard-Signature` scheme of approval webhooks.

A request to an approver's webhook carries `Guard-Signature: t=<unix seconds>,v1=<hex>`, where
`<hex>` = HMAC-SHA256(secret, "<t>.<body>"). The same scheme signs decisions that an approver
posts back; a signature is compared in constant time against every configured secret.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

__all__ = ["SIGNATURE_HEADER", "TOLERANCE_S", "SignatureError", "sign", "signed_at", "signer_of", "verify"]

SIGNATURE_HEADER = "Guard-Signature"
TOLERANCE_S = 300  # a signature whose t is further than this from our clock is refused


class SignatureError(Exception):
    """A `Guard-Signature` that is malformed, stale, or does not match."""


def _mac(secret: str, t: int, body: bytes) -> str:
    return hmac.new(secret.encode(), str(t).encode() + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, t: int | None = None) -> str:
    """The `Guard-Signature` header value for `body`, timestamped `t` (default: now)."""
    t = int(time.time()) if t is None else t
    return f"t={t},v1={_mac(secret, t, body)}"


def _parse(header: str) -> tuple[int, list[str]]:
    t: int | None = None
    macs: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit() and len(value) < 16:
            t = int(value)
        elif key == "v1" and value:
            macs.append(value)
    if t is None or not macs:
        raise SignatureError("malformed signature header")
    return t, macs


def signed_at(header: str) -> int:
    """The `t` of a signature header (SignatureError when malformed)."""
    return _parse(header)[0]


def verify(header: str, body: bytes, secret: str, now: float | None = None, tolerance: float = TOLERANCE_S) -> None:
    """Raise SignatureError unless `header` signs `body` with `secret` within `tolerance` s of `now`."""
    t, macs = _parse(header)
    now = time.time() if now is None else now
    if abs(now - t) > tolerance:
        raise SignatureError("signature timestamp outside the allowed window")
    expected = _mac(secret, t, body)
    if not any(hmac.compare_digest(expected.encode(), m.encode()) for m in macs):
        raise SignatureError("signature does not match")


def signer_of(header: str, body: bytes, secrets: Mapping[str, str], now: float | None = None) -> str:
    """The name of the webhook whose secret signed `body`; SignatureError when none did."""
    t, _ = _parse(header)
    now = time.time() if now is None else now
    if abs(now - t) > TOLERANCE_S:
        raise SignatureError("signature timestamp outside the allowed window")
    for name, secret in secrets.items():
        try:
            verify(header, body, secret, now)
        except SignatureError:
            continue
        return name
    raise SignatureError("signature does not match")
