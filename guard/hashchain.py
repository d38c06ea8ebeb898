"""The audit hash chain: record hashing and chain verification, below the stores (which link records
into it) and the audit package (which verifies trails); imports nothing above domain and canonical.

Each task has its own chain: `hash` = sha256 over the canonical JSON of the record without
`hash`; `prev_hash` = the previous record's hash (64 zeros first). The store assigns seq and
links the chain (every backend calls `chain_record`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import compress, repeat
from operator import is_not
from typing import Any

from guard.canonical import canonical_json, sha256_hex
from guard.domain import AuditRecord

__all__ = ["GENESIS", "Verification", "chain_record", "record_hash", "verify_chain"]

GENESIS = "0" * 64


def record_hash(fields: dict[str, Any]) -> str:
    return sha256_hex(canonical_json({k: v for k, v in fields.items() if k != "hash"}))


def chain_record(fields: dict[str, Any], seq: int, prev_hash: str) -> AuditRecord:
    """Link a draft into a chain (used by every store backend). Its stored line is the canonical
    JSON that was hashed with `hash` appended, so the record is serialized once."""
    rec = dict(compress(fields.items(), map(is_not, fields.values(), repeat(None))))  # without None, in C
    rec.pop("hash", None)
    rec["seq"] = seq
    rec["prev_hash"] = prev_hash
    body = canonical_json(rec)
    rec["hash"] = digest = sha256_hex(body)
    return AuditRecord(rec, b"%s,\"hash\":\"%s\"}" % (body[:-1], digest.encode()))


@dataclass(frozen=True, slots=True)
class Verification:
    verified: bool
    count: int
    first_bad_seq: int | None = None
    reason: str | None = None


def verify_chain(records: Iterable[dict[str, Any]]) -> Verification:
    prev = GENESIS
    n = 0
    for expected_seq, rec in enumerate(records, start=1):
        n = expected_seq
        seq = rec.get("seq")
        if seq != expected_seq:
            return Verification(False, n, seq if isinstance(seq, int) else expected_seq, "sequence gap or reorder")
        if rec.get("prev_hash") != prev:
            return Verification(False, n, expected_seq, "prev_hash does not link to the previous record")
        if rec.get("hash") != record_hash(rec):
            return Verification(False, n, expected_seq, "hash does not match the record's content")
        prev = rec["hash"]
    return Verification(True, n)
