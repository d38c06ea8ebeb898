"""guard's own Shared Signals: CAEP session-revoked SETs, signed with guard's key (found through
/.well-known/ssf-configuration), pushed in order to a real receiver on loopback for every task
revoked and agent suspended; retried when the receiver fails, never holding up a revocation."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp
import jwt
import pytest
from aiohttp import web

from tests.app.conftest import AppFactory
from tests.support.app import AppGuard
from tests.support.client import AGENT, bearer, create_task, echo_policy, until
from tests.support.ssf import CAEP
from tests.support.upstream import Seen, Upstream

SIEM = "https://siem.example"


@pytest.fixture
def receiver() -> Any:
    r = Upstream().start()
    yield r
    r.stop()


async def make_guard(app_factory: AppFactory, upstream: Upstream, receiver: Upstream) -> AppGuard:
    return await app_factory(echo_policy(upstream.url),
                             {"signals": {"receivers": [{"url": f"{receiver.url}/ssf", "audience": SIEM,
                                                         "attempts": 4}]}})


async def verified_sets(http: aiohttp.ClientSession, guard: AppGuard, receiver: Upstream) -> list[dict[str, Any]]:
    """What the receiver got, each SET verified as a receiver would: keys found through the SSF
    configuration document."""
    async with http.get(f"{guard.url}/.well-known/ssf-configuration") as r:
        conf = await r.json()
    assert conf["issuer"] == guard.cfg.issuer and conf["spec_version"] == "1_0"
    async with http.get(conf["jwks_uri"].replace(guard.cfg.base_url, guard.url)) as r:
        keys = {k["kid"]: jwt.PyJWK(k) for k in (await r.json())["keys"]}
    out = []
    for seen in receiver.requests:
        if seen.headers.get("Content-Type") != "application/secevent+jwt":
            continue
        token = seen.body.decode()
        header = jwt.get_unverified_header(token)
        assert header["typ"] == "secevent+jwt"
        key = keys[header["kid"]]
        out.append(jwt.decode(token, key.key, algorithms=[key.algorithm_name], audience=SIEM,
                              issuer=conf["issuer"]))
    return out


async def test_every_revocation_and_suspension_is_sent_in_order(
        app_factory: AppFactory, upstream: Upstream, receiver: Upstream, http: aiohttp.ClientSession) -> None:
    receiver.status = 202
    guard = await make_guard(app_factory, upstream, receiver)
    admin = bearer(guard.token("ops@acme.example", "guard:admin"))
    first = await create_task(http, guard.url, guard.token(AGENT))
    done = await create_task(http, guard.url, guard.token(AGENT))
    second = await create_task(http, guard.url, guard.token(AGENT))
    async with http.post(f"{guard.url}/v1/tasks/{first['task_id']}/revoke", json={"reason": "incident"},
                         headers=admin) as r:
        assert r.status == 200
    async with http.post(f"{guard.url}/v1/tasks/{done['task_id']}/complete", headers=bearer(done["task_token"])) as r:
        assert r.status == 200  # a completed task is not a revocation: nothing sent
    async with http.post(f"{guard.url}/v1/agents/{quote(AGENT, safe='')}/suspend", json={"reason": "stolen"},
                         headers=admin) as r:
        assert r.status == 200
    sets = await until(lambda: _at_least(http, guard, receiver, 3), "three SETs at the receiver")
    assert [s["events"][CAEP + "session-revoked"]["reason_admin"]["en"][:14] for s in sets] == \
        ["task revoked: ", "agent suspende", "task revoked: "]
    assert sets[0]["txn"] == first["task_id"] and sets[2]["txn"] == second["task_id"]
    assert sets[0]["sub_id"] == {"format": "complex", "application": {"format": "uri", "uri": AGENT},
                                 "session": {"format": "opaque", "id": first["task_id"]}}
    assert sets[1]["sub_id"] == {"format": "uri", "uri": AGENT}
    assert len({s["jti"] for s in sets}) == 3
    auditor = bearer(guard.token("sec@acme.example", "guard:auditor"))

    async def sent_record() -> dict[str, Any] | None:
        async with http.get(f"{guard.url}/v1/tasks/{first['task_id']}/audit", headers=auditor) as r:
            return next((x for x in (await r.json())["records"] if x["event"] == "signal_sent"), None)

    record = await until(sent_record, "signal_sent in the task's trail")
    assert record["jti"] == sets[0]["jti"] and record["status"] == 202 and record["receiver"] == f"{receiver.url}/ssf"


async def _at_least(http: aiohttp.ClientSession, guard: AppGuard, receiver: Upstream,
                    n: int) -> list[dict[str, Any]] | None:
    sets = await verified_sets(http, guard, receiver)
    return sets if len(sets) >= n else None


async def test_a_failing_receiver_is_retried_and_never_holds_up_a_revocation(
        app_factory: AppFactory, upstream: Upstream, receiver: Upstream, http: aiohttp.ClientSession) -> None:
    answers = [503, 503, 202]

    def flaky(request: web.Request, seen: Seen) -> web.Response:
        return web.Response(status=answers.pop(0) if answers else 202)

    receiver.handler = flaky
    guard = await make_guard(app_factory, upstream, receiver)
    task = await create_task(http, guard.url, guard.token(AGENT))
    async with http.post(f"{guard.url}/v1/tasks/{task['task_id']}/revoke", json={"reason": "x"},
                         headers=bearer(guard.token("ops@acme.example", "guard:admin"))) as r:
        assert r.status == 200
    await until(lambda: asyncio.sleep(0, not answers and len(receiver.requests) == 3), "the third attempt")
    sets = await verified_sets(http, guard, receiver)
    assert len({s["jti"] for s in sets}) == 1  # the same SET, tried three times

    # a receiver that never answers: the revocation still completes at once, the failure is audited
    receiver.handler = None
    receiver.status = 500
    other = await create_task(http, guard.url, guard.token(AGENT))
    async with http.post(f"{guard.url}/v1/tasks/{other['task_id']}/revoke", json={"reason": "x"},
                         headers=bearer(guard.token("ops@acme.example", "guard:admin"))) as r:
        assert r.status == 200 and (await r.json())["status"] == "revoked"

    async def failed() -> dict[str, Any] | None:
        async with http.get(f"{guard.url}/v1/tasks/{other['task_id']}/audit",
                            headers=bearer(guard.token("sec@acme.example", "guard:auditor"))) as r:
            return next((x for x in (await r.json())["records"] if x["event"] == "signal_failed"), None)

    record = await until(failed, "signal_failed after the bounded attempts")
    assert record["status"] == 500 and record["detail"] == "receiver answered 500"
    assert receiver.requests[-1].headers["Content-Type"] == "application/secevent+jwt"


async def test_without_signals_there_is_no_ssf_configuration(
        app_factory: AppFactory, upstream: Upstream, http: aiohttp.ClientSession) -> None:
    guard = await app_factory(echo_policy(upstream.url))
    async with http.get(f"{guard.url}/.well-known/ssf-configuration") as r:
        assert r.status == 404
