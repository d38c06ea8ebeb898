"""The Guard-Signature scheme: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from examples import approver
from guard.approvals.signature import SignatureError, sign, signer_of, verify

SECRET = "s3cret-finance"
BODY = b'{"type":"approval.requested","approval_id":"apr_1"}'
NOW = 1_800_000_000


def test_header_is_the_documented_hmac() -> None:
    expected = hmac.new(SECRET.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, NOW) == f"t={NOW},v1={expected}"


def test_good_signature_verifies_inside_the_window() -> None:
    verify(sign(SECRET, BODY, NOW), BODY, SECRET, now=NOW)
    verify(sign(SECRET, BODY, NOW - 300), BODY, SECRET, now=NOW)
    verify(sign(SECRET, BODY, NOW + 300), BODY, SECRET, now=NOW)


@pytest.mark.parametrize("skew", [-301, 301, -86_400])
def test_stale_or_future_timestamps_are_refused(skew: int) -> None:
    with pytest.raises(SignatureError, match="window"):
        verify(sign(SECRET, BODY, NOW + skew), BODY, SECRET, now=NOW)


@pytest.mark.parametrize(
    ("header", "body", "secret"),
    [
        (sign(SECRET, BODY, NOW), BODY + b" ", SECRET),  # body changed
        (sign(SECRET, BODY, NOW), BODY, "other-secret"),  # another secret
        (sign(SECRET, BODY, NOW).replace(f"t={NOW}", f"t={NOW + 1}"), BODY, SECRET),  # t changed
        (f"t={NOW},v1=" + "0" * 64, BODY, SECRET),
    ],
)
def test_bad_signatures_are_refused(header: str, body: bytes, secret: str) -> None:
    with pytest.raises(SignatureError, match="does not match"):
        verify(header, body, secret, now=NOW)


@pytest.mark.parametrize("header", ["", "garbage", f"t={NOW}", "v1=abc", "t=abc,v1=abc", "t=-5,v1=ab"])
def test_malformed_headers_are_refused(header: str) -> None:
    with pytest.raises(SignatureError, match="malformed"):
        verify(header, BODY, SECRET, now=NOW)


def test_any_of_several_v1_values_may_match() -> None:
    good = sign(SECRET, BODY, NOW)
    verify(f"{good},v1={'f' * 64}", BODY, SECRET, now=NOW)


def test_signer_of_names_the_webhook_whose_secret_signed() -> None:
    secrets = {"ops": "ops-secret", "finance": SECRET}
    assert signer_of(sign(SECRET, BODY, NOW), BODY, secrets, now=NOW) == "finance"
    assert signer_of(sign("ops-secret", BODY, NOW), BODY, secrets, now=NOW) == "ops"
    with pytest.raises(SignatureError):
        signer_of(sign("nobody", BODY, NOW), BODY, secrets, now=NOW)
    with pytest.raises(SignatureError, match="window"):
        signer_of(sign(SECRET, BODY, NOW - 1000), BODY, secrets, now=NOW)


def test_the_example_receiver_agrees_with_the_guard() -> None:
    header = sign(SECRET, BODY)
    assert approver.verify(header, BODY, SECRET)
    assert not approver.verify(header, BODY, "wrong")
    assert not approver.verify(sign(SECRET, BODY, NOW - 10_000), BODY, SECRET)
    verify(approver.sign(SECRET, BODY), BODY, SECRET)
