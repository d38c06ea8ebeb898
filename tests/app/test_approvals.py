"""Step-up approvals in process: guard's app and a webhook receiver on real sockets in this loop,
the recording upstream, over every store. (examples/approver.py, a restart, several instances:
tests/e2e/test_approvals_processes.py.)"""

from __future__ import annotations

import json
import time

import aiohttp

from guard.approvals.signature import sign, verify
from tests.app.conftest import AppFactory
from tests.support.approvals import (
    ENV,
    OPS_SECRET,
    REQUESTER,
    SECRET,
    Receiver,
    World,
    guard_config,
    pending_approval,
    policy,
)
from tests.support.client import AGENT, bearer, until
from tests.support.upstream import Upstream


async def test_webhook_is_signed_and_carries_the_contract_payload(world: World) -> None:
    task = await world.task()
    approval_id = await pending_approval(world, task, 500)
    receiver = world.receiver
    assert receiver is not None
    await until(lambda: world.events(task["task_id"], "webhook_delivered"), "the delivery")
    headers, body = receiver.requests[0]
    verify(headers["Guard-Signature"], body, SECRET)
    assert json.loads(body) == {
        "type": "approval.requested",
        "approval_id": approval_id,
        "task": {"task_id": task["task_id"], "agent": AGENT, "purpose": "weekly research report",
                 "requested_by": REQUESTER},
        "call": {"tool": "pay", "action": "create", "method": "POST", "path": "/payments",
                 "args": {"amount": 500, "to": "bob"}},
        "rule_id": "big-payments",
        "expires_at": json.loads(body)["expires_at"],
        "decision_url": f"{world.guard.url}/v1/approvals/{approval_id}/decision",
    }
    assert json.loads(body)["expires_at"] > time.time()

    # the same call while pending: the same approval, no second request to approvers
    status, again = await world.call(task, 500)
    assert (status, again["code"], again["approval_id"]) == (403, "approval_required", approval_id)
    assert len(await world.events(task["task_id"], "approval_requested")) == 1
    delivered = await world.events(task["task_id"], "webhook_delivered")
    assert [(d["webhook"], d["attempt"], d["status"]) for d in delivered] == [("finance", 1, 200)]
    assert world.forwarded() == 0

    async with world.http.get(f"{world.guard.url}/v1/tasks/{task['task_id']}",
                              headers=bearer(task["task_token"])) as r:
        assert (await r.json())["pending_approvals"] == [approval_id]


async def test_signed_decisions_good_bad_stale_and_foreign(world: World) -> None:
    task = await world.task()
    approval_id = await pending_approval(world, task, 700)
    body = {"decision": "approve", "approver": "carol@acme.example", "reason": "invoice 42"}

    status, err = await world.decide_signed(approval_id, body, secret="not-the-secret")
    assert (status, err["code"]) == (401, "unauthenticated")
    status, err = await world.decide_signed(approval_id, body, t=int(time.time()) - 301)
    assert (status, err["code"]) == (401, "unauthenticated")
    status, err = await world.decide_signed(approval_id, body, t=int(time.time()) + 301)
    assert (status, err["code"]) == (401, "unauthenticated")
    status, err = await world.decide_signed(approval_id, body, header="t=1,v1=zz")
    assert (status, err["code"]) == (401, "unauthenticated")
    # signed by a webhook that the rule does not name
    status, err = await world.decide_signed(approval_id, body, secret=OPS_SECRET)
    assert (status, err["code"]) == (403, "forbidden")
    status, err = await world.decide_signed(approval_id, {"decision": "approve"})
    assert (status, err["code"]) == (400, "bad_request")
    assert (await world.approval(approval_id))["status"] == "pending"

    status, view = await world.decide_signed(approval_id, body)
    assert status == 200, view
    assert view["status"] == "approved"
    assert [(d["approver"], d["decision"], d["via"]) for d in view["decisions"]] == [
        ("carol@acme.example", "approve", "webhook:finance")]
    decided = await world.events(task["task_id"], "approval_decided")
    assert [(d["approver"], d["decision"], d["via"]) for d in decided] == [
        ("carol@acme.example", "approve", "webhook:finance")]

    status, ok = await world.call(task, 700)
    assert status == 200, ok
    assert world.forwarded() == 1
    status, again = await world.call(task, 700)  # the next identical call needs a new approval
    assert again["code"] == "approval_required" and again["approval_id"] != approval_id
    assert world.forwarded() == 1
    status, closed = await world.decide_signed(approval_id, {**body, "approver": "dave@acme.example"})
    assert (status, closed["code"]) == (409, "approval_closed")


