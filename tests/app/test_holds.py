"""Approval holds in process (`Prefer: wait`), over every store: a decision releases a held call,
a client that leaves ends its hold without consuming the approval, and an approval is consumed once."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.support.approvals import World, pending_approval
from tests.support.client import bearer, until


async def test_hold_is_released_by_the_decision(world: World) -> None:
    task = await world.task()
    held, approval_id = await world.held(task, 400)
    assert (await world.decide(approval_id, "approve", "carol@acme.example"))[0] == 200
    status, body = await asyncio.wait_for(held, 20)
    assert status == 200, body
    assert world.forwarded() == 1
    assert (await world.approval(approval_id))["status"] == "consumed"


async def test_client_gone_during_hold_leaves_the_approval_unconsumed(world: World) -> None:
    task = await world.task()
    approval_id = await pending_approval(world, task, 450)
    headers = {**bearer(task["task_token"]), "Prefer": "wait=25"}
    with pytest.raises(asyncio.TimeoutError):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as impatient:
            await impatient.post(f"{world.guard.url}/tools/pay/payments", json={"amount": 450, "to": "bob"},
                                 headers=headers)

    async def held_call_ended() -> bool:
        refusals = [r for r in await world.events(task["task_id"], "call_decided") if r.get("effect") == "step_up"]
        return len(refusals) == 2

    await until(held_call_ended, "the guard to notice the client left")
    assert (await world.decide(approval_id, "approve", "carol@acme.example"))[0] == 200
    assert (await world.approval(approval_id))["status"] == "approved"
    status, _ = await world.call(task, 450)
    assert status == 200 and world.forwarded() == 1


async def test_an_approval_is_consumed_exactly_once_under_concurrency(world: World) -> None:
    task = await world.task()
    approval_id = await pending_approval(world, task, 5000)
    assert (await world.decide(approval_id, "approve", "carol@acme.example"))[0] == 200
    results = await asyncio.gather(*(world.call(task, 5000) for _ in range(20)))
    statuses = sorted(s for s, _ in results)
    assert statuses == [200] + [403] * 19, results
    refused = {b["approval_id"] for s, b in results if s == 403}
    assert len(refused) == 1 and approval_id not in refused  # the rest wait on one new approval
    assert all(b["code"] == "approval_required" for s, b in results if s == 403)
    assert world.forwarded() == 1
    consumed = await world.events(task["task_id"], "approval_consumed")
    assert [c["approval_id"] for c in consumed] == [approval_id]
