"""The Store contract, run against every backend (memory and a real redis-server).

`store` is one store; `peer` is a second store on the same state (for Redis, another client,
as another guard instance would hold), so races between instances are part of the contract."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from typing import Any

import pytest

from guard.domain import Approval, AuditRecord, CallLimits, Task, TaskState
from guard.hashchain import GENESIS, verify_chain
from guard.identity.tokens import new_id
from guard.stores import Store


def make_task(now: float | None = None, **kw: Any) -> Task:
    now = time.time() if now is None else now
    fields: dict[str, Any] = {
        "task_id": new_id("task"), "agent": "spiffe://acme/agent/a", "purpose": "weekly report",
        "requested_by": "alice@acme.example", "status": "active", "created_at": now, "expires_at": now + 3600,
        "idle_s": 900.0, **kw,
    }
    return Task(**fields)


async def new_task(store: Store, **kw: Any) -> Task:
    task = make_task(**kw)
    await store.create_task(task)
    return task


def limits(call_id: str | None = None, now: float | None = None, **kw: Any) -> CallLimits:
    return CallLimits(call_id or new_id("call"), time.time() if now is None else now, kw.pop("entry", "notes.read"),
                      **kw)


def make_approval(task: Task, digest: str = "d1", required: int = 1, ttl: float = 900.0,
                  now: float | None = None) -> Approval:
    now = time.time() if now is None else now
    return Approval(new_id("apr"), task.task_id, digest, "notes", "write", "POST", "/notes", {"body": "x" * 3},
                    "big-notes", ("finance",), required, "pending", now, now + ttl)


def decision(approver: str, verdict: str = "approve") -> dict[str, Any]:
    return {"approver": approver, "decision": verdict, "reason": None, "at": time.time(), "via": "token"}


# -- tasks -----------------------------------------------------------------------------------------


async def test_a_created_task_reads_back_whole(store: Store, peer: Store) -> None:
    task = await new_task(store, max_calls=7, tools=("notes", "files"), labels={"env": "prod"})
    state = await peer.get_task(task.task_id)
    assert state is not None
    assert state.task == task
    assert (state.calls, state.last_call_at, state.history) == (0, task.created_at, frozenset())
    assert await store.get_task("task_unknown") is None


def ids(states: list[TaskState]) -> set[str]:
    return {s.task.task_id for s in states}


async def test_list_tasks_filters_by_status_and_agent(store: Store) -> None:
    a1 = await new_task(store)
    a2 = await new_task(store)
    b1 = await new_task(store, agent="spiffe://acme/agent/b")
    await store.end_task(a2.task_id, "completed", time.time(), None)
    assert {a1.task_id, a2.task_id, b1.task_id} <= ids(await store.list_tasks())
    assert ids(await store.list_tasks(agent="spiffe://acme/agent/b")) == {b1.task_id}
    active_a = ids(await store.list_tasks(status="active", agent=a1.agent))
    assert a1.task_id in active_a and a2.task_id not in active_a
    assert a2.task_id in ids(await store.list_tasks(status="completed"))


async def test_an_ended_task_never_becomes_active_again(store: Store, peer: Store) -> None:
    task = await new_task(store)
    now = time.time()
    ended = await store.end_task(task.task_id, "revoked", now, "leaked token")
    assert ended is not None
    assert (ended.status, ended.ended_at, ended.end_reason) == ("revoked", now, "leaked token")
    assert await peer.end_task(task.task_id, "completed", now + 1, None) is None
    assert await store.end_task(task.task_id, "expired", now + 1, "idle") is None
    state = await peer.get_task(task.task_id)
    assert state is not None and state.task.status == "revoked" and state.task.end_reason == "leaked token"
    adm = await store.admit_call(task.task_id, limits())
    assert (adm.ok, adm.reason) == (False, "task_inactive")
    assert await store.end_task("task_unknown", "completed", now, None) is None


async def test_only_one_of_racing_ends_wins(store: Store, peer: Store) -> None:
    task = await new_task(store)
    results = await asyncio.gather(*(
        (store if i % 2 else peer).end_task(task.task_id, "revoked" if i % 2 else "completed", time.time(), None)
        for i in range(20)
    ))
    assert sum(r is not None for r in results) == 1


async def test_an_expired_task_admits_nothing(store: Store) -> None:
    now = time.time()
    task = await new_task(store, created_at=now - 100, expires_at=now - 1)
    state = await store.get_task(task.task_id)
    assert state is not None and state.effective_status(now) == "expired"
    adm = await store.admit_call(task.task_id, limits(now=now))
    assert (adm.ok, adm.reason) == (False, "task_inactive")


async def test_an_idle_task_expires_and_a_call_keeps_it_alive(store: Store) -> None:
    now = time.time()
    idle = await new_task(store, created_at=now - 20, idle_s=10.0)
    adm = await store.admit_call(idle.task_id, limits(now=now))
    assert (adm.ok, adm.reason) == (False, "task_inactive")
    busy = await new_task(store, created_at=now - 8, idle_s=10.0)
    assert (await store.admit_call(busy.task_id, limits(now=now))).ok
    state = await store.get_task(busy.task_id)
    assert state is not None and state.last_call_at == now
    assert state.effective_status(now + 9) == "active" and state.effective_status(now + 10) == "expired"
    assert (await store.admit_call(busy.task_id, limits(now=now + 9))).ok


async def test_admitting_an_unknown_task_says_not_found(store: Store) -> None:
    adm = await store.admit_call("task_unknown", limits())
    assert (adm.ok, adm.reason) == (False, "not_found")


# -- calls -----------------------------------------------------------------------------------------


async def test_exactly_max_calls_of_50_concurrent_admits_pass(store: Store, peer: Store) -> None:
    task = await new_task(store, max_calls=5)
    results = await asyncio.gather(*((store if i % 2 else peer).admit_call(task.task_id, limits())
                                     for i in range(50)))
    assert sum(r.ok for r in results) == 5
    assert {r.reason for r in results if not r.ok} == {"budget_exhausted"}
    assert sorted(r.calls for r in results if r.ok) == [1, 2, 3, 4, 5]
    state = await store.get_task(task.task_id)
    assert state is not None and state.calls == 5


async def test_a_rate_is_a_sliding_window_per_rule(store: Store, peer: Store) -> None:
    task = await new_task(store)
    now = time.time()
    rates = (("r-fast", 3, 60.0),)
    results = await asyncio.gather(*((store if i % 2 else peer).admit_call(task.task_id, limits(now=now, rates=rates))
                                     for i in range(10)))
    assert sum(r.ok for r in results) == 3
    refused = [r for r in results if not r.ok]
    assert {(r.reason, r.rule_id) for r in refused} == {("rate_limited", "r-fast")}
    assert all(r.retry_after is not None and 0 < r.retry_after <= 60 for r in refused)
    later = await store.admit_call(task.task_id, limits(now=now + 30, rates=rates))
    assert (later.ok, later.reason) == (False, "rate_limited")
    assert later.retry_after == pytest.approx(30.0, abs=0.01)
    assert (await store.admit_call(task.task_id, limits(now=now + 60.001, rates=rates))).ok
    state = await store.get_task(task.task_id)
    assert state is not None and state.calls == 4


async def test_every_rate_must_hold_and_a_refusal_counts_nothing(store: Store) -> None:
    task = await new_task(store, max_calls=10)
    now = time.time()
    rates = (("wide", 5, 60.0), ("narrow", 1, 10.0))
    assert (await store.admit_call(task.task_id, limits(now=now, rates=rates))).ok
    second = await store.admit_call(task.task_id, limits(now=now + 1, rates=rates))
    assert (second.ok, second.reason, second.rule_id) == (False, "rate_limited", "narrow")
    only_wide = await store.admit_call(task.task_id, limits(now=now + 1, rates=rates[:1]))
    assert only_wide.ok and only_wide.calls == 2  # the refused call took no slot of `wide`


async def test_an_uncounted_admission_checks_but_counts_nothing(store: Store) -> None:
    task = await new_task(store, max_calls=1)
    adm = await store.admit_call(task.task_id, limits(count=False, entry="notes.list"))
    assert adm.ok
    state = await store.get_task(task.task_id)
    assert state is not None and (state.calls, state.history) == (0, frozenset())
    assert (await store.admit_call(task.task_id, limits())).ok
    assert (await store.admit_call(task.task_id, limits(count=False))).ok
    assert (await store.admit_call(task.task_id, limits())).reason == "budget_exhausted"


async def test_a_chained_call_needs_its_parent_in_flight(store: Store, peer: Store) -> None:
    task = await new_task(store)
    assert (await store.admit_call(task.task_id, limits("call_parent"))).ok
    assert await peer.call_in_flight(task.task_id, "call_parent")
    assert (await peer.admit_call(task.task_id, limits("call_child", parent_call_id="call_parent"))).ok
    await store.finish_call(task.task_id, "call_parent")
    assert not await peer.call_in_flight(task.task_id, "call_parent")
    late = await peer.admit_call(task.task_id, limits("call_late", parent_call_id="call_parent"))
    assert (late.ok, late.reason) == (False, "txn_inactive")
    assert not await store.call_in_flight("task_unknown", "call_parent")


async def test_ending_a_task_ends_its_calls_in_flight(store: Store) -> None:
    task = await new_task(store)
    assert (await store.admit_call(task.task_id, limits("call_1"))).ok
    await store.end_task(task.task_id, "completed", time.time(), None)
    assert not await store.call_in_flight(task.task_id, "call_1")


async def test_history_records_every_admitted_tool_action(store: Store, peer: Store) -> None:
    task = await new_task(store)
    for entry in ("vault.read", "notes.write", "vault.read"):
        assert (await store.admit_call(task.task_id, limits(entry=entry))).ok
    state = await peer.get_task(task.task_id)
    assert state is not None
    assert (state.calls, state.history) == (3, frozenset({"vault.read", "notes.write"}))


# -- credentials -----------------------------------------------------------------------------------


async def test_a_credential_is_consumed_once_under_concurrency(store: Store, peer: Store) -> None:
    jti = new_id("jti")
    exp = time.time() + 30
    results = await asyncio.gather(*((store if i % 2 else peer).consume_credential(jti, exp) for i in range(20)))
    assert results.count(True) == 1
    assert not await store.consume_credential(jti, exp)
    assert await store.consume_credential(new_id("jti"), exp)


async def test_a_dpop_proof_is_used_once_under_concurrency_and_apart_from_credentials(
        store: Store, peer: Store) -> None:
    key = new_id("dpop")
    exp = time.time() + 30
    results = await asyncio.gather(*((store if i % 2 else peer).consume_dpop_jti(key, exp) for i in range(20)))
    assert results.count(True) == 1
    assert not await peer.consume_dpop_jti(key, exp)
    assert await store.consume_credential(key, exp)  # a credential jti of the same value is another thing
    assert await store.consume_dpop_jti(new_id("dpop"), exp)


async def test_a_shared_signal_is_received_once_under_concurrency_and_apart_from_other_jtis(
        store: Store, peer: Store) -> None:
    key = new_id("set")
    exp = time.time() + 30
    results = await asyncio.gather(*((store if i % 2 else peer).consume_signal_jti(key, exp) for i in range(20)))
    assert results.count(True) == 1
    assert not await peer.consume_signal_jti(key, exp)
    assert await store.consume_dpop_jti(key, exp) and await store.consume_credential(key, exp)
    assert await store.consume_signal_jti(new_id("set"), exp)


# -- approvals -------------------------------------------------------------------------------------


async def test_the_same_call_while_pending_gets_the_same_approval(store: Store, peer: Store) -> None:
    task = await new_task(store)
    first, created = await store.open_approval(make_approval(task))
    assert created and first.status == "pending"
    again, created_again = await peer.open_approval(make_approval(task))
    assert not created_again and again.approval_id == first.approval_id
    other, created_other = await store.open_approval(make_approval(task, digest="d2"))
    assert created_other and other.approval_id != first.approval_id
    assert await peer.get_approval(first.approval_id) == first
    assert await store.get_approval("apr_unknown") is None
    assert {a.approval_id for a in await store.list_approvals(task.task_id, "pending")} == {
        first.approval_id, other.approval_id}


async def test_racing_opens_create_one_approval(store: Store, peer: Store) -> None:
    task = await new_task(store)
    results = await asyncio.gather(*((store if i % 2 else peer).open_approval(make_approval(task))
                                     for i in range(20)))
    assert sum(created for _, created in results) == 1
    assert len({a.approval_id for a, _ in results}) == 1


async def test_an_expired_pending_approval_is_replaced_by_a_new_one(store: Store) -> None:
    task = await new_task(store)
    old, _ = await store.open_approval(make_approval(task, ttl=1.0, now=time.time() - 10))
    new, created = await store.open_approval(make_approval(task))
    assert created and new.approval_id != old.approval_id
    stale = await store.get_approval(old.approval_id)
    assert stale is not None and stale.status == "expired"
    latest = await store.latest_approval(task.task_id, "d1")
    assert latest is not None and latest.approval_id == new.approval_id


async def test_a_quorum_needs_distinct_approvers(store: Store, peer: Store) -> None:
    task = await new_task(store)
    a, _ = await store.open_approval(make_approval(task, required=2))
    outcome, after_one = await store.decide_approval(a.approval_id, decision("bob"), time.time())
    assert outcome == "recorded" and after_one is not None and after_one.status == "pending"
    outcome, dup = await peer.decide_approval(a.approval_id, decision("bob"), time.time())
    assert outcome == "duplicate" and dup is not None and dup.status == "pending"
    outcome, done = await peer.decide_approval(a.approval_id, decision("carol"), time.time())
    assert outcome == "recorded" and done is not None and done.status == "approved"
    assert [d["approver"] for d in done.decisions] == ["bob", "carol"]
    assert done.decisions[0] == after_one.decisions[0]
    outcome, closed = await store.decide_approval(a.approval_id, decision("dave"), time.time())
    assert outcome == "closed" and closed is not None and closed.status == "approved"
    assert await store.get_approval(a.approval_id) == done


async def test_one_deny_denies(store: Store) -> None:
    task = await new_task(store)
    a, _ = await store.open_approval(make_approval(task, required=2))
    await store.decide_approval(a.approval_id, decision("bob"), time.time())
    outcome, denied = await store.decide_approval(a.approval_id, decision("carol", "deny"), time.time())
    assert outcome == "recorded" and denied is not None and denied.status == "denied"
    assert await store.consume_approval(task.task_id, "d1", time.time()) is None
    latest = await store.latest_approval(task.task_id, "d1")
    assert latest is not None and latest.status == "denied"


async def test_concurrent_decisions_reach_the_quorum_once(store: Store, peer: Store) -> None:
    task = await new_task(store)
    a, _ = await store.open_approval(make_approval(task, required=3))
    results = await asyncio.gather(*((store if i % 2 else peer).decide_approval(
        a.approval_id, decision(f"approver-{i}"), time.time()) for i in range(10)))
    outcomes = [o for o, _ in results]
    assert outcomes.count("recorded") == 3 and outcomes.count("closed") == 7
    final = await store.get_approval(a.approval_id)
    assert final is not None and final.status == "approved" and len(final.decisions) == 3


async def test_a_decision_after_expiry_finds_it_closed(store: Store) -> None:
    task = await new_task(store)
    a, _ = await store.open_approval(make_approval(task, ttl=60.0))
    outcome, closed = await store.decide_approval(a.approval_id, decision("bob"), a.expires_at + 1)
    assert outcome == "closed" and closed is not None and closed.status == "expired"
    assert (await store.decide_approval("apr_unknown", decision("bob"), time.time())) == ("not_found", None)


async def test_latest_approval_expires_a_pending_one_past_its_time(store: Store) -> None:
    task = await new_task(store)
    assert await store.latest_approval(task.task_id, "d1") is None
    a, _ = await store.open_approval(make_approval(task, ttl=1.0, now=time.time() - 5))
    latest = await store.latest_approval(task.task_id, "d1")
    assert latest is not None and (latest.approval_id, latest.status) == (a.approval_id, "expired")
    assert await store.list_approvals(task.task_id, "pending") == []


async def test_an_approval_is_consumed_exactly_once(store: Store, peer: Store) -> None:
    task = await new_task(store)
    a, _ = await store.open_approval(make_approval(task))
    assert await store.consume_approval(task.task_id, "d1", time.time()) is None  # still pending
    await store.decide_approval(a.approval_id, decision("bob"), time.time())
    results = await asyncio.gather(*((store if i % 2 else peer).consume_approval(task.task_id, "d1", time.time())
                                     for i in range(20)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and winners[0].approval_id == a.approval_id and winners[0].status == "consumed"
    got = await peer.get_approval(a.approval_id)
    assert got is not None and got.status == "consumed"
    assert await store.consume_approval(task.task_id, "d2", time.time()) is None


async def test_an_approved_approval_past_expiry_is_not_consumed(store: Store) -> None:
    task = await new_task(store)
    a, _ = await store.open_approval(make_approval(task, ttl=60.0))
    await store.decide_approval(a.approval_id, decision("bob"), time.time())
    assert await store.consume_approval(task.task_id, "d1", a.expires_at) is None
    assert await store.consume_approval(task.task_id, "d1", time.time()) is not None


async def test_ending_a_task_expires_its_pending_approvals(store: Store, peer: Store) -> None:
    task = await new_task(store)
    pending, _ = await store.open_approval(make_approval(task, digest="d1"))
    approved, _ = await store.open_approval(make_approval(task, digest="d2"))
    await store.decide_approval(approved.approval_id, decision("bob"), time.time())
    other_task = await new_task(store)
    untouched, _ = await store.open_approval(make_approval(other_task))
    await peer.end_task(task.task_id, "completed", time.time(), None)
    got = await store.get_approval(pending.approval_id)
    assert got is not None and got.status == "expired"
    kept = await store.get_approval(approved.approval_id)
    assert kept is not None and kept.status == "approved"
    assert await store.list_approvals(task.task_id, "pending") == []
    outcome, _ = await store.decide_approval(pending.approval_id, decision("carol"), time.time())
    assert outcome == "closed"
    other = await store.get_approval(untouched.approval_id)
    assert other is not None and other.status == "pending"
    assert untouched.approval_id in {a.approval_id for a in await store.list_approvals(status="pending")}


# -- audit -----------------------------------------------------------------------------------------


async def test_concurrent_appends_make_one_verified_chain(store: Store, peer: Store) -> None:
    task = await new_task(store)
    drafts = [{"ts": time.time(), "task_id": task.task_id, "event": "call_decided", "agent": task.agent,
               "call_id": f"call_{i}", "detail": None} for i in range(60)]
    written = await asyncio.gather(*((store if i % 2 else peer).append_audit(task.task_id, d)
                                     for i, d in enumerate(drafts)))
    records = [r.fields for r in await peer.read_audit(task.task_id)]
    assert [r["seq"] for r in records] == list(range(1, 61))
    assert records[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["hash"] for a, b in itertools.pairwise(records))
    assert verify_chain(records).verified
    assert sorted(str(r["call_id"]) for r in records) == sorted(str(d["call_id"]) for d in drafts)
    assert {r.seq: r.fields for r in written} == {r["seq"]: r for r in records}
    assert "detail" not in records[0]


async def test_a_trail_of_a_task_the_store_never_had_still_chains(store: Store) -> None:
    for i in range(3):
        await store.append_audit("task_elsewhere", {"task_id": "task_elsewhere", "event": "e", "agent": "a", "n": i})
    records = [r.fields for r in await store.read_audit("task_elsewhere")]
    assert [r["n"] for r in records] == [0, 1, 2] and verify_chain(records).verified
    assert await store.read_audit("task_never") == []


async def test_a_record_keeps_its_values_exactly(store: Store) -> None:
    task = await new_task(store)
    fields = {"ts": 1717000000.123456, "task_id": task.task_id, "event": "call_forwarded", "agent": task.agent,
              "latency_ms": 0.1 + 0.2, "detail": "naïve ✓", "chain": ["a", "b"]}
    rec = await store.append_audit(task.task_id, fields)
    [back] = await store.read_audit(task.task_id)
    assert back.fields == rec.fields and back.fields["ts"] == 1717000000.123456


async def test_an_ended_task_reads_back_with_its_end(store: Store) -> None:
    task = await new_task(store)
    ended = await store.end_task(task.task_id, "completed", 1717000001.5, None)
    state = await store.get_task(task.task_id)
    assert state is not None and state.task == ended == dataclasses.replace(
        task, status="completed", ended_at=1717000001.5)


# -- fused operations of the allow path --------------------------------------------------------------


def draft(task: Task, event: str, call_id: str) -> dict[str, Any]:
    return {"ts": time.time(), "task_id": task.task_id, "event": event, "agent": task.agent, "call_id": call_id}


async def test_admit_and_record_admits_max_calls_of_50_and_records_only_those(store: Store, peer: Store) -> None:
    task = await new_task(store, max_calls=5)

    async def one(i: int) -> tuple[bool, Any]:
        if i % 5 == 0:  # other records land on the chain meanwhile, from either handle
            await (peer if i % 2 else store).append_audit(task.task_id, draft(task, "approval_requested", f"x{i}"))
        lim = limits(f"call_{i}")
        adm, rec = await (store if i % 2 else peer).admit_and_record(
            task.task_id, lim, draft(task, "call_decided", lim.call_id))
        return adm.ok, rec

    results = await asyncio.gather(*(one(i) for i in range(50)))
    admitted = [rec for ok, rec in results if ok]
    assert len(admitted) == 5 and all(rec is not None for rec in admitted)
    assert all(rec is None for ok, rec in results if not ok)
    records = [r.fields for r in await peer.read_audit(task.task_id)]
    assert verify_chain(records).verified and len(records) == 5 + 10
    decided = sorted(str(r["call_id"]) for r in records if r["event"] == "call_decided")
    assert decided == sorted(str(rec.fields["call_id"]) for rec in admitted if rec is not None)
    state = await store.get_task(task.task_id)
    assert state is not None and state.calls == 5


async def test_a_refused_admit_and_record_changes_nothing(store: Store) -> None:
    task = await new_task(store, max_calls=1)
    assert (await store.admit_and_record(task.task_id, limits(), draft(task, "call_decided", "c1")))[0].ok
    adm, rec = await store.admit_and_record(task.task_id, limits("c2"), draft(task, "call_decided", "c2"))
    assert (adm.ok, adm.reason, rec) == (False, "budget_exhausted", None)
    await store.end_task(task.task_id, "revoked", time.time(), "test")
    adm, rec = await store.admit_and_record(task.task_id, limits("c3"), draft(task, "call_decided", "c3"))
    assert (adm.ok, adm.reason, rec) == (False, "task_inactive", None)
    assert [r.fields["call_id"] for r in await store.read_audit(task.task_id)] == ["c1"]
    assert not await store.call_in_flight(task.task_id, "c2")


async def test_record_and_finish_ends_the_call_and_counts_it_for_the_agent(store: Store, peer: Store) -> None:
    task = await new_task(store)
    lim = limits("call_1", agent=task.agent, entry="vault.read")
    adm, first = await store.admit_and_record(task.task_id, lim, draft(task, "call_decided", "call_1"))
    assert adm.ok and first is not None and first.fields["prev_hash"] == GENESIS
    assert await peer.call_in_flight(task.task_id, "call_1")
    child = await peer.admit_and_record(task.task_id, limits("call_2", parent_call_id="call_1"),
                                        draft(task, "call_decided", "call_2"))
    assert child[0].ok
    last = await store.record_and_finish(task.task_id, "call_1", draft(task, "call_forwarded", "call_1"))
    assert not await peer.call_in_flight(task.task_id, "call_1")
    late = await peer.admit_and_record(task.task_id, limits("call_3", parent_call_id="call_1"),
                                       draft(task, "call_decided", "call_3"))
    assert (late[0].ok, late[0].reason, late[1]) == (False, "txn_inactive", None)
    records = [r.fields for r in await peer.read_audit(task.task_id)]
    assert [r["call_id"] for r in records] == ["call_1", "call_2", "call_1"] and verify_chain(records).verified
    assert records[-1] == last.fields
    stats = (await peer.agent_stats())[task.agent]
    assert (stats.calls, stats.tools_used) == (1, frozenset({"vault"}))


async def test_append_with_agent_event_counts_it_once_even_when_the_append_is_retried(
    store: Store, peer: Store
) -> None:
    task = await new_task(store)
    await store.append_audit(task.task_id, draft(task, "call_decided", "c1"))  # store learns the tail
    await peer.append_audit(task.task_id, draft(task, "call_decided", "c2"))  # the tail moves: store retries
    refusal = {**draft(task, "call_decided", "c3"), "ts": 1234.5}
    rec = await store.append_audit(task.task_id, refusal, agent_event="call_denied")
    records = [r.fields for r in await peer.read_audit(task.task_id)]
    assert [r["call_id"] for r in records] == ["c1", "c2", "c3"] and verify_chain(records).verified
    assert rec.fields == records[-1]
    stats = (await peer.agent_stats())[task.agent]
    assert (stats.denied, stats.calls, stats.last_seen) == (1, 0, 1234.5)


async def test_credential_holdings_compare_and_set_and_claim_once(store: Store, peer: Store) -> None:
    task = await new_task(store)
    assert await store.held_credential(task.task_id, "lease:db") is None
    assert await store.hold_credential(task.task_id, "lease:db", "mine") == "mine"
    assert await peer.hold_credential(task.task_id, "lease:db", "theirs") == "mine"  # the first one stays
    assert await peer.hold_credential(task.task_id, "lease:db", "newer", previous="mine") == "newer"
    assert await store.hold_credential(task.task_id, "lease:db", "stale", previous="mine") == "newer"
    assert await store.hold_credential(task.task_id, "token:notes:r", "tok") == "tok"
    assert task.task_id in await peer.credential_tasks()
    claims = await asyncio.gather(store.claim_credentials(task.task_id), peer.claim_credentials(task.task_id))
    assert sorted(len(c) for c in claims) == [0, 2]  # one claimer takes everything
    assert max(claims, key=len) == {"lease:db": "newer", "token:notes:r": "tok"}
    assert task.task_id not in await store.credential_tasks()
    assert await store.held_credential(task.task_id, "lease:db") is None


# -- one busy task: many appends at once -------------------------------------------------------------


async def test_a_busy_task_chains_every_kind_of_concurrent_append_in_one_order(store: Store, peer: Store) -> None:
    """Many calls of one task at once, from two instances: each admitted and finished, with other
    records in between. Every record answered is in the chain at its seq, and the chain verifies."""
    task = await new_task(store)

    async def call(i: int) -> list[Any]:
        handle = store if i % 3 else peer
        lim = limits(f"call_{i}", agent=task.agent)
        adm, decided = await handle.admit_and_record(task.task_id, lim, draft(task, "call_decided", lim.call_id))
        assert adm.ok and decided is not None
        out = [decided]
        if i % 4 == 0:
            out.append(await (peer if i % 2 else store).append_audit(task.task_id, draft(task, "note", lim.call_id)))
        out.append(await handle.record_and_finish(task.task_id, lim.call_id, draft(task, "call_forwarded",
                                                                                   lim.call_id)))
        return out

    written = [r for rs in await asyncio.gather(*(call(i) for i in range(150))) for r in rs]
    records = [r.fields for r in await peer.read_audit(task.task_id)]
    assert len(records) == len(written) == 150 * 2 + 38
    assert verify_chain(records).verified
    assert {r.seq: r.fields for r in written} == {r["seq"]: r for r in records}
    for i in range(0, 150, 37):  # each call's records in its own order
        mine = [r["event"] for r in records if r["call_id"] == f"call_{i}"]
        assert mine in (["call_decided", "call_forwarded"], ["call_decided", "note", "call_forwarded"])
    state = await store.get_task(task.task_id)
    assert state is not None and state.calls == 150
    assert not any([await store.call_in_flight(task.task_id, f"call_{i}") for i in range(0, 150, 10)])
    assert (await peer.agent_stats())[task.agent].calls == 150


async def test_refusals_amid_concurrent_admissions_leave_the_admitted_ones_chained(store: Store, peer: Store) -> None:
    """Refused calls between admitted ones of the same moment append nothing, and the admitted
    ones after them still land, chained in one order; the budget holds exactly."""
    task = await new_task(store, max_calls=25)

    async def one(i: int) -> tuple[bool, str | None]:
        lim = limits(f"call_{i}", rates=(("per-second", 1000, 1.0),) if i % 2 else ())
        if i % 7 == 0:  # a chained call whose parent is not in flight: refused whatever the budget
            lim = dataclasses.replace(lim, parent_call_id="call_gone")
        adm, rec = await (store if i % 5 else peer).admit_and_record(
            task.task_id, lim, draft(task, "call_decided", lim.call_id))
        assert (rec is not None) == adm.ok
        return adm.ok, adm.reason

    results = await asyncio.gather(*(one(i) for i in range(80)))
    assert sum(ok for ok, _ in results) == 25
    assert {reason for ok, reason in results if not ok} == {"txn_inactive", "budget_exhausted"}
    records = [r.fields for r in await peer.read_audit(task.task_id)]
    assert len(records) == 25 and verify_chain(records).verified
    state = await peer.get_task(task.task_id)
    assert state is not None and state.calls == 25


async def test_an_append_whose_caller_gave_up_leaves_the_chain_whole(store: Store) -> None:
    """Callers that go away while their records wait for their turn: the others are chained,
    and whatever was appended is in the chain, which verifies."""
    task = await new_task(store)
    calls = [asyncio.ensure_future(store.append_audit(task.task_id, draft(task, "note", f"c{i}")))
             for i in range(100)]
    await asyncio.sleep(0)
    for c in calls[1::3]:
        c.cancel()
    done = [r for r in await asyncio.gather(*calls, return_exceptions=True) if isinstance(r, AuditRecord)]
    records = [r.fields for r in await store.read_audit(task.task_id)]
    assert verify_chain(records).verified
    assert {r.seq: r.fields for r in done} == {r["seq"]: r for r in records if r["seq"] in {d.seq for d in done}}
    assert len(done) >= 66 and len(records) >= len(done)
    after = await store.append_audit(task.task_id, draft(task, "note", "last"))
    assert after.seq == len(records) + 1


# -- baselines -------------------------------------------------------------------------------------


async def test_a_baseline_remembers_actions_and_the_busiest_earlier_hour(store: Store, peer: Store) -> None:
    agent = new_id("agent")
    hour = 3600 * 500_000.0
    first = await store.observe_activity(agent, "notes.read", hour + 10)
    assert (first.first_at, first.known, first.hour_calls, first.busiest) == (hour + 10, False, 1, 0)
    again = await peer.observe_activity(agent, "notes.read", hour + 20)  # another instance, the same baseline
    assert (again.first_at, again.known, again.hour_calls, again.busiest) == (hour + 10, True, 2, 0)
    await store.observe_activity(agent, "notes.write", hour + 30)
    later = await peer.observe_activity(agent, "notes.read", hour + 3600 + 5)  # the next hour
    assert (later.known, later.hour_calls, later.busiest) == (True, 1, 3)
    quiet = await store.observe_activity(agent, "notes.read", hour + 3 * 3600)  # a quieter hour keeps the peak
    assert (quiet.hour_calls, quiet.busiest) == (1, 3)
    stats = (await peer.baseline_stats([agent, new_id("nobody")]))
    assert list(stats) == [agent]
    assert stats[agent].actions == {"notes.read", "notes.write"} and stats[agent].busiest == 3
    assert stats[agent].first_at == hour + 10 and stats[agent].hour_calls == 1