async def test_a_signed_decision_cannot_be_replayed(world: World) -> None:
    task = await world.task()
    first = await pending_approval(world, task, 310)
    second = await pending_approval(world, task, 320)
    raw = json.dumps({"decision": "approve", "approver": "carol@acme.example"}).encode()
    header = sign(SECRET, raw)

    async def post(approval_id: str, sig: str) -> int:
        async with world.http.post(f"{world.guard.url}/v1/approvals/{approval_id}/decision", data=raw,
                                   headers={"Content-Type": "application/json", "Guard-Signature": sig}) as r:
            return r.status

    assert await post(first, header) == 200
    assert await post(second, header) == 401  # the same signed request, aimed at another approval
    assert await post(second, f"{header},v1={'0' * 64}") == 401  # padding the header changes nothing
    assert (await world.approval(second))["status"] == "pending"
    # a body that names its approval is refused anywhere else
    status, err = await world.decide_signed(second, {"approval_id": first, "decision": "approve",
                                                     "approver": "carol@acme.example"})
    assert (status, err["code"]) == (400, "bad_request")
    assert (await world.approval(second))["status"] == "pending"


async def test_quorum_needs_distinct_approvers(world: World) -> None:
    task = await world.task()
    approval_id = await pending_approval(world, task, 20000)
    status, view = await world.decide(approval_id, "approve", "carol@acme.example")
    assert (status, view["status"]) == (200, "pending")
    status, dup = await world.decide(approval_id, "approve", "carol@acme.example")
    assert (status, dup["code"]) == (409, "duplicate_decision")
    status, dup = await world.decide_signed(approval_id, {"decision": "approve", "approver": "carol@acme.example"})
    assert (status, dup["code"]) == (409, "duplicate_decision")
    status, held = await world.call(task, 20000)
    assert held["code"] == "approval_required"
    assert world.forwarded() == 0
    status, view = await world.decide(approval_id, "approve", "dave@acme.example")
    assert (status, view["status"]) == (200, "approved")
    assert {d["approver"] for d in view["decisions"]} == {"carol@acme.example", "dave@acme.example"}
    status, _ = await world.call(task, 20000)
    assert status == 200 and world.forwarded() == 1


async def test_one_deny_denies_and_the_call_is_refused(world: World) -> None:
    task = await world.task()
    approval_id = await pending_approval(world, task, 20000)
    assert (await world.decide(approval_id, "approve", "carol@acme.example"))[0] == 200
    status, view = await world.decide(approval_id, "deny", "dave@acme.example", reason="not budgeted")
    assert (status, view["status"]) == (200, "denied")
    status, err = await world.call(task, 20000)
    assert (status, err["code"], err["approval_id"]) == (403, "approval_denied", approval_id)
    status, err = await world.call(task, 20000, wait=5)
    assert err["code"] == "approval_denied"
    status, err = await world.decide(approval_id, "approve", "erin@acme.example")
    assert (status, err["code"]) == (409, "approval_closed")
    assert world.forwarded() == 0


async def test_nobody_approves_their_own_task(world: World) -> None:
    task = await world.task()
    approval_id = await pending_approval(world, task, 900)
    for who in (REQUESTER, "ALICE@acme.example", AGENT):
        status, err = await world.decide(approval_id, "approve", who)
        assert (status, err["code"]) == (403, "forbidden"), who
    status, err = await world.decide_signed(approval_id, {"decision": "approve", "approver": REQUESTER})
    assert (status, err["code"]) == (403, "forbidden")
    # a token without the approver role decides nothing
    async with world.http.post(f"{world.guard.url}/v1/approvals/{approval_id}/decision",
                               json={"decision": "approve"}, headers=bearer(world.token("mallory@acme.example"))) as r:
        assert r.status == 403
    # nor does the agent's task token
    async with world.http.post(f"{world.guard.url}/v1/approvals/{approval_id}/decision",
                               json={"decision": "approve"}, headers=bearer(task["task_token"])) as r:
        assert r.status == 401
    assert (await world.approval(approval_id))["status"] == "pending"
    refused = await world.events(task["task_id"], "approval_decision_refused")
    assert len(refused) == 4
    status, err = await world.call(task, 900)
    assert err["code"] == "approval_required" and world.forwarded() == 0


async def test_who_may_read_an_approval(world: World) -> None:
    task = await world.task()
    other = await world.task()
    approval_id = await pending_approval(world, task, 300)
    url = f"{world.guard.url}/v1/approvals/{approval_id}"
    for token, expected in [
        (task["task_token"], 200),
        (world.token(AGENT), 200),
        (world.token("carol@acme.example", "guard:approver"), 200),
        (world.token("root@acme.example", "guard:admin"), 200),
        (other["task_token"], 403),
        (world.token("mallory@acme.example"), 403),
    ]:
        async with world.http.get(url, headers=bearer(token)) as r:
            assert r.status == expected, token
            if r.status == 200:
                view = await r.json()
                assert view["status"] == "pending" and view["args"] == {"amount": 300, "to": "bob"}
                assert view["task_id"] == task["task_id"] and view["rule_id"] == "big-payments"
    async with world.http.get(f"{world.guard.url}/v1/approvals/apr_nope", headers=bearer(world.token(AGENT))) as r:
        assert r.status == 404


