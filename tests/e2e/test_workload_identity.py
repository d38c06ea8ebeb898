"""Workload identity end to end: a real guard over real TLS, SVIDs issued by a real CA (OpenBao's
PKI engine), agents that prove who they are with their certificate, and tokens bound to them."""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
import yaml

from guard.audit.trails import read_trail
from tests.support.client import bearer, echo_policy, until
from tests.support.guard import Guard
from tests.support.openbao import OpenBao
from tests.support.pki import Pki, client_context, self_signed_svid
from tests.support.process import PY, ROOT
from tests.support.upstream import Upstream

PAYMENTS = "spiffe://acme/agent/payments"
REPORTS = "spiffe://acme/agent/reports"


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


@pytest.fixture
def ca(openbao: OpenBao) -> Pki:
    return Pki(openbao, "pki").start()


@pytest.fixture
def other_ca(openbao: OpenBao) -> Pki:
    return Pki(openbao, "pki_other").start()


class TlsGuard:
    """A guard listening with TLS, its certificates from `ca`, and agents' client contexts."""

    def __init__(self, guard: Guard, ca: Pki, certs: Path) -> None:
        self.guard, self.ca, self.certs = guard, ca, certs
        self.bundle = certs / "bundle.pem"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.guard.port}"

    def agent(self, spiffe_id: str | None, name: str, ttl: str = "120s") -> ssl.SSLContext:
        """A client context: the guard's CA, and an SVID for `spiffe_id` (None: no certificate)."""
        if spiffe_id is None:
            return client_context(self.bundle)
        cert, key = self.ca.issue(spiffe_id, ttl=ttl).write(self.certs, name)
        return client_context(self.bundle, cert, key)

    def session(self, ctx: ssl.SSLContext) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))


def tls_guard(guard_factory: Callable[..., Guard], tmp_path: Path, ca: Pki, upstream: Upstream,
              client_auth: str = "optional", **policy_extra: Any) -> TlsGuard:
    certs = tmp_path / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    ca.write_bundle(certs / "bundle.pem")
    ca.issue("spiffe://acme/guard", ip_sans="127.0.0.1").write(certs, "guard")
    policy = echo_policy(upstream.url)
    policy["agents"] = {
        PAYMENTS: {"owner": "bob@acme.example", "binding": "required"},
        "spiffe://acme/agent/*": {"owner": "carol@acme.example"},
        "dev-*": {"owner": "dan@acme.example"},
    }
    policy.update(policy_extra)
    config = {
        "listen": {"tls": {"cert_file": str(certs / "guard.pem"), "key_file": str(certs / "guard.key"),
                           "client_ca_file": str(certs / "bundle.pem"), "client_auth": client_auth}},
        "issuers": [{"x509": {"trust_bundle_file": str(certs / "bundle.pem"), "spiffe_id": "spiffe://acme/agent/*"}}],
        "dev_issuer": True,
    }
    return TlsGuard(guard_factory(policy, config), ca, certs)


