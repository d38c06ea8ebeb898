"""Shared Signals received (RFC 8935 push, RFC 8936 poll) in process: a real transmitter on loopback
signs SETs with its own key; guard suspends agents, revokes people's tasks, and refuses bad SETs
with RFC 8935 errors that change nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from guard.cli.agents import format_streams
from guard.routes.signals import SIGNALS
from tests.app.conftest import AppFactory
from tests.support.app import AppGuard
from tests.support.client import AGENT, OTHER, bearer, create_task, echo_policy, until
from tests.support.oauth import Forms
from tests.support.ssf import CAEP, RISC, SSF, SsfTransmitter, email, iss_sub, uri
from tests.support.upstream import Upstream

AUD = "https://guard.example"
OWNER = "bob@acme.example"


@pytest.fixture
def transmitter() -> Iterator[SsfTransmitter]:
    t = SsfTransmitter().start()
    yield t
    t.stop()


def signals_config(t: SsfTransmitter, **delivery: Any) -> dict[str, Any]:
    return {"signals": {"transmitters": [{"issuer": t.issuer, "jwks_uri": f"{t.url}/jwks", "audience": AUD,
                                          "delivery": delivery or {"method": "push"}}]}}


def policy(upstream: Upstream) -> dict[str, Any]:
    return {**echo_policy(upstream.url),
            "agents": {AGENT: {"owner": OWNER, "purpose": "research"},
                       "spiffe://acme/agent/o*": {"owner": "carol@acme.example", "purpose": "others"}}}


@pytest.fixture
async def guard(app_factory: AppFactory, upstream: Upstream, transmitter: SsfTransmitter) -> AppGuard:
    return await app_factory(policy(upstream), signals_config(transmitter))


async def push(http: aiohttp.ClientSession, guard: AppGuard, token: str,
               content_type: str = "application/secevent+jwt") -> tuple[int, Any]:
    async with http.post(f"{guard.url}/ssf/events", data=token, headers={"Content-Type": content_type}) as r:
        return r.status, (await r.json() if r.status != 202 else None)


async def status_of(http: aiohttp.ClientSession, guard: AppGuard, task_id: str) -> str:
    async with http.get(f"{guard.url}/v1/tasks/{task_id}", headers=bearer(guard.token("root", "guard:admin"))) as r:
        return str((await r.json())["status"])


async def inventory(http: aiohttp.ClientSession, guard: AppGuard) -> dict[str, dict[str, Any]]:
    async with http.get(f"{guard.url}/v1/agents", headers=bearer(guard.token("root", "guard:admin"))) as r:
        return {row["agent"]: row for row in await r.json()}


async def trail(http: aiohttp.ClientSession, guard: AppGuard, task_id: str) -> list[dict[str, Any]]:
    async with http.get(f"{guard.url}/v1/tasks/{task_id}/audit",
                        headers=bearer(guard.token("root", "guard:auditor"))) as r:
        return list((await r.json())["records"])


async def history(http: aiohttp.ClientSession, guard: AppGuard, agent: str) -> list[dict[str, Any]]:
    async with http.get(f"{guard.url}/v1/agents/{quote(agent, safe='')}/history",
                        headers=bearer(guard.token("root", "guard:auditor"))) as r:
        assert r.status == 200
        return list((await r.json())["records"])


async def test_session_revoked_for_an_agent_suspends_it_like_the_kill_switch(
        guard: AppGuard, transmitter: SsfTransmitter, http: aiohttp.ClientSession) -> None:
    task = await create_task(http, guard.url, guard.token(AGENT))
    other = await create_task(http, guard.url, guard.token(OTHER), requested_by="dave@acme.example")
    token = transmitter.sign({CAEP + "session-revoked": {"event_timestamp": int(time.time())}}, uri(AGENT), AUD)
    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert await push(http, guard, token) == (202, None)
    assert await status_of(http, guard, task["task_id"]) == "revoked"
    assert await status_of(http, guard, other["task_id"]) == "active"
    async with http.get(f"{guard.url}/tools/echo/items/1", headers=bearer(task["task_token"])) as r:
        assert r.status == 403 and (await r.json())["code"] == "task_inactive"
    async with http.post(f"{guard.url}/v1/tasks", json={"purpose": "again"},
                         headers=bearer(guard.token(AGENT))) as r:
        assert r.status == 403 and (await r.json())["code"] == "agent_suspended"
    row = (await inventory(http, guard))[AGENT]
    assert row["suspended"] and row["suspended_by"] == f"ssf:{transmitter.issuer}"
    records = await trail(http, guard, task["task_id"])
    received = next(r for r in records if r["event"] == "signal_received")
    assert received["jti"] == jti and received["transmitter"] == transmitter.issuer
    assert received["event_type"] == CAEP + "session-revoked"
    revoked = next(r for r in records if r["event"] == "task_revoked")
    assert revoked["jti"] == jti and revoked["seq"] > received["seq"]
    events = [(r["event"], r.get("jti")) for r in await history(http, guard, AGENT)]
    assert events == [("signal_received", jti), ("agent_suspended", jti)]


async def test_a_person_disabled_loses_their_tasks_and_their_agents(
        guard: AppGuard, transmitter: SsfTransmitter, http: aiohttp.ClientSession) -> None:
    alices = await create_task(http, guard.url, guard.token(OTHER), requested_by="Alice@acme.example")
    daves = await create_task(http, guard.url, guard.token(OTHER), requested_by="dave@acme.example")
    bobs_agent = await create_task(http, guard.url, guard.token(AGENT), requested_by="dave@acme.example")
    # a CAEP session-revoked of alice: her task ends; nobody's agent is suspended
    assert (await push(http, guard, transmitter.sign({CAEP + "session-revoked": {}},
                                                     email("alice@acme.example"), AUD)))[0] == 202
    assert await status_of(http, guard, alices["task_id"]) == "revoked"
    assert await status_of(http, guard, daves["task_id"]) == "active"
    assert not (await inventory(http, guard))[OTHER]["suspended"]
    # RISC account-disabled of bob, who owns AGENT: owner_gone
    assert (await push(http, guard, transmitter.sign({RISC + "account-disabled": {"reason": "hijacking"}},
                                                     email(OWNER), AUD)))[0] == 202
    rows = await inventory(http, guard)
    assert rows[AGENT]["suspended"] and rows[AGENT]["suspended_reason"].startswith("owner_gone")
    assert not rows[OTHER]["suspended"]
    assert await status_of(http, guard, bobs_agent["task_id"]) == "revoked"
    assert await status_of(http, guard, daves["task_id"]) == "active"
    # carol owns a glob entry: every agent seen that the entry covers is suspended
    assert (await push(http, guard, transmitter.sign({RISC + "account-purged": {}},
                                                     iss_sub("https://idp.example", "carol@acme.example"),
                                                     AUD)))[0] == 202
    assert (await inventory(http, guard))[OTHER]["suspended"]
    assert await status_of(http, guard, daves["task_id"]) == "revoked"


async def test_events_guard_does_not_act_on_are_accepted_and_audited(
        guard: AppGuard, transmitter: SsfTransmitter, http: aiohttp.ClientSession) -> None:
    task = await create_task(http, guard.url, guard.token(AGENT))
    unacted: list[dict[str, dict[str, Any]]] = [
        {CAEP + "token-claims-change": {"claims": {"role": "x"}}},
        {CAEP + "assurance-level-change": {"change_direction": "increase", "current_level": "aal2"}},
        {CAEP + "device-compliance-change": {"current_status": "compliant"}},
        {"https://example.com/event/custom": {}}]
    for events in unacted:
        assert await push(http, guard, transmitter.sign(events, uri(AGENT), AUD)) == (202, None)
    # a subject that names nobody: accepted, nothing changes
    assert await push(http, guard, transmitter.sign({CAEP + "session-revoked": {}},
                                                    uri("spiffe://elsewhere/agent/x"), AUD)) == (202, None)
    assert await status_of(http, guard, task["task_id"]) == "active"
    assert not (await inventory(http, guard))[AGENT]["suspended"]
    async with http.get(f"{guard.url}/v1/tasks/signals/audit", headers=bearer(guard.token("root", "guard:auditor"))
                        ) as r:
        effects = [rec["effect"] for rec in (await r.json())["records"]]
    assert effects == ["none", "none", "none", "none", "no_match"]
    # the CAEP changes downward do act
    down = {CAEP + "device-compliance-change": {"current_status": "not-compliant", "previous_status": "compliant"}}
    assert (await push(http, guard, transmitter.sign(down, uri(AGENT), AUD)))[0] == 202
    assert await status_of(http, guard, task["task_id"]) == "revoked"


async def test_bad_sets_are_refused_with_rfc8935_errors_and_change_nothing(
        guard: AppGuard, transmitter: SsfTransmitter, http: aiohttp.ClientSession) -> None:
    task = await create_task(http, guard.url, guard.token(AGENT))
    revoke: dict[str, dict[str, Any]] = {CAEP + "session-revoked": {}}
    forger = ec.generate_private_key(ec.SECP256R1())
    claims = {"iss": transmitter.issuer, "aud": AUD, "iat": int(time.time()), "jti": uuid.uuid4().hex,
              "events": revoke, "sub_id": uri(AGENT)}
    accepted = transmitter.sign(revoke, uri("spiffe://elsewhere/x"), AUD)
    assert (await push(http, guard, accepted))[0] == 202
    cases = [
        (transmitter.sign(revoke, uri(AGENT), AUD, key=forger), "invalid_key"),  # forged signature
        (jwt.encode(claims, "", algorithm="none", headers={"typ": "secevent+jwt"}), "invalid_key"),
        (jwt.encode(claims, "a-shared-secret-of-32-bytes-long!", algorithm="HS256",
                    headers={"typ": "secevent+jwt", "kid": transmitter.kid}), "invalid_key"),
        (transmitter.sign(revoke, uri(AGENT), "https://someone-else.example"), "invalid_audience"),
        (transmitter.sign(revoke, uri(AGENT), AUD, iss="https://idp.other"), "invalid_issuer"),
        (transmitter.sign(revoke, uri(AGENT), AUD, iat=time.time() - 86400 - 60), "invalid_request"),  # stale
        (transmitter.sign(revoke, uri(AGENT), AUD, iat=time.time() + 301), "invalid_request"),  # future
        (transmitter.sign(revoke, uri(AGENT), AUD, typ="JWT"), "invalid_request"),  # an ordinary JWT
        (transmitter.sign(revoke, {"format": "phone_number", "phone_number": "+1"}, AUD), "invalid_request"),
        (transmitter.sign(revoke, None, AUD), "invalid_request"),  # no subject at all
        (accepted, "invalid_request"),  # replayed jti
        ("not.a.jwt", "invalid_request"),
    ]
    for token, err in cases:
        status, body = await push(http, guard, token)
        assert (status, body["err"]) == (400, err), (token, body)
        assert body["description"]
    status, body = await push(http, guard, transmitter.sign(revoke, uri(AGENT), AUD), content_type="text/plain")
    assert (status, body["err"]) == (400, "invalid_request")
    status, body = await push(http, guard, "x" * 70_000)
    assert (status, body["err"]) == (413, "invalid_request")
    assert await status_of(http, guard, task["task_id"]) == "active"
    assert not (await inventory(http, guard))[AGENT]["suspended"]
    async with http.get(f"{guard.url}/v1/signals/streams", headers=bearer(guard.token("root", "guard:admin"))) as r:
        (stream,) = await r.json()
    # refusals are counted on the stream the SET claims (not for a foreign iss, nor before iss is read)
    assert stream["received"] == 1 and stream["refused"] == len(cases) - 3 and stream["last_event_at"] is not None
    async with http.get(f"{guard.url}/metrics") as r:
        text = await r.text()
    assert f'guard_signals_received_total{{result="invalid_key",transmitter="{transmitter.issuer}"}} 3.0' in text
    assert "guard_signal_last_event_timestamp_seconds{" in text


async def test_unknown_kid_refetches_the_transmitters_jwks(
        guard: AppGuard, transmitter: SsfTransmitter, http: aiohttp.ClientSession) -> None:
    assert (await push(http, guard, transmitter.sign({CAEP + "session-revoked": {}}, uri("spiffe://x/y"), AUD)))[0] \
        == 202
    fetched = transmitter.jwks_fetches
    transmitter.key, transmitter.kid = ec.generate_private_key(ec.SECP256R1()), "rotated"
    for _, keys in guard.client.app[SIGNALS].verifier.transmitters.values():
        keys.fetched_at = time.monotonic() - 60  # past jwks_refetch_min_s
    assert (await push(http, guard, transmitter.sign({CAEP + "session-revoked": {}}, uri("spiffe://x/y"), AUD)))[0] \
        == 202
    assert transmitter.jwks_fetches == fetched + 1


async def test_poll_delivery_receives_and_acknowledges(
        app_factory: AppFactory, upstream: Upstream, transmitter: SsfTransmitter, http: aiohttp.ClientSession) -> None:
    poll = signals_config(transmitter, method="poll", url=f"{transmitter.url}/poll", interval_s=0.2)
    guard = await app_factory(policy(upstream), poll)
    task = await create_task(http, guard.url, guard.token(AGENT))
    good = transmitter.enqueue(transmitter.sign({CAEP + "credential-change": {"credential_type": "x509"}},
                                                uri(AGENT), AUD))
    bad = transmitter.enqueue(transmitter.sign({CAEP + "session-revoked": {}}, uri(AGENT), "https://wrong.example"))
    await until(lambda: _acked(transmitter, good, bad), "the poll acknowledging both SETs")
    assert await status_of(http, guard, task["task_id"]) == "revoked"
    assert transmitter.errors[bad]["err"] == "invalid_audience"
    assert not transmitter.pending
    # a transmitter that fails is visible
    transmitter.status = 503
    polls = transmitter.polls

    async def failed() -> bool:
        async with http.get(f"{guard.url}/v1/signals/streams",
                            headers=bearer(guard.token("root", "guard:admin"))) as r:
            return bool((await r.json())[0]["failures"]) and transmitter.polls > polls + 1

    await until(failed, "the failed polls counted")
    async with http.get(f"{guard.url}/metrics") as r:
        assert f'guard_signal_stream_failures_total{{transmitter="{transmitter.issuer}"}}' in await r.text()


async def _acked(t: SsfTransmitter, good: str, bad: str) -> bool:
    return good in t.acked and bad in t.errors


async def test_stream_events_update_the_stream_and_change_nothing_else(
        guard: AppGuard, transmitter: SsfTransmitter, http: aiohttp.ClientSession) -> None:
    task = await create_task(http, guard.url, guard.token(AGENT))
    for events in ({SSF + "verification": {"state": "abc"}},
                   {SSF + "stream-updated": {"status": "paused", "reason": "maintenance"}}):
        assert await push(http, guard, transmitter.sign(events, None, AUD)) == (202, None)
    async with http.get(f"{guard.url}/v1/signals/streams", headers=bearer(guard.token("root", "guard:admin"))) as r:
        (stream,) = await r.json()
    assert stream["status"] == "paused" and stream["verified_at"] is not None
    assert await status_of(http, guard, task["task_id"]) == "active"


async def test_without_signals_configured_the_endpoint_is_absent(
        app_factory: AppFactory, upstream: Upstream, transmitter: SsfTransmitter, http: aiohttp.ClientSession) -> None:
    guard = await app_factory(policy(upstream))
    status, body = await push(http, guard, transmitter.sign({CAEP + "session-revoked": {}}, uri(AGENT), AUD))
    assert status == 404 and body["code"] == "not_found"


async def test_a_signal_about_a_person_ends_their_sign_in_sessions(
        guard: AppGuard, transmitter: SsfTransmitter) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(f"{guard.url}/login") as r:
            form = Forms(await r.text()).forms["/login/dev"]
        async with browser.post(f"{guard.url}/login/dev", data={**form, "user": "erin@acme.example"},
                                allow_redirects=False) as r:
            assert r.status == 303
        async with browser.get(f"{guard.url}/login/session") as r:
            assert r.status == 200 and (await r.json())["sub"] == "erin@acme.example"
        # someone else's signal leaves the session alone; hers ends it
        assert (await push(browser, guard, transmitter.sign({CAEP + "session-revoked": {}},
                                                            email("frank@acme.example"), AUD)))[0] == 202
        async with browser.get(f"{guard.url}/login/session") as r:
            assert r.status == 200
        assert (await push(browser, guard, transmitter.sign({CAEP + "session-revoked": {}},
                                                            email("Erin@acme.example"), AUD)))[0] == 202
        async with browser.get(f"{guard.url}/login/session") as r:
            assert r.status == 401
    async with aiohttp.ClientSession() as http, http.get(f"{guard.url}/v1/tasks/signals/audit",
                        headers=bearer(guard.token("root", "guard:auditor"))) as r:
        ended = [rec for rec in (await r.json())["records"] if rec["event"] == "sessions_ended"]
    assert [rec["people"] for rec in ended] == [["frank@acme.example"], ["erin@acme.example"]]


async def test_stream_management_reads_the_status_and_verifies_the_stream(
        app_factory: AppFactory, upstream: Upstream, transmitter: SsfTransmitter, http: aiohttp.ClientSession) -> None:
    transmitter.stream_status = "paused"
    config = signals_config(transmitter, method="poll", url=f"{transmitter.url}/poll", interval_s=0.2)
    config["signals"]["transmitters"][0]["configuration_url"] = f"{transmitter.url}/.well-known/ssf-configuration"
    guard = await app_factory(policy(upstream), config)

    async def verified() -> dict[str, Any] | None:
        async with http.get(f"{guard.url}/v1/signals/streams",
                            headers=bearer(guard.token("root", "guard:admin"))) as r:
            (stream,) = await r.json()
        return stream if stream["verified_at"] is not None else None

    stream = await until(verified, "the verification event asked for")
    assert stream["status"] == "paused" and stream["refused"] == 0
    (asked,) = transmitter.verify_requests
    assert len(asked["state"]) >= 16


async def test_the_inventory_command_shows_each_stream(
        guard: AppGuard, transmitter: SsfTransmitter, http: aiohttp.ClientSession) -> None:
    assert (await push(http, guard, transmitter.sign({CAEP + "session-revoked": {}}, uri("spiffe://x/y"), AUD)))[0] \
        == 202
    assert (await push(http, guard, transmitter.sign({CAEP + "session-revoked": {}}, uri("spiffe://x/y"), "nope")))[0] \
        == 400
    async with http.get(f"{guard.url}/v1/signals/streams", headers=bearer(guard.token("root", "guard:admin"))) as r:
        (line,) = format_streams(await r.json())
    assert line.startswith(f"signals from {transmitter.issuer}: enabled, last event 20")
    assert line.endswith("1 received, 1 refused, 0 failures")
