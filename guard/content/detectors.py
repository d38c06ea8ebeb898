"""The content detectors: `secrets` and `pii`, run over strings and JSON values.

Every pattern is RE2 (google-re2): matching is linear in the text, so no argument can make a
detector backtrack. A regex only proposes a candidate; what can be checked is checked before it
counts: phone numbers with libphonenumber (`phonenumbers`), card numbers with Luhn and IBANs with
mod 97 (`python-stdnum`), high-entropy strings by their entropy and the word before them, JWTs by
their decoded header and claims (the guard's own tokens are not findings)."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import phonenumbers
import re2
from stdnum import iban as stdnum_iban
from stdnum import luhn

__all__ = ["DETECTORS", "KIND_OF", "Detectors", "Finding", "Hit", "Scan"]

DETECTORS = ("secrets", "pii")
KIND_OF = {"secrets": "secret", "pii": "pii"}  # detector -> the kind its findings carry (redact names kinds)

# Well-known formats, one named group each (the group name is the finding's label). Sources: the
# providers' own documentation of their key prefixes and lengths.
_SECRET_FORMATS = {
    "aws_access_key_id": r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b",
    "aws_secret_access_key": r"(?i:aws_?secret_?access_?key)[\"']?\s{0,3}[:=]\s{0,3}[\"']?[A-Za-z0-9/+]{40}\b",
    "gcp_api_key": r"\bAIza[0-9A-Za-z_\-]{35}\b",
    "gcp_service_account_key": r"\"private_key_id\"\s{0,3}:\s{0,3}\"[0-9a-f]{40}\"",
    "azure_storage_key": r"AccountKey=[A-Za-z0-9+/]{86}==",
    "github_token": r"\bgh[pousr]_[A-Za-z0-9]{36,255}\b",
    "github_fine_grained_pat": r"\bgithub_pat_[A-Za-z0-9_]{82}\b",
    "gitlab_token": r"\bgl(?:pat|dt|rt|ptt|cbt|oas)-[A-Za-z0-9_\-]{20,64}\b",
    "bitbucket_app_password": r"\bATBB[A-Za-z0-9_=.\-]{28,64}\b",
    "slack_token": r"\bxox[abposr]-(?:[0-9]+-)?[A-Za-z0-9\-]{10,250}\b",
    "slack_webhook": r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9/_\-]{20,120}",
    "discord_webhook": r"https://(?:ptb\.|canary\.)?discord(?:app)?\.com/api/webhooks/[0-9]{17,20}/[A-Za-z0-9_\-]{60,70}",
    "telegram_bot_token": r"\b[0-9]{8,10}:AA[A-Za-z0-9_\-]{33}\b",
    "stripe_key": r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{24,247}\b",
    "stripe_webhook_secret": r"\bwhsec_[A-Za-z0-9]{32,64}\b",
    "square_token": r"\b(?:EAAA|sq0atp-|sq0csp-)[A-Za-z0-9_\-]{22,60}\b",
    "paypal_braintree_token": r"\baccess_token\$(?:production|sandbox)\$[0-9a-z]{16}\$[0-9a-f]{32}\b",
    "twilio_api_key": r"\bSK[0-9a-f]{32}\b",
    "sendgrid_api_key": r"\bSG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43}\b",
    "mailgun_api_key": r"\bkey-[0-9a-f]{32}\b",
    "openai_api_key": r"\bsk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,200}T3BlbkFJ[A-Za-z0-9_\-]{20,200}\b",
    "anthropic_api_key": r"\bsk-ant-(?:api|admin)[0-9]{2}-[A-Za-z0-9_\-]{80,120}\b",
    "huggingface_token": r"\bhf_[A-Za-z]{34}\b",
    "npm_token": r"\bnpm_[A-Za-z0-9]{36}\b",
    "pypi_token": r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_\-]{50,300}",
    "private_key": r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----"
                   r"(?s:.*?)-----END (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----",
    "private_key_header": r"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY(?: BLOCK)?-----",
    "jwt": r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{16,}",
    # a high-entropy value right after a word that says what it is: api_key=..., "token": "..."
    "keyword_secret": r"(?i:api[_\-]?key|apikey|access[_\-]?key|secret|token|passw(?:or)?d|credential|auth)"
                      r"[A-Za-z0-9_\-]{0,20}[\"']?\s{0,3}[:=]\s{0,3}(?i:bearer\s)?[\"']?"
                      r"(?P<keyword_value>[A-Za-z0-9+/_.=~\-]{20,})",
}

# Candidates only: each is checked by its validator before it is a finding.
_PII_FORMATS = {
    "email": r"\b[A-Za-z0-9][A-Za-z0-9._%+\-]{0,63}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}\.){1,8}[A-Za-z]{2,24}\b",
    "iban": r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
    "payment_card": r"\b[0-9](?:[ \-]?[0-9]){12,18}\b",
    "phone": r"\+[1-9](?:[ .\-]?\(?[0-9]\)?){6,16}[0-9]",
}

_TOKEN_CHARS = re2.compile(r"[A-Za-z0-9+/_.=~\-]{20,}")
_CARD_IIN = re2.compile(r"4|5[1-5]|2[2-7]|3[47]|3[068]|35|6(?:011|5|4[4-9])|62")


def _compile(formats: dict[str, str]) -> Any:
    return re2.compile("|".join(f"(?P<{name}>{pattern})" for name, pattern in formats.items()))


_SECRETS_RE = _compile(_SECRET_FORMATS)
# pii: one pattern a family, each run only when the text holds the character it cannot match without
_EMAIL_RE = _compile({"email": _PII_FORMATS["email"]})
_PHONE_RE = _compile({"phone": _PII_FORMATS["phone"]})
_NUMBER_RE = _compile({k: _PII_FORMATS[k] for k in ("iban", "payment_card")})
_DIGITS = tuple(bytes([c]) for c in b"0123456789")
_SECRET_MIN = 15  # no secret format is shorter (xoxb- and 10 characters)
_PII_MIN = 6  # nor a pii one (a@b.co)


def _chars(data: bytes, offset: int) -> int:
    """The character offset of a byte offset of UTF-8 `data`."""
    return len(data[:offset].decode("utf-8", "surrogatepass"))
_KEYWORD_VALUE = _SECRETS_RE.groupindex["keyword_value"]  # re2 spans take a group number


@dataclass(frozen=True, slots=True)
class Hit:
    """A finding's span in one string (`label`: the format, e.g. github_token, email)."""

    detector: str
    label: str
    start: int
    end: int

    @property
    def kind(self) -> str:
        return KIND_OF[self.detector]


