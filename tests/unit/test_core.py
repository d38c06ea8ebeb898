"""Canonical digests, the audit chain, guard-signed tokens and config overrides."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import jwt
import pytest

from guard.canonical import args_digest, call_digest, canonical_json
from guard.config import load_config
from guard.errors import ConfigError, Unauthenticated
from guard.hashchain import GENESIS, chain_record, verify_chain
from guard.identity.tokens import CRED_TYP, TASK_TYP, TXN_TYP, GuardKeys, load_or_create_key


def test_canonical_json_sorts_keys_without_spaces() -> None:
    assert canonical_json({"b": 1, "a": {"d": "é", "c": [1, 2]}}) == '{"a":{"c":[1,2],"d":"é"},"b":1}'.encode()
    assert args_digest("t", "a", {"x": 1, "y": 2}) == args_digest("t", "a", {"y": 2, "x": 1})
    assert args_digest("t", "a", {"x": 1}) != args_digest("t", "a", {"x": 2})


def test_call_digest_matches_the_contract_formula() -> None:
    expected = base64.urlsafe_b64encode(hashlib.sha256(b"POST\n/a?b=1\n{}").digest()).rstrip(b"=").decode()
    assert call_digest("post", "/a?b=1", b"{}") == expected
    assert call_digest("POST", "/a?b=2", b"{}") != expected


def _chain(n: int) -> list[dict[str, object]]:
    records, prev = [], GENESIS
    for i in range(1, n + 1):
        rec = chain_record({"event": "e", "task_id": "t", "agent": "a", "n": i}, i, prev)
        records.append(dict(rec.fields))
        prev = rec.hash
    return records


def test_audit_chain_verifies_and_names_the_first_bad_record() -> None:
    records = _chain(5)
    assert verify_chain(records).verified
    tampered = [dict(r) for r in records]
    tampered[2]["n"] = 99
    v = verify_chain(tampered)
    assert not v.verified and v.first_bad_seq == 3
    dropped = records[:2] + records[3:]
    v = verify_chain(dropped)
    assert not v.verified and v.first_bad_seq == 4


def test_guard_tokens_are_strict_about_their_type_and_header(tmp_path: Path) -> None:
    keys = GuardKeys(load_or_create_key(tmp_path / "k.json"), "urn:guard")
    now = int(time.time())
    claims = {"iss": "urn:guard", "aud": "guard", "sub": "s", "txn": "t", "iat": now, "exp": now + 60}
    token = keys.sign(TASK_TYP, claims)
    assert keys.verify(token, TASK_TYP, "guard")["sub"] == "s"
    for typ in (CRED_TYP, TXN_TYP):
        with pytest.raises(Unauthenticated):
            keys.verify(token, typ, "guard")
    header, payload, sig = token.split(".")
    extra = base64.urlsafe_b64encode(json.dumps(
        {**json.loads(base64.urlsafe_b64decode(header + "==")), "jku": "http://evil"}).encode()).rstrip(b"=")
    with pytest.raises(Unauthenticated):
        keys.verify(f"{extra.decode()}.{payload}.{sig}", TASK_TYP, "guard")
    with pytest.raises(Unauthenticated):
        keys.verify(keys.sign(TASK_TYP, {**claims, "exp": now - 120}), TASK_TYP, "guard")
    with pytest.raises(Unauthenticated):
        keys.verify(keys.sign(TASK_TYP, {**claims, "aud": "x"}), TASK_TYP, "guard")
    other = GuardKeys(load_or_create_key(tmp_path / "k2.json"), "urn:guard")
    with pytest.raises(Unauthenticated):
        keys.verify(other.sign(TASK_TYP, claims), TASK_TYP, "guard")
    # the key file is reused, not replaced
    again = GuardKeys(load_or_create_key(tmp_path / "k.json"), "urn:guard")
    assert again.verify(token, TASK_TYP, "guard")["txn"] == "t"


def test_a_remembered_token_counts_only_as_what_it_was_verified_for(tmp_path: Path) -> None:
    """Verified tokens are remembered (once per process), but a Txn-Token a tool received and
    used for a chained call never passes as a task token, nor a token for another audience."""
    keys = GuardKeys(load_or_create_key(tmp_path / "k.json"), "urn:guard")
    now = int(time.time())
    txn = keys.sign(TXN_TYP, {"iss": "urn:guard", "aud": "urn:guard", "sub": "s", "txn": "t", "jti": "call_1",
                              "tctx": {"chain": ["echo"]}, "iat": now, "exp": now + 60})
    assert keys.verify(txn, TXN_TYP, audience="urn:guard", cache=True)["jti"] == "call_1"
    assert keys.verify(txn, TXN_TYP, audience="urn:guard", cache=True)["jti"] == "call_1"  # remembered
    with pytest.raises(Unauthenticated):
        keys.verify(txn, TASK_TYP, audience="guard", cache=True)
    with pytest.raises(Unauthenticated):
        keys.verify(txn, TXN_TYP, audience="guard", cache=True)
    task = keys.sign(TASK_TYP, {"iss": "urn:guard", "aud": "guard", "sub": "s", "txn": "t", "iat": now,
                                "exp": now + 60})
    assert keys.verify(task, TASK_TYP, audience="guard", cache=True)["txn"] == "t"
    with pytest.raises(Unauthenticated):
        keys.verify(task, TASK_TYP, audience="another", cache=True)
    assert keys.verify(task, TASK_TYP, audience="guard", cache=True)["txn"] == "t"
    keys.forget_task("t")  # the task ended: its tokens are verified afresh (and still verify)
    assert keys.verify(task, TASK_TYP, audience="guard", cache=True)["txn"] == "t"
    # one entry answers a caller that asks for no audience and one that asks for the token's
    # (an MCP call asks both): the same remembered claims, not a verification each
    keys.forget_task("t")
    remembered = keys.verify(task, TASK_TYP, audience=None, cache=True)
    assert keys.verify(task, TASK_TYP, audience="guard", cache=True) is remembered
    assert keys.verify(task, TASK_TYP, audience=None, cache=True) is remembered
    with pytest.raises(Unauthenticated, match="wrong audience"):
        keys.verify(task, TASK_TYP, audience="another", cache=True)
    assert keys.verify(task, TASK_TYP, audience="guard", cache=True) is remembered


def test_a_retired_signing_key_retires_the_tokens_it_signed_at_once(tmp_path: Path) -> None:
    old, new = load_or_create_key(tmp_path / "old.json"), load_or_create_key(tmp_path / "new.json")
    keys = GuardKeys(old, "urn:guard")
    now = int(time.time())
    task = keys.sign(TASK_TYP, {"iss": "urn:guard", "aud": "guard", "sub": "s", "txn": "t", "iat": now,
                                "exp": now + 600})
    assert keys.verify(task, TASK_TYP, audience="guard", cache=True)["txn"] == "t"
    keys.use(new, [old])  # rotated: the old key still verifies
    assert keys.verify(task, TASK_TYP, audience="guard", cache=True)["txn"] == "t"
    keys.use(new, [])  # retired
    with pytest.raises(Unauthenticated, match="not a task\\+jwt issued by this guard"):
        keys.verify(task, TASK_TYP, audience="guard", cache=True)
    assert keys.typ_of(task) == TASK_TYP  # an unknown key's header is still read for routing


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256"])
def test_guard_signatures_verify_with_the_published_jwks_and_refuse_tampering(tmp_path: Path, algorithm: str) -> None:
    """What a tool does with a guard token: PyJWT and the JWKS (Ed25519 is signed with libsodium,
    ES256 with OpenSSL); a flipped bit or a cut signature is refused by the guard itself."""
    keys = GuardKeys(load_or_create_key(tmp_path / "k.json", algorithm), "urn:guard")
    now = int(time.time())
    token = keys.sign(CRED_TYP, {"iss": "urn:guard", "aud": "tool", "sub": "s", "iat": now, "exp": now + 60})
    jwk = jwt.PyJWK(keys.jwks()["keys"][0])
    assert jwt.decode(token, jwk.key, algorithms=[algorithm], audience="tool")["sub"] == "s"
    assert keys.verify(token, CRED_TYP, "tool")["sub"] == "s"
    header, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[5] ^= 1
    flipped = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    for bad in (f"{header}.{payload}.{flipped}", f"{header}.{payload}.{sig[:40]}", f"{header}.{payload[:-2]}.{sig}"):
        with pytest.raises(Unauthenticated):
            keys.verify(bad, CRED_TYP, "tool")


def test_config_env_overrides_and_errors(tmp_path: Path) -> None:
    cfg_file = tmp_path / "g.yaml"
    cfg_file.write_text("listen: {port: 9000}\nlimits: {max_chain_depth: 2}\n")
    cfg = load_config(cfg_file, env={"GUARD_LISTEN_PORT": "9100", "GUARD_STORE_URL": "redis://h:1/0",
                                     "GUARD_LIMITS_MAX_BODY_BYTES": "10"})
    assert cfg.listen.port == 9100 and cfg.store.url == "redis://h:1/0"
    assert cfg.limits.max_body_bytes == 10 and cfg.limits.max_chain_depth == 2
    assert load_config(None, env={}).store.url == "memory://"
    with pytest.raises(ConfigError, match=r"^GUARD_LIMITS_MAX_BODY_BYTES: "):
        load_config(cfg_file, env={"GUARD_LIMITS_MAX_BODY_BYTES": "lots"})
    cfg_file.write_text("approvals:\n  webhooks: [{name: f, url: 'http://x', secret_env: NOPE}]\n")
    with pytest.raises(ConfigError, match="NOPE is not set"):
        load_config(cfg_file, env={})
    cfg_file.write_text("listen: [\n")
    with pytest.raises(ConfigError, match=r"g.yaml:\d+"):
        load_config(cfg_file, env={})
