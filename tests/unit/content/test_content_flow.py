"""Exfiltration digests, property-tested: a remembered value is found in arguments verbatim, in
base64 (standard and URL-safe), in hex and percent-encoded, inside other text; unrelated text is not."""

from __future__ import annotations

import base64
import string
from collections.abc import Callable
from urllib.parse import quote, quote_plus

from hypothesis import given, settings
from hypothesis import strategies as st

from guard.content.flow import arg_digests, strings, value_digests

ALNUM = string.ascii_letters + string.digits
# a private value: words, at least one of them a run of 8+ letters and digits (what is remembered)
runs = st.text(alphabet=ALNUM, min_size=8, max_size=40)
words = st.text(alphabet=ALNUM + " .,;:-'!?éü", max_size=40)
values = st.builds(lambda a, r, b: f"{a} {r} {b}".strip(), words, runs, words)
around = st.text(alphabet=string.ascii_letters + " ,.\n", max_size=30)

ENCODINGS: dict[str, Callable[[str], str]] = {
    "verbatim": lambda v: v,
    "base64": lambda v: base64.b64encode(v.encode()).decode(),
    "base64url": lambda v: base64.urlsafe_b64encode(v.encode()).decode().rstrip("="),
    "hex": lambda v: v.encode().hex(),
    "HEX": lambda v: v.encode().hex().upper(),
    "percent": lambda v: quote(v, safe=""),
    "percent-plus": lambda v: quote_plus(v),
}


@settings(max_examples=150, deadline=None)
@given(value=values, encoding=st.sampled_from(sorted(ENCODINGS)), before=around, after=around)
def test_a_remembered_value_is_found_in_each_encoding(value: str, encoding: str, before: str, after: str) -> None:
    remembered = value_digests(value)
    encoded = ENCODINGS[encoding](value)
    args = {"to": "x@example.com", "body": f"{before} {encoded} {after}"}
    assert remembered & arg_digests(strings(args, 1 << 20)), (value, encoding)


@settings(max_examples=150, deadline=None)
@given(value=values, other=st.text(alphabet=ALNUM + " ", min_size=1, max_size=60))
def test_text_sharing_no_run_with_the_value_is_not_found(value: str, other: str) -> None:
    remembered = value_digests(value)
    tokens = {t for t in value.split() if len(t) >= 8}
    if value in other or any(t in other for t in tokens) or any(t in value for t in other.split() if len(t) >= 8):
        return  # shares a run: found by design
    found = remembered & arg_digests([other])
    assert not found


def test_a_value_is_remembered_whole_and_by_its_runs() -> None:
    digests = value_digests("call +44 20 7946 0958 about BLUEHERON7731")
    assert len(digests) == 2  # the whole value and its one run of 8+ letters and digits
    assert value_digests("BLUEHERON7731") <= digests
    assert not value_digests("+44 20 7946 0958") & digests  # a shorter value is not a run of this one