@dataclass(frozen=True, slots=True)
class Finding:
    """A finding in a JSON value: where (a JSONPath) and a digest; the value itself stays out of
    repr and of `detail()` (it is never audited nor logged)."""

    detector: str
    label: str
    location: str
    digest: str
    value: str = field(repr=False, compare=False)

    @property
    def kind(self) -> str:
        return KIND_OF[self.detector]

    def detail(self) -> dict[str, str]:
        """The `content_flagged` audit detail."""
        return {"detector": self.detector, "kind": self.kind, "location": self.location, "digest": self.digest}


@dataclass(slots=True)
class Scan:
    """What inspecting one value found; `uninspected` when it was cut at `max_bytes`."""

    findings: list[Finding] = field(default_factory=list)
    uninspected: bool = False
    budget: int = 0  # characters left to inspect

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(f.kind for f in self.findings)


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values()) if n else 0.0


def _random_looking(value: str) -> bool:
    """A token that looks generated: 20+ characters, lower, upper and digits mixed, ≥ 3.5 bits a
    character. Hex digests, UUIDs and git SHAs (no upper case) and words are not."""
    if len(value) < 20:
        return False
    classes = any(c.islower() for c in value) + any(c.isupper() for c in value) + any(c.isdigit() for c in value)
    return classes == 3 and entropy(value) >= 3.5


