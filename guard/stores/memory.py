"""The in-memory store: one process, nothing shared. Every method runs without awaiting,
so each is atomic on the event loop."""

from __future__ import annotations

import dataclasses
import heapq
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from guard.domain import (
    AGENT_COUNTERS,
    Activity,
    Admission,
    AgentEvent,
    AgentStats,
    Approval,
    ApprovalStatus,
    AuditRecord,
    BaselineStats,
    CallLimits,
    Delivery,
    Retention,
    Task,
    TaskState,
)
from guard.hashchain import GENESIS, chain_record
from guard.stores.base import (
    BASELINE_MAX_ACTIONS,
    DecideOutcome,
    RefreshOutcome,
    RegistrationLimits,
    RegistrationOutcome,
)

__all__ = ["MemoryStore"]


@dataclass
class _TaskRow:
    task: Task
    calls: int = 0
    last_call_at: float = 0.0
    history: set[str] = field(default_factory=set)
    in_flight: set[str] = field(default_factory=set)
    rate_hits: dict[str, deque[float]] = field(default_factory=dict)
    audit: list[AuditRecord] = field(default_factory=list)
    data: set[str] = field(default_factory=set)  # content: the task's data labels
    values: dict[str, str] = field(default_factory=dict)  # content: value digest -> source call id

    def state(self) -> TaskState:
        return TaskState(self.task, self.calls, self.last_call_at, frozenset(self.history))