async def test_different_arguments_never_ride_on_an_approval(world: World) -> None:
    task = await world.task()
    approval_id = await pending_approval(world, task, 500)
    assert (await world.decide(approval_id, "approve", "carol@acme.example"))[0] == 200
    status, other = await world.call(task, 501)
    assert status == 403 and other["code"] == "approval_required" and other["approval_id"] != approval_id
    async with world.http.post(f"{world.guard.url}/tools/pay/payments", json={"amount": 500, "to": "mallory"},
                               headers=bearer(task["task_token"])) as r:
        assert (await r.json())["code"] == "approval_required"
    assert world.forwarded() == 0
    assert (await world.call(task, 500))[0] == 200
    assert world.forwarded() == 1


async def test_completing_the_task_cancels_approvals_and_deliveries(world: World) -> None:
    receiver = world.receiver
    assert receiver is not None
    receiver.status = 503
    task = await world.task()
    approval_id = await pending_approval(world, task, 600)
    await until(lambda: world.events(task["task_id"], "webhook_failed"), "a failed delivery")
    async with world.http.post(f"{world.guard.url}/v1/tasks/{task['task_id']}/complete",
                               headers=bearer(task["task_token"])) as r:
        assert r.status == 200
    assert (await world.approval(approval_id))["status"] == "expired"
    receiver.status = 200
    cancelled = await until(lambda: world.events(task["task_id"], "webhook_cancelled"), "the delivery to stop", 60)
    assert cancelled[0]["approval_id"] == approval_id
    assert not await world.events(task["task_id"], "webhook_delivered")
    status, err = await world.decide(approval_id, "approve", "carol@acme.example")
    assert (status, err["code"]) == (409, "approval_closed")


async def test_expired_approvals_are_refused(app_factory: AppFactory, upstream: Upstream, receiver: Receiver,
                                             http: aiohttp.ClientSession, store_url: str) -> None:
    receiver.status = 500  # never delivered: retried until the approval expires, then abandoned
    g = await app_factory(policy(upstream.url), guard_config(store_url, receiver.url, ttl_s=3), env=ENV)
    w = World(g, http, upstream, receiver)
    task = await w.task()
    approval_id = await pending_approval(w, task, 800)

    async def expired() -> bool:
        return bool((await w.approval(approval_id))["status"] == "expired")

    await until(expired, "the approval to expire")
    status, err = await w.decide(approval_id, "approve", "carol@acme.example")
    assert (status, err["code"]) == (409, "approval_closed")
    status, err = await w.call(task, 800)
    assert (status, err["code"]) == (403, "approval_denied")
    abandoned = await until(lambda: w.events(task["task_id"], "webhook_abandoned"), "the delivery to give up")
    failed = await w.events(task["task_id"], "webhook_failed")
    assert abandoned[0]["webhook"] == "finance" and len(failed) >= 1
    assert all(f["status"] == 500 for f in failed)
    assert [f["attempt"] for f in failed] == list(range(1, len(failed) + 1))
    assert w.forwarded() == 0
    async with http.get(f"{g.url}/metrics") as r:
        assert f'guard_webhook_delivery_failures_total{{webhook="finance"}} {float(len(failed))}' in await r.text()


async def test_a_granted_approval_never_used_expires_like_a_pending_one(
    app_factory: AppFactory, upstream: Upstream, receiver: Receiver, http: aiohttp.ClientSession, store_url: str
) -> None:
    """Approved but never used before `expires_at`: the identical call answers 403
    approval_denied with that approval_id, and no new approval is opened."""
    g = await app_factory(policy(upstream.url), guard_config(store_url, receiver.url, ttl_s=3), env=ENV)
    w = World(g, http, upstream, receiver)
    task = await w.task()
    approval_id = await pending_approval(w, task, 800)
    status, view = await w.decide(approval_id, "approve", "carol@acme.example")
    assert (status, view["status"]) == (200, "approved")
    expires_at = (await w.approval(approval_id))["expires_at"]

    async def past_expiry() -> bool:
        return bool(time.time() > expires_at + 0.2)

    await until(past_expiry, "the granted approval's expires_at to pass")
    for wait in (None, 2):  # a plain repeat, and one that asks to be held
        status, err = await w.call(task, 800, wait=wait)
        assert (status, err["code"], err.get("approval_id")) == (403, "approval_denied", approval_id), err
    assert (await w.approval(approval_id))["status"] == "expired"
    assert w.forwarded() == 0
    assert len(await w.events(task["task_id"], "approval_requested")) == 1  # nothing reopened
    refused = [r for r in await w.events(task["task_id"], "call_decided") if r.get("detail") == "approval_denied"]
    assert [r["approval_id"] for r in refused] == [approval_id, approval_id]