def _b64json(segment: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except ValueError:
        return None


def _digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


class Detectors:
    """The detectors `inspect.detectors` lists. `own_issuer`: JWTs the guard signed itself (its
    `iss`) are not findings: they are the guard's own task tokens and Txn-Tokens."""

    def __init__(self, names: Sequence[str], own_issuer: str | None = None) -> None:
        unknown = sorted(set(names) - set(DETECTORS))
        if unknown:
            raise ValueError(f"unknown detector(s): {', '.join(unknown)}")
        self.names = tuple(n for n in DETECTORS if n in names)
        self.own_issuer = own_issuer

    def __bool__(self) -> bool:
        return bool(self.names)

    # -- strings ------------------------------------------------------------------------------

    def scan_text(self, text: str) -> list[Hit]:
        """Every finding in one string, in order, not overlapping. RE2 runs on the UTF-8 bytes
        (its Python wrapper maps offsets back to characters on every match of a str, which costs
        more than the match); offsets are mapped back only for what is found."""
        data = text.encode("utf-8", "surrogatepass")
        hits: list[Hit] = []
        if "secrets" in self.names and len(data) >= _SECRET_MIN:
            hits.extend(self._secrets(data))
        if "pii" in self.names and len(data) >= _PII_MIN:
            hits.extend(self._pii(data))
        if hits and len(data) != len(text):  # not ASCII: byte offsets to character offsets
            hits = [Hit(h.detector, h.label, _chars(data, h.start), _chars(data, h.end)) for h in hits]
        if len(hits) > 1:
            hits.sort(key=lambda h: (h.start, -h.end))
            kept: list[Hit] = []
            for hit in hits:
                if not kept or hit.start >= kept[-1].end:
                    kept.append(hit)
            hits = kept
        return hits

    def _secrets(self, text: bytes) -> Iterator[Hit]:
        for m in _SECRETS_RE.finditer(text):
            label = m.lastgroup
            start, end = m.span()
            if label == "keyword_value":  # the inner group of keyword_secret
                label = "keyword_secret"
            if label == "keyword_secret":
                start, end = m.span(_KEYWORD_VALUE)
                value = text[start:end].decode("ascii")  # the value's pattern is ASCII only
                if not _random_looking(value) or self._own_jwt(value):
                    continue
            elif label == "jwt" and not self._foreign_jwt(text[start:end].decode("ascii")):
                continue
            elif label == "private_key_header":
                label = "private_key"
            yield Hit("secrets", str(label), start, end)

    def _foreign_jwt(self, token: str) -> bool:
        """A real JWT (header and claims decode to JSON objects with an alg) not signed by the guard."""
        parts = token.split(".")
        header, claims = _b64json(parts[0]), _b64json(parts[1])
        if not isinstance(header, dict) or not isinstance(claims, dict) or "alg" not in header:
            return False
        return not (self.own_issuer is not None and claims.get("iss") == self.own_issuer)

    def _own_jwt(self, token: str) -> bool:
        parts = token.split(".")
        if len(parts) != 3 or not parts[0].startswith("eyJ"):
            return False
        claims = _b64json(parts[1])
        return isinstance(claims, dict) and self.own_issuer is not None and claims.get("iss") == self.own_issuer

    def _pii(self, text: bytes) -> Iterator[Hit]:
        """Each family's pattern runs only when the text could hold one (a substring test in C is
        far cheaper than a call into RE2): emails need '@', international numbers '+', cards and
        IBANs digits."""
        if b"@" in text:
            yield from self._pii_matches(_EMAIL_RE, text)
        if b"+" in text:
            yield from self._pii_matches(_PHONE_RE, text)
        if len(text) >= 13 and any(d in text for d in _DIGITS):
            yield from self._pii_matches(_NUMBER_RE, text)

    def _pii_matches(self, pattern: Any, text: bytes) -> Iterator[Hit]:
        for m in pattern.finditer(text):
            label = str(m.lastgroup)
            start, end = m.span()
            value = text[start:end].decode("ascii")  # every pii pattern is ASCII only
            if label == "payment_card":
                number = _digits(value)
                if not (13 <= len(number) <= 19 and _CARD_IIN.match(number) and luhn.is_valid(number)):
                    continue
            elif label == "iban":
                if not stdnum_iban.is_valid(value):
                    continue
            elif label == "phone" and not _valid_phone(value):
                continue
            yield Hit("pii", label, start, end)

    # -- JSON values --------------------------------------------------------------------------

    def scan(self, value: Any, max_bytes: int, location: str = "$") -> Scan:
        """Every finding in a JSON value (strings, and each string of arrays and objects, keys
        named as JSONPath), inspecting at most `max_bytes` characters of text."""
        scan = Scan(budget=max_bytes)
        for (loc, _key, text), hits in self._hits(value, location, scan):
            for hit in hits:
                part = text[hit.start : hit.end]
                scan.findings.append(Finding(hit.detector, hit.label, loc, digest(part), part))
        return scan

    def _hits(self, value: Any, location: str, scan: Scan) -> list[tuple[tuple[str, str | None, str], list[Hit]]]:
        """Each string of `value` (within the budget) with its findings. The strings are joined with
        NUL (which no pattern matches, and `\b` sees as a boundary) and scanned in one pass: a
        call into RE2 per pattern family, not per string."""
        items: list[tuple[str, str | None, str]] = []
        self._collect(value, location, None, scan, items)
        if not items:
            return []
        found: list[list[Hit]] = [[] for _ in items]
        if len(items) == 1:
            found[0] = self.scan_text(items[0][2])
        else:
            starts, pos = [], 0
            for _, _, text in items:
                starts.append(pos)
                pos += len(text) + 1
            for hit in self.scan_text("\x00".join(text for _, _, text in items)):
                i = bisect_right(starts, hit.start) - 1
                base = starts[i]
                if hit.end <= base + len(items[i][2]):  # a match across two strings is none
                    found[i].append(Hit(hit.detector, hit.label, hit.start - base, hit.end - base))
        if "secrets" in self.names:
            for i, (_, key, text) in enumerate(items):
                keyed = self._keyed_secret(text, key) if not found[i] and key is not None else None
                if keyed is not None:
                    found[i].append(keyed)
        return list(zip(items, found, strict=True))

    def _collect(self, value: Any, location: str, key: str | None, scan: Scan,
                 items: list[tuple[str, str | None, str]]) -> None:
        """The strings of `value` in document order with their JSONPath and key (iterative: a
        deeply nested value cannot exhaust the stack)."""
        stack: list[tuple[Any, str, str | None]] = [(value, location, key)]
        while stack:
            item, loc, k = stack.pop()
            if isinstance(item, str):
                if scan.budget <= 0:
                    scan.uninspected = True
                    continue
                if len(item) > scan.budget:
                    item, scan.uninspected = item[: scan.budget], True
                scan.budget -= len(item)
                items.append((loc, k, item))
            elif isinstance(item, dict):
                stack.extend((v, _child(loc, str(ck)), str(ck)) for ck, v in reversed(list(item.items())))
            elif isinstance(item, list):
                stack.extend((v, f"{loc}[{i}]", k) for i, v in reversed(list(enumerate(item))))

    def _keyed_secret(self, value: str, key: str) -> Hit | None:
        """A whole string value under a key that says it is a secret (`"api_key": "..."`)."""
        if len(value) < 20 or not _keyword(key) or _TOKEN_CHARS.fullmatch(value) is None:
            return None
        if not _random_looking(value) or self._own_jwt(value):
            return None
        return Hit("secrets", "keyword_secret", 0, len(value))

    def redact(self, value: Any, kinds: frozenset[str], max_bytes: int, location: str = "$") -> tuple[Any, Scan]:
        """`value` with each finding of the given kinds replaced by `[REDACTED:<kind>]` (a copy
        where something was redacted; shapes and other values unchanged), and the scan (every
        finding, redacted or not)."""
        scan = Scan(budget=max_bytes)
        replaced: dict[str, str] = {}  # location -> the redacted string
        for (loc, _key, text), hits in self._hits(value, location, scan):
            out, last = [], 0
            for hit in hits:
                part = text[hit.start : hit.end]
                scan.findings.append(Finding(hit.detector, hit.label, loc, digest(part), part))
                if hit.kind in kinds:
                    out += [text[last : hit.start], f"[REDACTED:{hit.kind}]"]
                    last = hit.end
            if out:
                replaced[loc] = "".join(out) + text[last:]
        if not replaced:
            return value, scan
        return _replace(value, location, replaced), scan


def _replace(value: Any, location: str, replaced: dict[str, str]) -> Any:
    """A copy of `value` with the strings at the given locations replaced (as `_collect` names them;
    a string cut at the budget is replaced by its redacted beginning)."""
    if isinstance(value, str):
        return replaced.get(location, value)
    if isinstance(value, dict):
        return {k: _replace(v, _child(location, str(k)), replaced) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace(v, f"{location}[{i}]", replaced) for i, v in enumerate(value)]
    return value


_KEYWORDS = ("apikey", "api_key", "api-key", "accesskey", "access_key", "access-key", "secret", "token", "passwd",
             "password", "credential", "auth")


def _keyword(key: str) -> bool:
    """Whether a JSON key says its value is a secret (api_key, token, password, ...)."""
    lower = key.lower()
    return any(k in lower for k in _KEYWORDS)


def _valid_phone(value: str) -> bool:
    try:
        number = phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return False
    return bool(phonenumbers.is_valid_number(number))


def _child(location: str, key: str) -> str:
    if key.isascii() and key.isidentifier():  # letters, digits and '_', not first a digit
        return f"{location}.{key}"
    return f"{location}[{json.dumps(key)}]"