class MemoryStore:
    def __init__(self, tails_only: bool = False, retention: Retention | None = None) -> None:
        self.retention = retention or Retention()
        self._ended: list[tuple[float, str]] = []  # (ended_at, task_id), a heap: what retention forgets next
        self._kept_trails: list[tuple[float, str]] = []  # (ended_at, task_id) of trails kept past their task
        # with the durable audit folder, only each chain's tail is kept here (memory stays flat
        # however many calls a task makes): read_audit has nothing, and AuditLog reads the folder
        self._tails_only = tails_only
        self._tails: dict[str, tuple[int, str]] = {}
        self._agents: dict[str, AgentStats] = {}
        self._tasks: dict[str, _TaskRow] = {}
        self._consumed: dict[str, float] = {}
        self._consumed_heap: list[tuple[float, str]] = []
        self._dpop_seen: dict[str, float] = {}
        self._dpop_heap: list[tuple[float, str]] = []
        self._baselines: dict[str, dict[str, Any]] = {}  # agent -> first_at, hour, count, busiest, actions
        self._sets_seen: dict[str, float] = {}  # Shared Signals SETs already received (guard.signals)
        self._sets_heap: list[tuple[float, str]] = []
        self._approvals: dict[str, Approval] = {}
        self._pending_by_call: dict[tuple[str, str], str] = {}
        self._latest_by_call: dict[tuple[str, str], str] = {}
        self._deliveries: dict[str, Delivery] = {}
        self._orphans: dict[str, list[AuditRecord]] = {}  # trails of task ids this store never had
        self._grants: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}  # (kind, key) -> (expiry, obj)
        self._creds: dict[str, dict[str, str]] = {}  # per-task credential holdings, by slot
        self._pins: dict[str, dict[str, str]] = {}  # content: tool -> MCP tool name -> definition digest
        self._clients: dict[str, float] = {}  # registered client -> expiry (oauth.registration.max_clients)
        self._registrations: dict[str, tuple[float, int]] = {}  # source -> (its window's end, attempts)

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # -- tasks -------------------------------------------------------------
    async def create_task(self, task: Task) -> None:
        self._tasks[task.task_id] = _TaskRow(task, last_call_at=task.created_at)

    async def get_task(self, task_id: str) -> TaskState | None:
        row = self._tasks.get(task_id)
        return row.state() if row else None

    async def end_task(self, task_id: str, status: str, now: float, reason: str | None) -> Task | None:
        row = self._tasks.get(task_id)
        if row is None or row.task.status != "active":
            return None
        row.task = dataclasses.replace(row.task, status=status, ended_at=now, end_reason=reason)  # type: ignore[arg-type]
        row.in_flight.clear()
        heapq.heappush(self._ended, (now, task_id))
        for key, aid in list(self._pending_by_call.items()):
            if key[0] == task_id:
                self._approvals[aid] = dataclasses.replace(self._approvals[aid], status="expired")
                del self._pending_by_call[key]
        return row.task

    async def list_tasks(self, status: str | None = None, agent: str | None = None) -> list[TaskState]:
        return [
            r.state()
            for r in self._tasks.values()
            if (status is None or r.task.status == status) and (agent is None or r.task.agent == agent)
        ]

    # -- content and tool integrity ---------------------------------------------
    async def add_task_data(self, task_id: str, labels: Iterable[str]) -> None:
        row = self._tasks.get(task_id)
        if row is not None:
            row.data.update(labels)

    async def task_data(self, task_id: str) -> frozenset[str]:
        row = self._tasks.get(task_id)
        return frozenset(row.data) if row is not None else frozenset()

    async def remember_values(self, task_id: str, digests: Mapping[str, str]) -> None:
        row = self._tasks.get(task_id)
        if row is not None:
            for digest, call_id in digests.items():
                row.values.setdefault(digest, call_id)

    async def recall_values(self, task_id: str, digests: Iterable[str]) -> dict[str, str]:
        row = self._tasks.get(task_id)
        if row is None or not row.values:
            return {}
        return {d: row.values[d] for d in digests if d in row.values}

    async def tool_pins(self, tool: str) -> dict[str, str]:
        return dict(self._pins.get(tool, {}))

    async def pin_first(self, tool: str, pins: Mapping[str, str]) -> dict[str, str]:
        held = self._pins.setdefault(tool, {})
        return {name: held.setdefault(name, digest) for name, digest in pins.items()}

    async def set_pins(self, tool: str, pins: Mapping[str, str]) -> None:
        self._pins.setdefault(tool, {}).update(pins)

    # -- retention -----------------------------------------------------------
    async def expired_tasks(self, now: float, limit: int = 500) -> list[str]:
        return [tid for tid, row in self._tasks.items()
                if row.task.status == "active" and row.state().effective_status(now) == "expired"][:limit]

    async def purge_ended(self, now: float, limit: int = 1000) -> int:
        keep_s, audit_s = self.retention.ended_task_s, self.retention.audit_s
        purged = 0
        while keep_s is not None and self._ended and self._ended[0][0] <= now - keep_s and purged < limit:
            ended_at, task_id = heapq.heappop(self._ended)
            row = self._tasks.pop(task_id, None)
            if row is None:
                continue
            purged += 1
            self._tails.pop(task_id, None)
            if row.audit and audit_s != 0:  # no audit folder: the trail outlives its task here
                self._orphans[task_id] = row.audit
                heapq.heappush(self._kept_trails, (ended_at, task_id))
            for aid in [a.approval_id for a in self._approvals.values() if a.task_id == task_id]:
                del self._approvals[aid]
            for index in (self._pending_by_call, self._latest_by_call):
                for key in [k for k in index if k[0] == task_id]:
                    del index[key]
            for did in [d.delivery_id for d in self._deliveries.values() if d.task_id == task_id]:
                del self._deliveries[did]
        while audit_s is not None and self._kept_trails and self._kept_trails[0][0] <= now - audit_s:
            self._orphans.pop(heapq.heappop(self._kept_trails)[1], None)
        return purged

    # -- calls -------------------------------------------------------------
    async def admit_call(self, task_id: str, limits: CallLimits) -> Admission:
        return self._admit(task_id, limits)

    def _admit(self, task_id: str, limits: CallLimits) -> Admission:
        row = self._tasks.get(task_id)
        if row is None:
            return Admission(False, "not_found")
        state = row.state()
        if state.effective_status(limits.now) != "active":
            return Admission(False, "task_inactive", calls=row.calls)
        if limits.parent_call_id is not None and limits.parent_call_id not in row.in_flight:
            return Admission(False, "txn_inactive", calls=row.calls)
        if not limits.count:
            return Admission(True, calls=row.calls)
        if row.task.max_calls is not None and row.calls >= row.task.max_calls:
            return Admission(False, "budget_exhausted", calls=row.calls)
        windows: list[deque[float]] = []
        for rule_id, calls, per_s in limits.rates:
            hits = row.rate_hits.setdefault(rule_id, deque())
            while hits and hits[0] <= limits.now - per_s:
                hits.popleft()
            if len(hits) >= calls:
                return Admission(False, "rate_limited", rule_id, hits[0] + per_s - limits.now, row.calls)
            windows.append(hits)
        for hits in windows:
            hits.append(limits.now)
        row.calls += 1
        row.last_call_at = limits.now
        row.history.add(limits.history_entry)
        row.in_flight.add(limits.call_id)
        if limits.agent is not None:
            self._agent_event(limits.agent, "call_allowed", limits.now, limits.tool)
        return Admission(True, calls=row.calls)

    async def finish_call(self, task_id: str, call_id: str) -> None:
        self._finish(task_id, call_id)

    def _finish(self, task_id: str, call_id: str) -> None:
        row = self._tasks.get(task_id)
        if row is not None:
            row.in_flight.discard(call_id)

    async def call_in_flight(self, task_id: str, call_id: str) -> bool:
        row = self._tasks.get(task_id)
        return row is not None and call_id in row.in_flight

    async def admit_and_record(
        self, task_id: str, limits: CallLimits, fields: dict[str, Any]
    ) -> tuple[Admission, AuditRecord | None]:
        admission = self._admit(task_id, limits)  # atomic with the append: nothing awaited between
        return admission, (self._append(task_id, fields) if admission.ok else None)

    async def record_and_finish(self, task_id: str, call_id: str, fields: dict[str, Any]) -> AuditRecord:
        record = self._append(task_id, fields)
        self._finish(task_id, call_id)
        return record

    # -- credentials -------------------------------------------------------
    async def consume_credential(self, jti: str, exp: float) -> bool:
        now = time.time()
        while self._consumed_heap and self._consumed_heap[0][0] < now - 60:
            _, old = heapq.heappop(self._consumed_heap)
            self._consumed.pop(old, None)
        if jti in self._consumed:
            return False
        self._consumed[jti] = exp
        heapq.heappush(self._consumed_heap, (exp, jti))
        return True

    async def consume_dpop_jti(self, key: str, exp: float) -> bool:
        now = time.time()
        while self._dpop_heap and self._dpop_heap[0][0] < now:
            _, old = heapq.heappop(self._dpop_heap)
            self._dpop_seen.pop(old, None)
        if key in self._dpop_seen:
            return False
        self._dpop_seen[key] = exp
        heapq.heappush(self._dpop_heap, (exp, key))
        return True

    async def observe_activity(self, agent: str, key: str, now: float) -> Activity:
        b = self._baselines.setdefault(agent, {"first_at": now, "hour": -1, "count": 0, "busiest": 0,
                                               "actions": set()})
        known = key in b["actions"]
        if not known and len(b["actions"]) < BASELINE_MAX_ACTIONS:
            b["actions"].add(key)
        hour = int(now // 3600)
        if hour > b["hour"]:
            b["busiest"] = max(b["busiest"], b["count"])
            b["hour"], b["count"] = hour, 0
        b["count"] += 1
        return Activity(b["first_at"], known, b["count"], b["busiest"])

    async def baseline_stats(self, agents: list[str]) -> dict[str, BaselineStats]:
        return {a: BaselineStats(b["first_at"], frozenset(b["actions"]), b["busiest"], b["count"])
                for a in agents if (b := self._baselines.get(a)) is not None}

    async def consume_signal_jti(self, key: str, exp: float) -> bool:
        now = time.time()
        while self._sets_heap and self._sets_heap[0][0] < now:
            _, old = heapq.heappop(self._sets_heap)
            self._sets_seen.pop(old, None)
        if key in self._sets_seen:
            return False
        self._sets_seen[key] = exp
        heapq.heappush(self._sets_heap, (exp, key))
        return True

    # -- approvals ---------------------------------------------------------
    async def hold_credential(self, task_id: str, slot: str, value: str, previous: str | None = None) -> str:
        held = self._creds.setdefault(task_id, {})
        if held.get(slot) == previous:
            held[slot] = value
        return held[slot]

    async def held_credential(self, task_id: str, slot: str) -> str | None:
        return self._creds.get(task_id, {}).get(slot)

    async def claim_credentials(self, task_id: str) -> dict[str, str]:
        return self._creds.pop(task_id, {})

    async def credential_tasks(self) -> list[str]:
        return sorted(self._creds)

    async def open_approval(self, approval: Approval) -> tuple[Approval, bool]:
        key = (approval.task_id, approval.call_digest)
        aid = self._pending_by_call.get(key)
        if aid is not None:
            existing = self._approvals[aid]
            if existing.status == "pending" and existing.expires_at > approval.created_at:
                return existing, False
            if existing.status == "pending":
                self._approvals[aid] = dataclasses.replace(existing, status="expired")
            del self._pending_by_call[key]
        self._approvals[approval.approval_id] = approval
        self._pending_by_call[key] = approval.approval_id
        self._latest_by_call[key] = approval.approval_id
        return approval, True

    async def get_approval(self, approval_id: str) -> Approval | None:
        return self._approvals.get(approval_id)

    async def decide_approval(
        self, approval_id: str, decision: dict[str, Any], now: float
    ) -> tuple[DecideOutcome, Approval | None]:
        a = self._approvals.get(approval_id)
        if a is None:
            return "not_found", None
        if a.status == "pending" and a.expires_at <= now:
            a = self._expire(a)
        if a.status != "pending":
            return "closed", a
        if any(d["approver"] == decision["approver"] for d in a.decisions):
            return "duplicate", a
        decisions = (*a.decisions, decision)
        approvals = {d["approver"] for d in decisions if d["decision"] == "approve"}
        status: ApprovalStatus = "pending"
        if decision["decision"] == "deny":
            status = "denied"
        elif len(approvals) >= a.required:
            status = "approved"
        a = dataclasses.replace(a, decisions=decisions, status=status)
        self._approvals[approval_id] = a
        if status != "pending":
            self._pending_by_call.pop((a.task_id, a.call_digest), None)
        return "recorded", a

    def _expire(self, a: Approval) -> Approval:
        a = dataclasses.replace(a, status="expired")
        self._approvals[a.approval_id] = a
        self._pending_by_call.pop((a.task_id, a.call_digest), None)
        return a

    async def consume_approval(self, task_id: str, call_digest: str, now: float) -> Approval | None:
        aid = self._latest_by_call.get((task_id, call_digest))
        a = self._approvals.get(aid) if aid else None
        if a is None or a.status != "approved" or a.expires_at <= now:
            return None
        a = dataclasses.replace(a, status="consumed")
        self._approvals[a.approval_id] = a
        return a

    async def latest_approval(self, task_id: str, call_digest: str) -> Approval | None:
        aid = self._latest_by_call.get((task_id, call_digest))
        a = self._approvals.get(aid) if aid else None
        if a is not None and a.status == "pending" and a.expires_at <= time.time():
            a = self._expire(a)
        return a

    async def list_approvals(self, task_id: str | None = None, status: str | None = None) -> list[Approval]:
        return [
            a
            for a in self._approvals.values()
            if (task_id is None or a.task_id == task_id) and (status is None or a.status == status)
        ]

    # -- agents (the inventory) ---------------------------------------------
    def _agent_event(self, agent: str, kind: AgentEvent, now: float, tool: str | None) -> None:
        a = self._agents.get(agent) or AgentStats(agent)
        counter = AGENT_COUNTERS[kind]
        tools = a.tools_used
        if kind == "call_allowed" and tool is not None and tool not in tools:
            tools = tools | {tool}
        self._agents[agent] = AgentStats(  # built directly: dataclasses.replace costs more than the rest
            agent=agent,
            first_seen=a.first_seen if a.first_seen is not None else now,
            last_seen=max(now, a.last_seen or now),
            tasks_created=a.tasks_created + (counter == "tasks_created"),
            calls=a.calls + (counter == "calls"),
            denied=a.denied + (counter == "denied"),
            attempts=a.attempts + (counter == "attempts"),
            tools_used=tools,
            suspended=a.suspended,
            suspended_reason=a.suspended_reason,
            suspended_by=a.suspended_by,
            suspended_at=a.suspended_at,
        )

    async def record_agent_event(self, agent: str, kind: AgentEvent, now: float, tool: str | None = None) -> None:
        self._agent_event(agent, kind, now, tool)

    async def agent_stats(self) -> dict[str, AgentStats]:
        return dict(self._agents)

    async def suspend_agent(self, agent: str, reason: str, actor: str, now: float) -> bool:
        a = self._agents.get(agent) or AgentStats(agent)
        if a.suspended:
            return False
        self._agents[agent] = dataclasses.replace(
            a, suspended=True, suspended_reason=reason, suspended_by=actor, suspended_at=now
        )
        return True

    async def restore_agent(self, agent: str) -> bool:
        a = self._agents.get(agent)
        if a is None or not a.suspended:
            return False
        self._agents[agent] = dataclasses.replace(
            a, suspended=False, suspended_reason=None, suspended_by=None, suspended_at=None
        )
        return True

    async def is_suspended(self, agent: str) -> bool:
        a = self._agents.get(agent)
        return a is not None and a.suspended

    # -- webhook deliveries --------------------------------------------------
    async def save_delivery(self, delivery: Delivery) -> None:
        self._deliveries[delivery.delivery_id] = delivery

    async def claim_deliveries(self, owner: str, now: float, lease_until: float) -> list[Delivery]:
        claimed: list[Delivery] = []
        for d in list(self._deliveries.values()):
            if d.owner == owner or d.lease_until < now:
                d = dataclasses.replace(d, owner=owner, lease_until=lease_until)
                self._deliveries[d.delivery_id] = d
                claimed.append(d)
        return claimed

    async def delete_delivery(self, delivery_id: str) -> None:
        self._deliveries.pop(delivery_id, None)

    # -- audit -------------------------------------------------------------
    async def append_audit(
        self, task_id: str, fields: dict[str, Any], agent_event: AgentEvent | None = None
    ) -> AuditRecord:
        if agent_event is not None:
            self._agent_event(str(fields["agent"]), agent_event, float(fields["ts"]), None)
        return self._append(task_id, fields)

    def _append(self, task_id: str, fields: dict[str, Any]) -> AuditRecord:
        if self._tails_only:
            seq, prev = self._tails.get(task_id, (0, GENESIS))
            record = chain_record(fields, seq + 1, prev)
            self._tails[task_id] = (record.seq, record.hash)
            return record
        row = self._tasks.get(task_id)
        trail = row.audit if row is not None else self._orphans.setdefault(task_id, [])
        prev = trail[-1].hash if trail else GENESIS
        record = chain_record(fields, len(trail) + 1, prev)
        trail.append(record)
        return record

    async def read_audit(self, task_id: str) -> list[AuditRecord]:
        if self._tails_only:
            return []
        row = self._tasks.get(task_id)
        if row is not None:
            return list(row.audit)
        return list(self._orphans.get(task_id, []))

    # -- OAuth grants and sessions -------------------------------------------
    def _grant(self, kind: str, key: str) -> dict[str, Any] | None:
        hit = self._grants.get((kind, key))
        if hit is None:
            return None
        if hit[0] <= time.time():
            del self._grants[(kind, key)]
            return None
        return hit[1]

    async def put_grant(self, kind: str, key: str, data: dict[str, Any], ttl_s: float) -> None:
        now = time.time()
        if len(self._grants) > 10_000:  # drop the expired ones now and then: memory stays bounded by use
            for k in [k for k, (exp, _) in self._grants.items() if exp <= now]:
                del self._grants[k]
        self._grants[(kind, key)] = (now + ttl_s, dict(data))

    async def get_grant(self, kind: str, key: str) -> dict[str, Any] | None:
        hit = self._grant(kind, key)
        return dict(hit) if hit is not None else None

    async def take_grant(self, kind: str, key: str) -> dict[str, Any] | None:
        hit = self._grant(kind, key)
        if hit is None:
            return None
        del self._grants[(kind, key)]
        return dict(hit)

    async def rotate_refresh(self, old: str, new: str, ttl_s: float) -> tuple[RefreshOutcome, dict[str, Any] | None]:
        hit = self._grant("refresh", old)
        if hit is None:
            return "unknown", None
        if self._grant("refresh_used", old) is not None:
            return "reused", dict(hit)
        exp = time.time() + ttl_s
        self._grants[("refresh_used", old)] = (exp, {})
        self._grants[("refresh", new)] = (exp, dict(hit))
        return "rotated", dict(hit)

    async def register_client(self, client_id: str, data: dict[str, Any], ttl_s: float, source: str,
                              limits: RegistrationLimits, now: float) -> tuple[RegistrationOutcome, float]:
        if len(self._registrations) > 10_000:
            self._registrations = {s: w for s, w in self._registrations.items() if w[0] > now}
        end, attempts = self._registrations.get(source, (0.0, 0))
        if end <= now:
            end, attempts = now + limits.window_s, 0
        self._registrations[source] = (end, attempts + 1)
        if attempts + 1 > limits.per_source:
            return "rate_limited", end - now
        if len(self._clients) >= limits.max_clients:
            self._clients = {c: exp for c, exp in self._clients.items() if exp > now}
            if len(self._clients) >= limits.max_clients:
                return "full", 0.0
        self._clients[client_id] = now + ttl_s
        await self.put_grant("client", client_id, data, ttl_s)
        return "registered", 0.0
