"""Hostile input against guard, in process (its app on real sockets): each attack is answered with a clear 4xx,
nothing is forwarded, nothing is consumed (task calls, the credential), nothing is lost (the
audit trail still verifies). Extends test_spine's token and path cases."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from guard.approvals.signature import sign
from guard.identity.tokens import CRED_TYP, TASK_TYP, TXN_TYP
from tests.app.conftest import AppFactory
from tests.support.app import AppGuard
from tests.support.client import AGENT, bearer, create_task, echo_policy
from tests.support.upstream import Upstream
from tests.support.world import (
    LEGAL_SECRET,
    SECRET,
    assert_untouched,
    b64,
    claims_of,
    problem_of,
    raw,
    raw_problem,
    seg,
    status_of,
)
from tests.support.world import World as AnyWorld

World = AnyWorld[AppGuard]


# ------------------------------------------------------------------------------ JWT attacks


async def test_rfc8725_attacks_on_the_task_token(hostile: World) -> None:
    w = hostile
    claims = w.task_claims()
    kid = jwt.get_unverified_header(w.task["task_token"])["kid"]
    jwk = json.loads((w.guard.dir / "var" / "signing-key.json").read_text())
    public_jwk = json.dumps({k: v for k, v in jwk.items() if k != "d"}).encode()
    raw_public = base64.urlsafe_b64decode(jwk["x"] + "==")
    pem = ed25519.Ed25519PrivateKey.from_private_bytes(base64.urlsafe_b64decode(jwk["d"] + "==")) \
        .public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def hs(secret: bytes, header: dict[str, Any]) -> str:
        si = f"{seg(header)}.{seg(claims)}"
        return f"{si}.{b64(hmac.new(secret, si.encode(), hashlib.sha256).digest())}"

    attacker = ec.generate_private_key(ec.SECP256R1())
    attacker_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker.public_key()))
    spoof = w.recorder.url
    real_sig = w.task["task_token"].split(".")[2]
    bad: dict[str, str] = {}
    for alg in ("none", "None", "NONE", "nOnE"):
        bad[f"alg {alg}"] = f"{seg({'alg': alg, 'typ': TASK_TYP, 'kid': kid})}.{seg(claims)}."
        bad[f"alg {alg} with signature"] = f"{seg({'alg': alg, 'typ': TASK_TYP, 'kid': kid})}.{seg(claims)}.{real_sig}"
    for name, secret in {"jwk json": public_jwk, "raw public key": raw_public, "pem": pem, "empty": b""}.items():
        for alg in ("HS256", "HS512"):
            bad[f"{alg} keyed with the {name}"] = hs(secret, {"alg": alg, "typ": TASK_TYP, "kid": kid})
    for trick in ("../../../../../../dev/null", "../var/signing-key.json", "' OR '1'='1", "x\"; DROP TABLE keys;--",
                  "%00", kid + "/../" + kid):
        bad[f"kid {trick}"] = w.sign(TASK_TYP, claims, {"alg": "EdDSA", "typ": TASK_TYP, "kid": trick})
        bad[f"kid {trick} hs empty"] = hs(b"", {"alg": "HS256", "typ": TASK_TYP, "kid": trick})
    base = {"alg": "EdDSA", "typ": TASK_TYP, "kid": kid}
    bad["jku"] = w.sign(TASK_TYP, claims, {**base, "jku": spoof + "/jwks.json"})
    bad["x5u"] = w.sign(TASK_TYP, claims, {**base, "x5u": spoof + "/cert.pem"})
    bad["jwk embedded"] = jwt.encode(claims, attacker, algorithm="ES256",
                                     headers={"typ": TASK_TYP, "kid": kid, "jwk": attacker_jwk})
    bad["jku attacker key"] = jwt.encode(claims, attacker, algorithm="ES256",
                                         headers={"typ": TASK_TYP, "jku": spoof + "/attacker.json"})
    bad["crit"] = w.sign(TASK_TYP, claims, {**base, "crit": ["exp"]})
    bad["crit unknown"] = w.sign(TASK_TYP, {**claims, "x-ext": 1}, {**base, "crit": ["x-ext"]})
    bad["nested jwt"] = w.sign(TASK_TYP, claims, {**base, "cty": "JWT"})
    nested_input = f"{seg({**base, 'cty': 'JWT'})}.{b64(w.task['task_token'].encode())}"
    bad["nested jwt payload"] = f"{nested_input}.{b64(w.keys.current.sign(nested_input.encode()))}"
    bad["typ JWT"] = w.sign("JWT", claims)
    bad["typ missing"] = w.sign(TASK_TYP, claims, {"alg": "EdDSA", "kid": kid})
    bad["expired"] = w.sign(TASK_TYP, w.task_claims(exp=int(time.time()) - 120, iat=int(time.time()) - 300))
    bad["exp missing"] = w.sign(TASK_TYP, {k: v for k, v in claims.items() if k != "exp"})
    bad["iat in the future"] = w.sign(TASK_TYP, w.task_claims(iat=int(time.time()) + 600))
    bad["nbf in the future"] = w.sign(TASK_TYP, w.task_claims(nbf=int(time.time()) + 600))
    bad["wrong issuer"] = w.sign(TASK_TYP, w.task_claims(iss="urn:evil"))
    bad["wrong audience"] = w.sign(TASK_TYP, w.task_claims(aud="tool:echo"))
    bad["credential claims as task"] = w.sign(TASK_TYP, claims_of(w.cred))
    bad["trailing segment"] = w.task["task_token"] + ".x"
    bad["whitespace inside"] = w.task["task_token"].replace(".", ". ", 1)
    for name, token in bad.items():
        status, problem = await w.tool_call(bearer(token))
        assert (status, problem["code"]) == (401, "unauthenticated"), name
    assert w.recorder.requests == []  # jku/x5u never fetched
    await assert_untouched(w)


async def test_huge_tokens_are_refused_without_harm(hostile: World) -> None:
    w = hostile
    huge = w.sign(TASK_TYP, w.task_claims(pad="a" * 100_000))
    for headers in (bearer(huge), {"Txn-Token": huge}):
        async with w.http.get(f"{w.url}/tools/echo/items/1", headers=headers) as r:
            assert r.status in (400, 431), r.status  # the header is over the 8 KB field limit
            assert (await problem_of(r))["code"] == "bad_request"
    async with w.http.post(f"{w.url}/v1/credentials/introspect", data={"token": "x" * 100_000}) as r:
        assert r.status == 413 and (await problem_of(r))["code"] == "payload_too_large"
    async with w.http.post(f"{w.url}/v1/credentials/introspect",
                           json={"token": w.sign(CRED_TYP, {**claims_of(w.cred), "pad": "a" * 40_000})}) as r:
        assert r.status == 200 and await r.json() == {"active": False}
    await assert_untouched(w)
    await assert_credential_active(w)


async def assert_credential_active(w: World) -> None:
    async with w.http.post(f"{w.url}/v1/credentials/introspect", data={"token": w.cred}) as r:
        assert (await r.json())["active"] is True


async def test_every_swap_of_the_three_token_types(hostile: World) -> None:
    w = hostile
    task_token, idp = w.task["task_token"], w.guard.token(AGENT)
    # the task token, Txn-Token and an IdP token are never credentials at introspection
    for name, token in {"task token": task_token, "txn token": w.txn, "idp token": idp,
                        "credential re-signed as txn": w.sign(TXN_TYP, claims_of(w.cred))}.items():
        for as_json in (False, True):
            form = None if as_json else {"token": token}
            async with w.http.post(f"{w.url}/v1/credentials/introspect", data=form,
                                   json={"token": token} if as_json else None) as r:
                assert r.status == 200 and await r.json() == {"active": False}, name
    # a task token, credential or IdP token presented as a Txn-Token
    for name, token in {"task token": task_token, "credential": w.cred, "idp token": idp,
                        "task claims signed as txn": w.sign(TXN_TYP, w.task_claims())}.items():
        status, problem = await w.tool_call({"Txn-Token": token})
        assert status in (401, 403) and problem["code"] in ("unauthenticated", "txn_inactive"), name
    # a Txn-Token as the Bearer (with or without its own header)
    for headers in (bearer(w.txn), {**bearer(w.txn), "Txn-Token": w.txn}):
        status, problem = await w.tool_call(headers)
        assert (status, problem["code"]) == (401, "unauthenticated")
    # the MCP front end authenticates the same way
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    for name, headers in {"credential": bearer(w.cred), "txn as bearer": bearer(w.txn), "idp": bearer(idp),
                          "task token as txn": {"Txn-Token": task_token}, "none": {}}.items():
        async with w.http.post(f"{w.url}/mcp/files", json=init,
                               headers={**headers, "Accept": "application/json, text/event-stream"}) as r:
            assert r.status == 401 and (await problem_of(r))["code"] == "unauthenticated", name
    # guard-issued tokens never authenticate to the API as a person
    for token in (task_token, w.txn, w.cred):
        auditor_try = {"Authorization": f"Bearer {token}"}
        async with w.http.get(f"{w.url}/v1/agents", headers=auditor_try) as r:
            assert r.status == 401 and (await problem_of(r))["code"] == "unauthenticated"
    await assert_untouched(w)
    await assert_credential_active(w)


async def test_expired_and_not_yet_valid_guard_tokens(hostile: World) -> None:
    w = hostile
    now = int(time.time())
    cred = claims_of(w.cred)
    for name, claims in {"expired": {**cred, "exp": now - 120, "iat": now - 300},
                         "not yet valid": {**cred, "nbf": now + 600},
                         "issued in the future": {**cred, "iat": now + 600}}.items():
        async with w.http.post(f"{w.url}/v1/credentials/introspect", data={"token": w.sign(CRED_TYP, claims)}) as r:
            assert await r.json() == {"active": False}, name
    txn = claims_of(w.txn)
    for name, claims in {"expired": {**txn, "exp": now - 120}, "not yet valid": {**txn, "nbf": now + 600}}.items():
        status, problem = await w.tool_call({"Txn-Token": w.sign(TXN_TYP, claims)})
        assert (status, problem["code"]) == (401, "unauthenticated"), name
    await assert_untouched(w)
    await assert_credential_active(w)  # probing with its own claims did not consume it (same jti)


async def test_tokens_of_a_revoked_task(hostile: World) -> None:
    w = hostile
    admin = bearer(w.guard.token("ops@acme.example", "guard:admin"))
    async with w.http.post(f"{w.url}/v1/tasks/{w.task['task_id']}/revoke", json={"reason": "x"},
                           headers=admin) as r:
        assert r.status == 200
    # a fresh, validly signed task token and Txn-Token for the revoked task
    fresh = w.sign(TASK_TYP, w.task_claims(jti="fresh", iat=int(time.time()), exp=int(time.time()) + 600))
    for headers in (bearer(w.task["task_token"]), bearer(fresh), {"Txn-Token": w.txn}):
        status, problem = await w.tool_call(headers)
        assert status == 403 and problem["code"] in ("task_inactive", "txn_inactive"), problem
    async with w.http.post(f"{w.url}/v1/credentials/introspect", data={"token": w.cred}) as r:
        assert await r.json() == {"active": False}
    assert len(w.upstream.requests) == 1
    assert await w.verified()


async def test_idp_token_header_tricks(app_factory: AppFactory, upstream: Upstream, upstream_factory: Any,
                                       tmp_path: Path) -> None:
    from tests.support.idp import Idp

    recorder = upstream_factory()
    idp = Idp(tmp_path)
    g = await app_factory(echo_policy(upstream.url), config={"issuers": [idp.issuer_config()]})
    attacker = ec.generate_private_key(ec.SECP256R1())
    attacker_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(attacker.public_key()))
    now = int(time.time())
    claims = {"iss": "https://idp.test", "aud": "guard", "sub": AGENT, "iat": now, "exp": now + 600}
    bad = {
        "jku to attacker keys": jwt.encode(claims, attacker, "ES256", headers={"kid": "k9", "jku": recorder.url}),
        "x5u to attacker cert": jwt.encode(claims, attacker, "ES256", headers={"kid": "k9", "x5u": recorder.url}),
        "embedded jwk": jwt.encode(claims, attacker, "ES256", headers={"kid": "k1", "jwk": attacker_jwk}),
        "kid traversal": jwt.encode(claims, attacker, "ES256", headers={"kid": "../../../etc/passwd"}),
        "kid sql": jwt.encode(claims, attacker, "ES256", headers={"kid": "' UNION SELECT 'k' --"}),
        "crit": idp.token(AGENT, headers={"crit": ["exp"]}),
        "nested": idp.token(AGENT, headers={"cty": "JWT"}),
        "alg none": f"{seg({'alg': 'none', 'kid': 'k1'})}.{seg(claims)}.",
        "alg None": f"{seg({'alg': 'None', 'kid': 'k1'})}.{seg(claims)}.",
        "guard typ": idp.token(AGENT, headers={"typ": TASK_TYP}),
    }
    async with aiohttp.ClientSession() as http:
        for name, token in bad.items():
            async with http.post(f"{g.url}/v1/tasks", json={"purpose": "p"}, headers=bearer(token)) as r:
                assert r.status == 401 and (await problem_of(r))["code"] == "unauthenticated", name
        async with http.post(f"{g.url}/v1/tasks", json={"purpose": "p"}, headers=bearer(idp.token(AGENT))) as r:
            assert r.status == 201  # the legitimate token still works
    assert recorder.requests == [] and upstream.requests == []


# ------------------------------------------------------------------------------ raw HTTP


async def test_request_smuggling_shapes_are_refused(hostile: World) -> None:
    w = hostile
    auth = f"Authorization: Bearer {w.task['task_token']}\r\n".encode()
    inner = b"DELETE /tools/echo/items/9 HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
    shapes = {
        "cl and te": b"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n" + auth
        + b"Content-Type: application/json\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + inner,
        "te and cl": b"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n" + auth
        + b"Transfer-Encoding: chunked\r\nContent-Length: 60\r\n\r\n0\r\n\r\n" + inner,
        "duplicate cl": b"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n" + auth
        + b"Content-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}" + inner,
        "cl list": b"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n" + auth
        + b"Content-Length: 2, 40\r\n\r\n{}" + inner,
        "obs-fold": b"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n" + auth
        + b"Content-Type: application/json\r\nTransfer-Encoding: identity\r\n chunked\r\n\r\n0\r\n\r\n" + inner,
        "obs-fold cl": b"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n" + auth
        + b"Content-Length:\r\n 2\r\n\r\n{}" + inner,
        "te not chunked": b"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n" + auth
        + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + inner,
        "te xchunked": b"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n" + auth
        + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + inner,
        "bad chunk size": b"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n" + auth
        + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n" + inner,
        "negative chunk size": b"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n" + auth
        + b"Transfer-Encoding: chunked\r\n\r\n-2\r\n{}\r\n0\r\n\r\n" + inner,
        "huge chunk size": b"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n" + auth
        + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n{}\r\n0\r\n\r\n" + inner,
        "chunk size 0x": b"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n" + auth
        + b"Transfer-Encoding: chunked\r\n\r\n0x2\r\n{}\r\n0\r\n\r\n" + inner,
        "space before colon": b"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n" + auth
        + b"Content-Length : 2\r\n\r\n{}" + inner,
        "bare lf": b"POST /tools/echo/items HTTP/1.1\nHost: x\n" + auth
        + b"Transfer-Encoding: chunked\n\n0\n\n" + inner,
        "control char in the token line": b"GET /tools/echo/items/1 HTTP/1.1\r\nHost: x\r\n"
        + auth[:-2] + b"\x01\r\n\r\n",
    }
    for name, data in shapes.items():
        response = await raw(w.guard.port, data)
        assert status_of(response) == 400, (name, response[:200])
        assert raw_problem(response, name)["code"] == "bad_request"
        assert w.task["task_token"].encode() not in response, name  # the offending bytes are not echoed
        assert b" 200 " not in response.split(b"\r\n", 1)[-1], name  # no second, smuggled answer
    # the server's own error logging never writes the offending bytes (and the token in them)
    assert "http_request_rejected" in w.guard.log()
    assert w.task["task_token"] not in w.guard.log()
    await assert_untouched(w)


async def test_oversized_headers_and_bodies(hostile: World) -> None:
    w = hostile
    auth = f"Authorization: Bearer {w.task['task_token']}\r\n".encode()
    big_field = b"GET /tools/echo/items/1 HTTP/1.1\r\nHost: x\r\n" + auth + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n"
    many = b"GET /tools/echo/items/1 HTTP/1.1\r\nHost: x\r\n" + auth + b"".join(
        f"X-H{i}: v\r\n".encode() for i in range(200)) + b"\r\n"
    long_line = b"GET /tools/echo/items/" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
    for name, data in {"big field": big_field, "many headers": many, "long line": long_line}.items():
        response = await raw(w.guard.port, data)
        assert status_of(response) in (400, 414, 431), (name, response[:200])
        assert raw_problem(response, name)["code"] == "bad_request"
        assert b"aaaaaaaa" not in response and w.task["task_token"].encode() not in response, name
    await chunked_body_is_cut_off(w, auth)
    assert w.task["task_token"] not in w.guard.log()
    await assert_untouched(w)


async def chunked_body_is_cut_off(w: World, auth: bytes) -> None:
    """A chunked body with no Content-Length is refused with 413 once it passes the limit,
    long before the client has sent it all."""
    reader, writer = await asyncio.open_connection("127.0.0.1", w.guard.port)
    writer.write(b"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n" + auth
                 + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"a" * 65536
    planned, sent = 200 * 1024 * 1024, 0
    status_line = asyncio.ensure_future(reader.readuntil(b"\r\n\r\n"))
    try:
        while sent < planned and not status_line.done():
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await asyncio.wait([status_line], timeout=0.005)
            sent += len(chunk)
    except ConnectionError:
        pass
    head = await asyncio.wait_for(status_line, 30)
    writer.close()
    assert head.split()[1] == b"413", head
    assert b"Content-Type: application/problem+json" in head, head
    assert sent < planned // 10  # answered long before the whole body was sent


async def test_malformed_requests_are_answered_with_problem_details(hostile: World) -> None:
    """What aiohttp's HTTP parser refuses before any handler runs, and what escapes before the
    middleware, is RFC 9457 problem details too (code bad_request), never an echo of the input."""
    w = hostile
    auth = f"Authorization: Bearer {w.task['task_token']}\r\n".encode()
    post = b"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n" + auth + b"Content-Type: application/json\r\n"
    gzip_garbage = b"abcd"  # not gzip at all
    shapes: dict[str, tuple[bytes, int]] = {
        "not http": (b"GARBAGE " + auth + b"\r\n\r\n", 400),
        "tls on the http port": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40, 400),
        "http/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
        "bad version": (b"GET /tools/echo/items/1 HTTP/9.9\r\nHost: x\r\n" + auth + b"\r\n", 400),
        "bad request target": (b"GET http://[::1 HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n", 400),
        "bad content-length": (post + b"Content-Length: 2x\r\n\r\n{}", 400),
        "bad chunk extension": (post + b"Transfer-Encoding: chunked\r\n\r\n2;\x01\r\n{}\r\n0\r\n\r\n", 400),
        "bad trailer": (post + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX\x01: y\r\n\r\n", 400),
        "missing host": (b"GET /tools/echo/items/1 HTTP/1.1\r\n" + auth + b"\r\n", 400),
        "body that does not decode": (post + b"Content-Encoding: gzip\r\nContent-Length: "
                                      + str(len(gzip_garbage)).encode() + b"\r\n\r\n" + gzip_garbage, 400),
        "a coding with no decoder": (post + b"Content-Encoding: br\r\nContent-Length: 2\r\n\r\n{}", 400),
        "unknown expectation": (post + b"Expect: 200-ok\r\nContent-Length: 2\r\n\r\n{}", 417),
    }
    for name, (data, status) in shapes.items():
        response = await raw(w.guard.port, data)
        assert status_of(response) == status, (name, response[:300])
        problem = raw_problem(response, name)
        assert problem["code"] == "bad_request", (name, problem)
        assert w.task["task_token"].encode() not in response, name
    await assert_untouched(w)


async def test_a_compressed_body_reaches_the_tool_as_the_guard_decided_on_it(hostile: World) -> None:
    """The guard decides on the decoded body of a gzip request, and the tool gets those very
    bytes, without the Content-Encoding that no longer describes them; a write the policy denies
    is denied inside gzip too."""
    w = hostile
    headers = {**bearer(w.task["task_token"]), "Content-Type": "application/json", "Content-Encoding": "gzip"}
    body = json.dumps({"title": "t", "tags": ["a"]}).encode()
    before = len(w.upstream.requests)
    async with w.http.post(w.url + "/tools/echo/items", data=gzip.compress(body), headers=headers) as r:
        assert r.status == 200, await r.text()
    assert len(w.upstream.requests) == before + 1
    seen = w.upstream.requests[-1]
    assert seen.body == body
    assert "content-encoding" not in {k.lower() for k in seen.headers}
    secret = gzip.compress(json.dumps({"title": "t", "tags": ["secret"]}).encode())
    async with w.http.post(w.url + "/tools/echo/items", data=secret, headers=headers) as r:
        assert r.status == 403 and (await problem_of(r))["code"] == "denied"
    assert len(w.upstream.requests) == before + 1


# ------------------------------------------------------------------------------ slow clients


@pytest.mark.slow  # trickles for read_timeout_s several times over: make test, not make test-fast
async def test_slow_clients_are_cut_off(app_factory: AppFactory, upstream: Upstream) -> None:
    g = await app_factory(echo_policy(upstream.url), config={"limits": {"read_timeout_s": 1}}, subdir="slow")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        task = await create_task(http, g.url, g.token(AGENT))

    async def trickle(head: bytes, body: bytes) -> tuple[bool, bytes]:
        """Send `head` at once, then `body` one byte every 0.3 s for up to 60 s; whether the
        guard closed the connection (and what it said) before we were done."""
        reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
        writer.write(head)
        got = asyncio.ensure_future(reader.read())
        try:
            for i in range(200):
                if got.done():
                    break
                writer.write(body[i:i + 1] if i < len(body) else b"x")
                await asyncio.wait([got], timeout=0.3)
        except ConnectionError:
            pass
        out = await asyncio.wait_for(got, 30)
        writer.close()
        return got.done(), out

    auth = f"Authorization: Bearer {task['task_token']}\r\n".encode()
    get = b"GET /tools/echo/items/1 HTTP/1.1\r\nHost: x\r\n"
    closed, out = await trickle(b"", get + auth + b"X-Pad: " + b"p" * 500)
    # headers trickled slower than read_timeout_s: the connection is closed, with no answer
    # (aiohttp's keep-alive timer closes it; it has no hook to answer first; see SECURITY.md)
    assert closed and out == b""
    head = (b"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n" + auth
            + b"Content-Type: application/json\r\nContent-Length: 150\r\n\r\n")
    closed, out = await trickle(head, b'{"a":"' + b"b" * 200)
    assert closed and status_of(out) == 400, out[:200]  # the body trickled: refused
    assert raw_problem(out)["code"] == "bad_request"

    # a chunked body that turns malformed after the handler began reading it: aiohttp's parser
    # refuses the rest but does not fail the body being read (no hook), so the handler waits
    # for it until read_timeout_s and answers 400 problem details; then the connection closes
    reader, writer = await asyncio.open_connection("127.0.0.1", g.port)
    writer.write(b"POST /tools/echo/items HTTP/1.1\r\nHost: x\r\n" + auth
                 + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n")
    await writer.drain()
    await asyncio.sleep(0.3)  # the handler is reading the body now
    writer.write(b"zz\r\n\"}\r\n0\r\n\r\n")
    out = await asyncio.wait_for(reader.read(), 60)  # until the guard closes the connection
    writer.close()
    problem = raw_problem(out)
    assert (problem["status"], problem["code"]) == (400, "bad_request")
    assert "did not arrive" in problem["detail"]
    assert out.count(b"HTTP/1.") == 1  # one answer, then the connection is closed
    assert upstream.requests == []


# ------------------------------------------------------------------------------ hostile strings


HOSTILE = "\x1b[31mred\x1b[0m\r\nfake: line\x00\x07\u202e<script>alert(1)</script>\"'`${x}"


async def test_hostile_strings_stay_inert(hostile: World) -> None:
    w = hostile
    idp = w.guard.token(AGENT)
    marker = "ARG-MARKER-7f3a"
    async with w.http.post(f"{w.url}/v1/tasks", headers=bearer(idp),
                           json={"purpose": "p" * 100_000}) as r:
        assert r.status == 400 and (await problem_of(r))["code"] == "bad_request"
    async with w.http.post(f"{w.url}/v1/tasks", headers=bearer(idp),
                           json={"purpose": "x", "labels": {"env": "v" * 100_000}}) as r:
        assert r.status == 400 and (await problem_of(r))["code"] == "bad_request"
    task = await create_task(w.http, w.url, idp, purpose=HOSTILE + " report", requested_by=HOSTILE[:300],
                             labels={"env": HOSTILE, HOSTILE[:60]: "k"})
    h = bearer(task["task_token"])
    big = {"title": HOSTILE + marker, "blob": marker + "z" * 100_000, "tags": [HOSTILE], HOSTILE: marker}
    async with w.http.post(f"{w.url}/tools/echo/items", json=big, headers=h) as r:
        assert r.status == 200
    cred = w.upstream.requests[-1].headers["Authorization"].removeprefix("Bearer ")
    assert claims_of(w.upstream.requests[-1].headers["Txn-Token"])["tctx"]["purpose"] == HOSTILE + " report"
    async with w.http.post(f"{w.url}/tools/echo/items", json={"tags": ["secret", HOSTILE + marker]}, headers=h) as r:
        assert r.status == 403
    async with w.http.get(f"{w.url}/tools/echo/items/{marker}%1b%5b31m", headers=h) as r:
        assert r.status == 200
    assert await w.verified(task["task_id"])
    log = w.guard.log()
    assert f'"task_id":"{task["task_id"]}"' in log  # the calls were logged: what the log lacks, guard did not write
    for secret in (marker, task["task_token"], cred, idp, "<script>", "\x1b"):
        assert secret not in log, secret
    # the durable trail is valid JSON with no raw control characters, and verifies
    trail = (w.guard.audit_dir() / f"{task['task_id']}.jsonl").read_text()
    assert "\x1b" not in trail and "\x00" not in trail and marker not in trail
    assert all(json.loads(line)["hash"] for line in trail.splitlines())
    out = await w.guard.cli("audit", "verify", task["task_id"])
    assert out.returncode == 0, out.stdout
    show = await w.guard.cli("audit", "show", task["task_id"])
    assert show.returncode == 0 and "chain: verified" in show.stdout
    assert not any(c in show.stdout for c in "\x1b\x00\x07\r\u202e"), repr(show.stdout)
    for ch in ("\x1b[31m", "\x00"):
        assert ch not in (await w.guard.cli("agents", "--help")).stdout


# ------------------------------------------------------------------------------ webhook decisions


async def signed_decision(w: World, approval_id: str, body: dict[str, Any], secret: str = SECRET,
                          t: int | None = None, header: str | None = None,
                          raw_body: bytes | None = None) -> tuple[int, dict[str, Any]]:
    data = raw_body if raw_body is not None else json.dumps(body).encode()
    sig = header if header is not None else sign(secret, data, t)
    async with w.http.post(f"{w.url}/v1/approvals/{approval_id}/decision", data=data,
                           headers={"Guard-Signature": sig, "Content-Type": "application/json"}) as r:
        return r.status, dict(await r.json(content_type=None))


async def pending(w: World, amount: int) -> str:
    async with w.http.post(f"{w.url}/tools/echo/pay", json={"amount": amount},
                           headers=bearer(w.task["task_token"])) as r:
        problem = await problem_of(r)
        assert problem["code"] == "approval_required", problem
        return str(problem["approval_id"])


async def approval_status(w: World, approval_id: str) -> str:
    async with w.http.get(f"{w.url}/v1/approvals/{approval_id}", headers=bearer(w.task["task_token"])) as r:
        return str((await r.json())["status"])


async def test_webhook_decision_forgery_and_replay(hostile: World) -> None:
    w = hostile
    first, second = await pending(w, 500), await pending(w, 600)
    body = {"decision": "approve", "approver": "carol@acme.example", "approval_id": first}
    data = json.dumps(body).encode()
    good_header = sign(SECRET, data)
    forged = {
        "tampered body": await signed_decision(w, first, body, header=good_header,
                                               raw_body=json.dumps({**body, "approver": "mallory"}).encode()),
        "empty mac": await signed_decision(w, first, body, header=f"t={int(time.time())},v1="),
        "mac of another body": await signed_decision(w, first, body, header=sign(SECRET, b"{}")),
        "huge t": await signed_decision(w, first, body, header="t=99999999999999999999,v1=00"),
        "unknown secret": await signed_decision(w, first, body, secret="guessed"),
        "stale": await signed_decision(w, first, body, t=int(time.time()) - 400),
    }
    for name, (status, problem) in forged.items():
        assert (status, problem["code"]) == (401, "unauthenticated"), name
    status, problem = await signed_decision(w, first, body, secret=LEGAL_SECRET)  # another webhook's secret
    assert (status, problem["code"]) == (403, "forbidden")
    # a validly signed decision naming the first approval cannot decide the second
    status, problem = await signed_decision(w, second, {**body, "reason": "on the second"})
    assert status == 400 and problem["code"] == "bad_request"
    assert await approval_status(w, first) == "pending" and await approval_status(w, second) == "pending"
    status, view = await signed_decision(w, first, body, header=good_header, raw_body=data)
    assert status == 200 and view["status"] == "approved"
    for target in (first, second):  # the recorded decision replayed, byte for byte
        status, problem = await signed_decision(w, target, body, header=good_header, raw_body=data)
        assert status in (401, 409) and problem["code"] in ("unauthenticated", "approval_closed"), problem
    unbound = {"decision": "approve", "approver": "carol@acme.example"}
    unbound_header = sign(SECRET, json.dumps(unbound).encode())
    status, problem = await signed_decision(w, first, unbound, header=unbound_header)
    assert status == 409 and problem["code"] == "approval_closed"
    status, problem = await signed_decision(w, second, unbound, header=unbound_header)  # used once already
    assert status == 401 and problem["code"] == "unauthenticated"
    assert await approval_status(w, first) == "approved" and await approval_status(w, second) == "pending"
    assert len(w.upstream.requests) == 1
    assert await w.verified()