async def new_task(s: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    async with s.post(f"{url}/v1/tasks", json={"purpose": "pay the invoices"}, headers=headers or {}) as r:
        body: dict[str, Any] = await r.json()
        assert r.status == 201, body
        return body


async def problem(r: aiohttp.ClientResponse) -> dict[str, Any]:
    body: dict[str, Any] = await r.json(content_type=None)
    return body


def decided(g: Guard, task_id: str) -> list[dict[str, Any]]:
    return [r for r in read_trail(g.audit_dir(), task_id) if r["event"] == "call_decided"]


async def test_an_svid_creates_a_task_bound_to_it_and_only_that_workload_may_use_it(
        guard_factory: Any, tmp_path: Path, ca: Pki, upstream: Upstream) -> None:
    tg = tls_guard(guard_factory, tmp_path, ca, upstream)
    async with tg.session(tg.agent(REPORTS, "reports")) as agent, \
            tg.session(tg.agent("spiffe://acme/agent/other", "other")) as other, \
            tg.session(tg.agent(None, "anonymous")) as anonymous:
        task = await new_task(agent, tg.url)  # no bearer token at all: the certificate is the identity
        assert task["agent"] == REPORTS and task["binding"] == "mtls"
        assert claims_of(task["task_token"])["cnf"] == {"spiffe_id": REPORTS}
        async with agent.get(f"{tg.url}/tools/echo/items/1", headers=bearer(task["task_token"])) as r:
            assert r.status == 200, await r.text()
        for stranger in (other, anonymous):
            async with stranger.get(f"{tg.url}/tools/echo/items/2", headers=bearer(task["task_token"])) as r:
                body = await problem(r)
                assert r.status == 401 and body["code"] == "unauthenticated"
                assert body["detail"] == "token bound to another workload"
    assert len(upstream.requests) == 1

    async def two_refusals_logged() -> list[str] | None:  # the answer may come before the line is in the log
        lines = [line for line in tg.guard.log().splitlines() if "token_binding_refused" in line]
        return lines if len(lines) >= 2 else None

    refusals = await until(two_refusals_logged, "both refusals in the guard's log")
    assert len(refusals) == 2 and all(task["task_id"] in line for line in refusals)
    assert "spiffe://acme/agent/other" in refusals[0] and task["task_token"] not in tg.guard.log()
    records = decided(tg.guard, task["task_id"])
    assert [r["binding"] for r in records] == ["mtls"]
    created = next(r for r in read_trail(tg.guard.audit_dir(), task["task_id"]) if r["event"] == "task_created")
    assert created["binding"] == "mtls"


async def test_an_agent_keeps_working_when_its_svid_rotates_mid_task(
        guard_factory: Any, tmp_path: Path, ca: Pki, upstream: Upstream) -> None:
    tg = tls_guard(guard_factory, tmp_path, ca, upstream)
    first = tg.agent(REPORTS, "reports-1")
    async with tg.session(first) as s:
        task = await new_task(s, tg.url)
        async with s.get(f"{tg.url}/tools/echo/items/1", headers=bearer(task["task_token"])) as r:
            assert r.status == 200
    rotated = ca.issue(REPORTS)  # a new certificate and key, the same SPIFFE ID
    cert, key = rotated.write(tg.certs, "reports-2")
    async with tg.session(client_context(tg.bundle, cert, key)) as s, \
            s.get(f"{tg.url}/tools/echo/items/2", headers=bearer(task["task_token"])) as r:
        assert r.status == 200, await r.text()
    assert len(upstream.requests) == 2


async def test_certificates_that_are_not_valid_svids_are_refused_with_the_reason(
        guard_factory: Any, tmp_path: Path, ca: Pki, upstream: Upstream) -> None:
    tg = tls_guard(guard_factory, tmp_path, ca, upstream)
    certs = tg.certs
    cases = {
        "two URI SANs": (ca.issue(REPORTS, "spiffe://acme/agent/twin"), "exactly one URI SAN"),
        "not spiffe": (ca.issue("https://acme.example/agent"), "not a spiffe:// ID"),
        "no URI SAN": (ca.issue(common_name="localhost"), "exactly one URI SAN"),
    }
    for name, (issued, reason) in cases.items():
        cert, key = issued.write(certs, name.replace(" ", "-"))
        async with tg.session(client_context(tg.bundle, cert, key)) as s, \
                s.post(f"{tg.url}/v1/tasks", json={"purpose": "x"}) as r:
            body = await problem(r)
            assert r.status == 401, name
            assert body["code"] == "unauthenticated" and reason in body["detail"], (name, body)
    expired = ca.issue(REPORTS, ttl="1s")
    cert, key = expired.write(certs, "expired")
    await asyncio.sleep(2.5)
    async with tg.session(client_context(tg.bundle, cert, key)) as s, \
            s.post(f"{tg.url}/v1/tasks", json={"purpose": "x"}) as r:
        body = await problem(r)
        assert r.status == 401 and body["detail"] == "client certificate expired"


async def test_forged_certificates_and_other_cas_never_get_through_the_handshake(
        guard_factory: Any, tmp_path: Path, ca: Pki, other_ca: Pki, upstream: Upstream) -> None:
    tg = tls_guard(guard_factory, tmp_path, ca, upstream)
    foreign = other_ca.issue(REPORTS).write(tg.certs, "foreign")
    forged = self_signed_svid(REPORTS, tg.certs, "forged")
    forged_ca = self_signed_svid(REPORTS, tg.certs, "forged-ca", ca=True)
    for cert, key in (foreign, forged, forged_ca):
        async with tg.session(client_context(tg.bundle, cert, key)) as s:
            with pytest.raises(aiohttp.ClientError):
                async with s.post(f"{tg.url}/v1/tasks", json={"purpose": "x"}) as r:
                    raise AssertionError(f"answered {r.status}")
    async with tg.session(tg.agent(REPORTS, "reports")) as s:  # the door still works for the real one
        await new_task(s, tg.url)


async def test_client_auth_required_refuses_requests_without_a_certificate(
        guard_factory: Any, tmp_path: Path, ca: Pki, upstream: Upstream) -> None:
    tg = tls_guard(guard_factory, tmp_path, ca, upstream, client_auth="required")
    async with tg.session(tg.agent(None, "none")) as s:
        async with s.get(f"{tg.url}/healthz") as r:
            assert r.status == 200
        async with s.post(f"{tg.url}/v1/tasks", json={"purpose": "x"},
                          headers=bearer(tg.guard.token("dev-agent"))) as r:
            body = await problem(r)
            assert r.status == 401 and body["detail"] == "a client certificate (X.509-SVID) is required"


async def test_binding_required_refuses_bearer_task_tokens(
        guard_factory: Any, tmp_path: Path, ca: Pki, upstream: Upstream) -> None:
    tg = tls_guard(guard_factory, tmp_path, ca, upstream)
    async with tg.session(tg.agent(None, "none")) as s:
        async with s.post(f"{tg.url}/v1/tasks", json={"purpose": "x"},
                          headers=bearer(tg.guard.token(PAYMENTS))) as r:
            body = await problem(r)
            assert r.status == 401 and "must bind its task" in body["detail"]
        free = await new_task(s, tg.url, bearer(tg.guard.token("dev-agent")))  # not required: bearer is fine
        assert free["binding"] == "bearer" and "cnf" not in claims_of(free["task_token"])
    async with tg.session(tg.agent(PAYMENTS, "payments")) as s:
        task = await new_task(s, tg.url)
        assert task["binding"] == "mtls"
    out = tg.guard.cli("policy", "check", check=True).stdout
    assert "bearer task tokens allowed for: spiffe://acme/agent/*, dev-*\n" in out
    assert f"bearer task tokens refused for (binding: required): {PAYMENTS}\n" in out


async def test_the_guard_certificate_is_reloaded_without_dropping_connections(
        guard_factory: Any, tmp_path: Path, ca: Pki, upstream: Upstream) -> None:
    tg = tls_guard(guard_factory, tmp_path, ca, upstream)
    ctx = tg.agent(REPORTS, "reports")

    def healthz(conn: http.client.HTTPSConnection) -> int:
        """GET /healthz on `conn`; the serial number of the certificate the guard served on it."""
        from cryptography import x509

        conn.request("GET", "/healthz")
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read()
        assert isinstance(conn.sock, ssl.SSLSocket)
        der = conn.sock.getpeercert(binary_form=True)
        assert der is not None
        return int(x509.load_der_x509_certificate(der).serial_number)

    def fresh() -> int:
        conn = http.client.HTTPSConnection("127.0.0.1", tg.guard.port, context=ctx, timeout=10)
        try:
            return healthz(conn)
        finally:
            conn.close()

    kept = http.client.HTTPSConnection("127.0.0.1", tg.guard.port, context=ctx, timeout=30)
    first = healthz(kept)
    renewed = ca.issue("spiffe://acme/guard", ip_sans="127.0.0.1")
    renewed.write(tg.certs, "guard")

    async def new_serial() -> int | None:
        serial = fresh()
        return serial if serial != first else None

    assert await until(new_serial, "the renewed certificate", timeout=15) == renewed.serial
    assert healthz(kept) == first  # the connection opened before still works, on its handshake
    (tg.certs / "guard.pem").write_text("not a certificate\n")
    await asyncio.sleep(3)
    assert fresh() == renewed.serial  # the bad file kept the last good one in force
    assert healthz(kept) == first
    kept.close()
    errors = [line for line in tg.guard.log().splitlines() if "tls_reload_failed" in line]
    assert len(errors) == 1 and "guard.pem" in errors[0], errors


def tool_upstream(ca: Pki, certs: Path, spiffe_id: str, name: str) -> tuple[Upstream, list[int]]:
    """A tool over TLS with an SVID of `spiffe_id`, asking for the guard's certificate; the list
    collects the serial numbers of the client certificates it was shown."""
    from cryptography import x509

    cert, key = ca.issue(spiffe_id).write(certs, name)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(str(certs / "bundle.pem"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    serials: list[int] = []

    def record(request: Any, seen: Any) -> None:
        sslobj = request.transport.get_extra_info("ssl_object")
        serials.append(x509.load_der_x509_certificate(sslobj.getpeercert(binary_form=True)).serial_number)

    up = Upstream(ssl_context=ctx, handler=record).start()
    return up, serials


async def test_the_guard_reaches_tools_over_mtls_and_checks_their_spiffe_id(
        guard_factory: Any, tmp_path: Path, ca: Pki, upstream: Upstream) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.write_bundle(certs / "bundle.pem")
    guard_svid = ca.issue("spiffe://acme/guard")
    guard_svid.write(certs, "guard-client")
    notes, serials = tool_upstream(ca, certs, "spiffe://acme/tool/notes", "notes")
    impostor, impostor_serials = tool_upstream(ca, certs, "spiffe://acme/tool/other", "impostor")
    tls = {"ca_file": str(certs / "bundle.pem"), "cert_file": str(certs / "guard-client.pem"),
           "key_file": str(certs / "guard-client.key")}
    actions = {"read": {"method": "GET", "path": "/notes/{id}"}}
    policy = {
        "tools": {
            "notes": {"kind": "http", "upstream": notes.url, "actions": actions, "tls": tls,
                      "spiffe_id": "spiffe://acme/tool/notes"},
            "spoofed": {"kind": "http", "upstream": impostor.url, "actions": actions, "tls": tls,
                        "spiffe_id": "spiffe://acme/tool/notes"},
        },
        "rules": [{"id": "reads", "effect": "allow", "match": {"action": "read"}}],
    }
    g = guard_factory(policy)
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(f"{g.url}/v1/tasks", json={"purpose": "notes"},
                              headers=bearer(g.token("spiffe://acme/agent/reports"))) as r:
                task = await r.json()
            async with s.get(f"{g.url}/tools/notes/notes/1", headers=bearer(task["task_token"])) as r:
                assert r.status == 200, await r.text()
            assert serials == [guard_svid.serial]  # the tool saw the guard's SVID
            async with s.get(f"{g.url}/tools/spoofed/notes/1", headers=bearer(task["task_token"])) as r:
                body = await problem(r)
                assert r.status == 502 and body["code"] == "upstream_unavailable"
                assert "spiffe://acme/tool/other" in body["detail"]
            assert impostor.requests == [] and impostor_serials == []  # nothing was sent to it
            failed = [rec for rec in read_trail(g.audit_dir(), task["task_id"]) if rec["event"] == "call_failed"]
            assert len(failed) == 1 and "spiffe://acme/tool/other" in failed[0]["reason"]

            renewed = ca.issue("spiffe://acme/guard")
            renewed.write(certs, "guard-client")  # the guard's SVID rotates: re-read, no restart

            async def shows_renewed() -> bool:
                async with s.get(f"{g.url}/tools/notes/notes/2", headers=bearer(task["task_token"])) as r:
                    assert r.status == 200
                return serials[-1] == renewed.serial

            assert await until(shows_renewed, "the tool to see the renewed SVID", timeout=15)
    finally:
        g.stop()  # the guard's keep-alive connections close first, so the tools' TLS servers end clean
        await asyncio.sleep(0.2)
        notes.stop()
        impostor.stop()


def doc_blocks(lang: str) -> list[str]:
    text = (ROOT / "docs" / "workload-identity.md").read_text(encoding="utf-8")
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.M | re.S)


def test_the_commands_of_docs_workload_identity_work(openbao: OpenBao, tmp_path: Path, upstream: Upstream) -> None:
    """The doc's own command lines, in order: a CA in OpenBao, guard over TLS, an agent with an
    SVID, an agent with DPoP, a key rotation (its ports swapped for free ones)."""
    from tests.support.openbao import bao_binary
    from tests.support.process import free_port, spawn, wait_port

    setup, svid_agent, dpop_agent, rotate = doc_blocks("sh")
    work = tmp_path / "doc"
    work.mkdir()
    port = str(free_port())
    binary = bao_binary()
    assert binary is not None
    env = {**os.environ, "BAO_ADDR": openbao.url, "BAO_TOKEN": openbao.root_token, "HOME": str(work),
           "PATH": f"{Path(binary).parent}:{Path(PY).parent}:{os.environ['PATH']}",
           "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}

    def sh(block: str) -> str:
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", block.replace("8443", port)], cwd=work, env=env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    sh(setup)
    (work / "guard.yaml").write_text(doc_blocks("yaml")[0].replace("8443", port))
    (work / "policies" / "policy.yaml").write_text(yaml.safe_dump(echo_policy(upstream.url)))
    proc = spawn([PY, "-m", "guard", "--config", "guard.yaml", "serve"], work, "guard.log", env)
    try:
        wait_port(int(port), proc=proc.popen)
        out = sh(svid_agent)
        assert "spiffe://acme/agent/reports, bound by mtls" in out and out.count("-> 200") == 2
        out = sh(dpop_agent)
        assert "dev-agent, bound by dpop" in out and out.count("-> 200") == 2
        assert "rotated" in sh(rotate)
    finally:
        proc.stop()


async def test_txn_tokens_and_task_endpoints_of_a_bound_task_need_its_workload(
        guard_factory: Any, tmp_path: Path, ca: Pki, upstream: Upstream) -> None:
    import threading

    base = echo_policy(upstream.url)
    tools = {**base["tools"], "notes": {"kind": "http", "upstream": upstream.url,
                                        "actions": {"read": {"method": "GET", "path": "/notes/{id}"}}}}
    rules = [*base["rules"], {"id": "notes", "effect": "allow", "match": {"tool": "notes"}}]
    tg = tls_guard(guard_factory, tmp_path, ca, upstream, tools=tools, rules=rules)
    release = threading.Event()

    async def hold(request: Any, seen: Any) -> None:
        if request.path == "/items/held":
            while not release.is_set():
                await asyncio.sleep(0.05)

    upstream.handler = hold
    async with tg.session(tg.agent(REPORTS, "reports")) as agent, \
            tg.session(tg.agent("spiffe://acme/agent/other", "other")) as other:
        task = await new_task(agent, tg.url)
        token = task["task_token"]
        async with other.get(f"{tg.url}/v1/tasks/{task['task_id']}", headers=bearer(token)) as r:
            assert r.status == 401 and (await problem(r))["detail"] == "token bound to another workload"
        async with agent.get(f"{tg.url}/v1/tasks/{task['task_id']}", headers=bearer(token)) as r:
            assert r.status == 200
        held = asyncio.ensure_future(agent.get(f"{tg.url}/tools/echo/items/held", headers=bearer(token)))
        seen = await until(lambda: _first(upstream, "/items/held"), "the held call upstream")
        txn = seen.headers["Txn-Token"]
        assert claims_of(txn)["cnf"] == {"spiffe_id": REPORTS}
        async with other.get(f"{tg.url}/tools/notes/notes/1", headers={"Txn-Token": txn}) as r:
            assert r.status == 401 and (await problem(r))["detail"] == "token bound to another workload"
        async with agent.get(f"{tg.url}/tools/notes/notes/1", headers={"Txn-Token": txn}) as r:
            assert r.status == 200, await r.text()
        release.set()
        async with await held as r:
            assert r.status == 200
        async with other.post(f"{tg.url}/v1/tasks/{task['task_id']}/complete", headers=bearer(token)) as r:
            assert r.status == 401
        async with agent.post(f"{tg.url}/v1/tasks/{task['task_id']}/complete", headers=bearer(token)) as r:
            assert r.status == 200 and (await r.json())["status"] == "completed"


async def _first(upstream: Upstream, path: str) -> Any:
    return next((s for s in upstream.requests if s.path_qs == path), None)


async def test_a_new_trust_bundle_takes_effect_for_new_connections(
        guard_factory: Any, tmp_path: Path, ca: Pki, other_ca: Pki, upstream: Upstream) -> None:
    tg = tls_guard(guard_factory, tmp_path, ca, upstream)
    ours = tg.agent(REPORTS, "reports")
    theirs_cert, theirs_key = other_ca.issue(REPORTS).write(tg.certs, "theirs")
    theirs = client_context(tg.bundle, theirs_cert, theirs_key)
    async with tg.session(ours) as s:
        await new_task(s, tg.url)
    async with tg.session(tg.agent("spiffe://acme/tool/notes", "tool")) as s, \
            s.post(f"{tg.url}/v1/tasks", json={"purpose": "x"}) as r:
        assert r.status == 401 and "no x509 issuer admits spiffe://acme/tool/notes" in (await problem(r))["detail"]
    other_ca.write_bundle(tg.certs / "bundle.pem")  # the operator moves the agents to the other CA

    async def theirs_admitted() -> bool:
        try:
            async with tg.session(theirs) as s, s.post(f"{tg.url}/v1/tasks", json={"purpose": "x"}) as r:
                return r.status == 201
        except aiohttp.ClientError:
            return False

    assert await until(theirs_admitted, "the other CA's SVID to be admitted", timeout=15)
    with pytest.raises(aiohttp.ClientError):  # and the old CA's no longer are
        async with tg.session(ours) as s, s.post(f"{tg.url}/v1/tasks", json={"purpose": "x"}) as r:
            raise AssertionError(f"answered {r.status}")


async def test_the_client_sdk_takes_an_svid_as_the_agents_identity(
        guard_factory: Any, tmp_path: Path, ca: Pki, upstream: Upstream) -> None:
    from guard.client import Guard as Client
    from guard.errors import Unauthenticated

    tg = tls_guard(guard_factory, tmp_path, ca, upstream)
    cert, key = ca.issue(REPORTS).write(tg.certs, "sdk")
    async with Client(tg.url, cert=(str(cert), str(key)), ca=str(tg.bundle)) as client, \
            client.task(purpose="pay the invoices") as t:  # no token: the certificate is the identity
        assert t.created["agent"] == REPORTS and t.created["binding"] == "mtls"
        assert (await t.call("echo", "read", id=1))["path"] == "/items/1"
        other_cert, other_key = ca.issue("spiffe://acme/agent/other").write(tg.certs, "sdk-other")
        async with Client(tg.url, cert=(str(other_cert), str(other_key)), ca=str(tg.bundle)) as other:
            t.guard = other  # the same task token from another workload
            try:
                with pytest.raises(Unauthenticated):
                    await t.call("echo", "read", id=2)
            finally:
                t.guard = client
    assert [s.path_qs for s in upstream.requests] == ["/items/1"]
