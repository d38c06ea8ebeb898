"""The Redis store: one shared state for many guard instances, failing closed.

Each check-and-update is one Lua script (scripts.py), run with EVALSHA, on the keys of
keys.py (those of one task share a hash slot).

Every Redis error becomes StoreUnavailable (503), and every store operation is bounded by one
deadline (`socket_timeout`, 1 s unless the URL says otherwise). Only idempotent reads and the
scripts that may run twice are retried (once, after a reconnect); any other script that may have
run is never retried.

The commands that change state (a call's admission, its records, its finish, and every other
write) go over one connection that the calls of this process share (mux.py: one write per
loop iteration for all of them); the records of one task are chained in batches (chain.py).
Reads go through redis-py's client and its connection pool. On Redis Cluster and Sentinel, and
with `wait_replicas`, see cluster.py.

One job, the Store protocol on Redis (one method per atomic operation), which is why it runs past
400 lines; the keys, the plumbing and the scripts live in keys.py, connection.py and scripts.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from guard.domain import (
    AGENT_COUNTERS,
    Activity,
    Admission,
    AgentEvent,
    AgentStats,
    Approval,
    AuditRecord,
    BaselineStats,
    CallLimits,
    Delivery,
    Retention,
    Task,
    TaskState,
)
from guard.log import get_logger
from guard.stores.base import (
    BASELINE_MAX_ACTIONS,
    DecideOutcome,
    RefreshOutcome,
    RegistrationLimits,
    RegistrationOutcome,
)
from guard.stores.redis import scripts as lua
from guard.stores.redis.chain import ChainAppender, Link
from guard.stores.redis.connection import RedisConnection
from guard.stores.redis.keys import (
    AGENTS,
    CREDENTIAL_TASKS,
    DELIVERIES,
    ENDED,
    EXPIRING,
    LEASES,
    TASKS,
    agent_key,
    approval_key,
    credential_key,
    dpop_key,
    grant_key,
    pins_key,
    signal_key,
    task_key,
    task_keys,
)

__all__ = ["RedisStore"]

log = get_logger("guard.store")

AUDIT_ATTEMPTS = 32


def _num(x: float | int | None) -> str:
    return "" if x is None else repr(x)


def _opt_float(s: str | None) -> float | None:
    return float(s) if s else None


class RedisStore(RedisConnection):
    """The Store protocol on Redis (see guard/stores/base.py)."""

    def __init__(self, url: str, retention: Retention | None = None, audit_in_folder: bool = False,
                 wait_replicas: int = 0) -> None:
        """`url`: one Redis, a Redis Cluster or Sentinel (cluster.py); `wait_replicas`: writes
        wait for that many replicas (WAIT) before they count as done. `audit_in_folder`: the
        durable audit folder keeps every trail, so a trail's copy here goes with its task's state
        (or sooner, with `retention.audit_s`)."""
        super().__init__(url, wait_replicas)
        # the appends to each task's audit chain, batched (chain.py)
        self._chain = ChainAppender(self._sender.send,
                                    {n: (s.sha, getattr(lua, n)) for n, s in self._scripts.items()}, AUDIT_ATTEMPTS)
        self.retention = retention or Retention()
        keep, audit_s = self.retention.ended_task_s, self.retention.audit_s
        audit_keep = [s for s in ((keep if audit_in_folder else None), audit_s) if s is not None]
        self._state_ttl_ms = "" if keep is None else str(max(1, int(keep * 1000)))
        self._audit_ttl_ms = str(max(1, int(min(audit_keep) * 1000))) if audit_keep else ""
        self._audit_goes_with_state = bool(audit_keep) and keep is not None and min(audit_keep) <= keep
        # inventory counters of admitted calls, sent in the round trip that finishes the call
        self._agent_calls: dict[tuple[str, str], tuple[str, str]] = {}

    # -- tasks -------------------------------------------------------------
    async def create_task(self, task: Task) -> None:
        row: dict[Any, str] = {
            "json": json.dumps(task.to_json()), "status": task.status, "agent": task.agent,
            "ended_at": _num(task.ended_at), "end_reason": task.end_reason or "", "calls": "0",
            "last_call_at": _num(task.created_at), "expires_at": _num(task.expires_at),
            "idle_s": _num(task.idle_s), "max_calls": _num(task.max_calls),
        }
        await self._write("create_task", [
            ("HSET", task_key(task.task_id, "task"), *(x for kv in row.items() for x in kv)),
            ("SADD", TASKS, task.task_id),
            ("SADD", agent_key(task.agent, "tasks"), task.task_id),
            ("ZADD", EXPIRING, task.expires_at, task.task_id),
        ])

    @staticmethod
    def _task(row: dict[str, str]) -> Task:
        d = json.loads(row["json"])
        d.update(status=row["status"], ended_at=_opt_float(row.get("ended_at")),
                 end_reason=row.get("end_reason") or None)
        return Task.from_json(d)

    def _state(self, row: dict[str, str], hist: set[str]) -> TaskState:
        return TaskState(self._task(row), int(row["calls"]), float(row["last_call_at"]), frozenset(hist))

    async def _states(self, task_ids: list[str]) -> list[TaskState]:
        async def fetch() -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            for tid in task_ids:
                pipe.hgetall(task_key(tid, "task"))
                pipe.smembers(task_key(tid, "hist"))
            return list(await pipe.execute())

        out = await self._read("get_task", fetch) if task_ids else []
        return [self._state(row, hist) for row, hist in zip(out[::2], out[1::2], strict=True) if row]

    async def get_task(self, task_id: str) -> TaskState | None:
        states = await self._states([task_id])
        return states[0] if states else None

    async def end_task(self, task_id: str, status: str, now: float, reason: str | None) -> Task | None:
        """One script ends the task and sets its state's retention TTL; then the task goes into
        retention's index (and its approvals' ids get the same TTL: other hash slots)."""
        keys = task_keys(task_id, "task", "inflight", "apr:pending", "apr", "hist", "apr:latest", "audit", "audit:tail")
        out = await self._script("END_TASK", keys, [status, _num(now), reason or "", self._state_ttl_ms,
                                                    self._audit_ttl_ms])
        if not out:
            return None
        task = self._task({"json": out[0], "status": out[1], "ended_at": out[2], "end_reason": out[3]})
        async with self._fail_closed("end_task"):
            pipe = self._r.pipeline(transaction=False)
            pipe.zrem(EXPIRING, task_id)
            if self._state_ttl_ms:
                pipe.zadd(ENDED, {f"{task_id} {task.agent}": now})
                for approval_id in out[4:]:
                    pipe.pexpire(approval_key(approval_id), int(self._state_ttl_ms))
                for key in task_keys(task_id, "data", "values"):  # content: they end with the task's state
                    pipe.pexpire(key, int(self._state_ttl_ms))
            await pipe.execute()
        return task

    # -- retention -----------------------------------------------------------
    async def expired_tasks(self, now: float, limit: int = 500) -> list[str]:
        return [str(t) for t in await self._script("POP_DUE", [EXPIRING], [_num(now), limit])]

    async def purge_ended(self, now: float, limit: int = 1000) -> int:
        """The state keys went by their TTL (deleted here too, so nothing is read back even when
        the clocks disagree); this removes the index entries."""
        keep = self.retention.ended_task_s
        if keep is None:
            return 0

        async def due() -> list[str]:
            return [str(m) for m in await self._r.zrangebyscore(ENDED, "-inf", _num(now - keep), 0, limit)]

        members = await self._read("purge_ended", due)
        if not members:
            return 0
        parts = ["task", "hist", "inflight", "apr", "apr:pending", "apr:latest", "data", "values"]
        if self._audit_goes_with_state:
            parts += ["audit", "audit:tail"]
        async with self._fail_closed("purge_ended"):
            pipe = self._r.pipeline(transaction=False)
            for member in members:
                task_id, _, agent = member.partition(" ")
                pipe.delete(*task_keys(task_id, *parts))  # one hash slot
                pipe.srem(TASKS, task_id)
                pipe.srem(agent_key(agent, "tasks"), task_id)
                pipe.zrem(ENDED, member)
            await pipe.execute()
        return len(members)

    async def list_tasks(self, status: str | None = None, agent: str | None = None) -> list[TaskState]:
        ids = await self._members(TASKS if agent is None else agent_key(agent, "tasks"))
        return [
            s for s in await self._states(ids)
            if (status is None or s.task.status == status) and (agent is None or s.task.agent == agent)
        ]

    # -- calls -------------------------------------------------------------
    async def admit_call(self, task_id: str, limits: CallLimits) -> Admission:
        keys = task_keys(task_id, "task", "hist", "inflight")
        args: list[Any] = [_num(limits.now), limits.call_id, limits.history_entry, limits.parent_call_id or "",
                           "1" if limits.count else "0"]
        for rule_id, calls, per_s in limits.rates:
            keys.append(task_key(task_id, f"rate:{rule_id}"))
            args += [rule_id, calls, _num(float(per_s))]
        ok, reason, rule_id, retry_after, calls = await self._script("ADMIT_CALL", keys, args)
        if ok and limits.count and limits.agent is not None:
            await self.record_agent_event(limits.agent, "call_allowed", limits.now, limits.tool)
        return Admission(bool(ok), reason or None, rule_id or None, _opt_float(retry_after), int(calls or 0))

    async def finish_call(self, task_id: str, call_id: str) -> None:
        commands: list[tuple[Any, ...]] = [("SREM", task_key(task_id, "inflight"), call_id)]
        self._queue_agent_call(commands, task_id, call_id)
        async with self._fail_closed("finish_call"):
            await self._send(commands)

    async def call_in_flight(self, task_id: str, call_id: str) -> bool:
        async def fetch() -> bool:
            return bool(await self._r.sismember(task_key(task_id, "inflight"), call_id))

        return await self._read("call_in_flight", fetch)

    async def admit_and_record(
        self, task_id: str, limits: CallLimits, fields: dict[str, Any]
    ) -> tuple[Admission, AuditRecord | None]:
        """One script admits the call and appends its decision record, chained in this task's
        next batch (chain.py); when another instance appended meanwhile, it changes nothing and
        answers the current tail, and the record is chained again on it. The agent's counter rides
        along with the call's finish (same round trip as its last record)."""
        keys = task_keys(task_id, "task", "hist", "inflight", "audit", "audit:tail")
        admit: list[Any] = [_num(limits.now), limits.call_id, limits.history_entry, limits.parent_call_id or "",
                            "1" if limits.count else "0"]
        rates: list[Any] = []
        for rule_id, calls, per_s in limits.rates:
            keys.append(task_key(task_id, f"rate:{rule_id}"))
            rates += [rule_id, calls, _num(float(per_s))]
        link = Link("ADMIT_AND_RECORD", keys, admit, rates, fields, [], conflict=2)
        async with self._fail_closed("admit_and_record"):
            (ok, reason, rule_id, retry_after, calls), record = await self._chain.append(task_id, link)
        if not ok or record is None:
            return Admission(False, reason or None, rule_id or None, _opt_float(retry_after), int(calls)), None
        if limits.count and limits.agent is not None:
            self._defer_agent_call(task_id, limits.call_id, limits.agent, limits.tool)
        return Admission(True, calls=int(calls or 0)), record

    async def record_and_finish(self, task_id: str, call_id: str, fields: dict[str, Any]) -> AuditRecord:
        """One script appends the record and ends the call; the agent's counter of the call goes
        in the same round trip (separate commands: another hash slot, not atomic with it)."""
        keys = task_keys(task_id, "audit", "audit:tail", "inflight")
        also: list[tuple[Any, ...]] = []
        self._queue_agent_call(also, task_id, call_id)
        return await self._append_chained("record_and_finish", "RECORD_AND_FINISH", task_id, fields, keys,
                                          [call_id], also)

    async def _append_chained(
        self, op: str, script: str, task_id: str, fields: dict[str, Any], keys: list[str], args: list[Any],
        also: list[tuple[Any, ...]],
    ) -> AuditRecord:
        """Chain the record in this task's next batch (chain.py) and run `script` (KEYS: audit
        list, tail, ...; ARGV: seq, prev_hash, hash, line, *args), with the commands `also` in the
        round trip of the first attempt (they run whatever the script answers, so they are sent
        once). When another instance appended meanwhile, the script changes nothing and answers
        the current tail, and the record is chained again on it."""
        async with self._fail_closed(op):
            _, record = await self._chain.append(task_id, Link(script, keys, [], args, fields, also, conflict=0))
        assert record is not None  # these scripts append or conflict, never refuse
        return record

    def _queue_agent_call(self, commands: list[tuple[Any, ...]], task_id: str, call_id: str) -> None:
        """Add the commands of this call's pending inventory counter, if any."""
        pending = self._agent_calls.pop((task_id, call_id), None)
        if pending is not None:
            agent, tool = pending
            self._agent_cmds(commands, agent, "call_allowed", time.time(), tool)

    def _defer_agent_call(self, task_id: str, call_id: str, agent: str, tool: str) -> None:
        if len(self._agent_calls) >= 100_000:  # calls never finished (a bug elsewhere): stay bounded
            log.warning("agent_counters_dropped", count=len(self._agent_calls))
            self._agent_calls.clear()
        self._agent_calls[(task_id, call_id)] = (agent, tool)

    # -- credentials -------------------------------------------------------
    async def consume_credential(self, jti: str, exp: float) -> bool:
        ttl_ms = max(1000, int((exp - time.time() + 60) * 1000))
        out = await self._write("consume_credential", [("SET", credential_key(jti), "1", "NX", "PX", ttl_ms)])
        return out[0] is not None

    async def hold_credential(self, task_id: str, slot: str, value: str, previous: str | None = None) -> str:
        key = task_key(task_id, "creds")
        async with self._fail_closed("hold_credential"):  # the sweep's index rides in the same round trip
            held = await self._eval("HOLD_CREDENTIAL", [key], [slot, value, previous or ""],
                                    also=[("SADD", CREDENTIAL_TASKS, task_id)])
        return str(held)

    async def held_credential(self, task_id: str, slot: str) -> str | None:
        async def fetch() -> str | None:
            value = await self._r.hget(task_key(task_id, "creds"), slot)
            return None if value is None else str(value)

        return await self._read("held_credential", fetch)

    async def claim_credentials(self, task_id: str) -> dict[str, str]:
        async with self._fail_closed("claim_credentials"):
            flat = await self._eval("CLAIM_CREDENTIALS", [task_key(task_id, "creds")], [],
                                    also=[("SREM", CREDENTIAL_TASKS, task_id)])
        return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def credential_tasks(self) -> list[str]:
        return await self._members(CREDENTIAL_TASKS)

    async def consume_dpop_jti(self, key: str, exp: float) -> bool:
        ttl_ms = max(1000, int((exp - time.time()) * 1000))
        out = await self._write("consume_dpop_jti", [("SET", dpop_key(key), "1", "NX", "PX", ttl_ms)])
        return out[0] is not None

    # -- baselines (guard.signals.baseline) -------------------------------------------------------
    async def observe_activity(self, agent: str, key: str, now: float) -> Activity:
        out = await self._script("OBSERVE_ACTIVITY", [agent_key(agent, "baseline"), agent_key(agent, "actions")],
                                 [_num(now), int(now // 3600), key, BASELINE_MAX_ACTIONS])
        return Activity(float(out[0]), bool(int(out[1])), int(out[2]), int(out[3]))

    async def baseline_stats(self, agents: list[str]) -> dict[str, BaselineStats]:
        async def fetch() -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            for agent in agents:
                pipe.hgetall(agent_key(agent, "baseline"))
                pipe.smembers(agent_key(agent, "actions"))
            return list(await pipe.execute())

        out = await self._read("baseline_stats", fetch) if agents else []
        return {a: BaselineStats(float(row["first_at"]), frozenset(str(x) for x in acts), int(row.get("busiest", 0)),
                                 int(row.get("count", 0)))
                for a, row, acts in zip(agents, out[::2], out[1::2], strict=True) if row}

    async def consume_signal_jti(self, key: str, exp: float) -> bool:
        ttl_ms = max(1000, int((exp - time.time()) * 1000))
        out = await self._write("consume_signal_jti", [("SET", signal_key(key), "1", "NX", "PX", ttl_ms)])
        return out[0] is not None

    # -- approvals ---------------------------------------------------------
    @staticmethod
    def _approval(j: str, status: str, decisions: str) -> Approval:
        d = json.loads(j)
        d.update(status=status, decisions=json.loads(decisions))
        return Approval.from_json(d)

    async def open_approval(self, approval: Approval) -> tuple[Approval, bool]:
        tid, aid = approval.task_id, approval.approval_id
        await self._write("open_approval", [("SET", approval_key(aid), tid)])  # findable before anyone knows the id
        args = [aid, approval.call_digest, _num(approval.created_at), _num(approval.expires_at),
                approval.required, json.dumps(approval.to_json())]
        created, j, status, decisions = await self._script(
            "OPEN_APPROVAL", task_keys(tid, "apr:pending", "apr:latest", "apr"), args)
        if not created:
            await self._write("open_approval", [("DEL", approval_key(aid))])
        return self._approval(j, status, decisions), bool(created)

    async def get_approval(self, approval_id: str) -> Approval | None:
        tid = await self._approval_task(approval_id)
        if tid is None:
            return None
        f = [f"{p}:{approval_id}" for p in ("j", "s", "d")]

        async def fetch() -> list[str | None]:
            return [None if v is None else str(v) for v in await self._r.hmget(task_key(tid, "apr"), f)]

        j, status, decisions = await self._read("get_approval", fetch)
        return self._approval(j, status or "", decisions or "[]") if j else None

    async def _approval_task(self, approval_id: str) -> str | None:
        async def fetch() -> str | None:
            tid = await self._r.get(approval_key(approval_id))
            return str(tid) if tid is not None else None

        return await self._read("get_approval", fetch)

    async def decide_approval(
        self, approval_id: str, decision: dict[str, Any], now: float
    ) -> tuple[DecideOutcome, Approval | None]:
        tid = await self._approval_task(approval_id)
        if tid is None:
            return "not_found", None
        args = [approval_id, str(decision["approver"]), str(decision["decision"]), json.dumps(decision), _num(now)]
        out = await self._script("DECIDE_APPROVAL", task_keys(tid, "apr:pending", "apr"), args)
        if out[0] == "not_found":
            return "not_found", None
        return out[0], self._approval(out[1], out[2], out[3])

    async def consume_approval(self, task_id: str, call_digest: str, now: float) -> Approval | None:
        out = await self._script("CONSUME_APPROVAL", task_keys(task_id, "apr:latest", "apr"),
                                 [call_digest, _num(now)])
        return self._approval(out[1], out[2], out[3]) if out else None

    async def latest_approval(self, task_id: str, call_digest: str) -> Approval | None:
        keys = task_keys(task_id, "apr:latest", "apr:pending", "apr")
        out = await self._script("LATEST_APPROVAL", keys, [call_digest, _num(time.time())])
        return self._approval(out[1], out[2], out[3]) if out else None

    async def list_approvals(self, task_id: str | None = None, status: str | None = None) -> list[Approval]:
        tids = [task_id] if task_id is not None else await self._members(TASKS)

        async def fetch() -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            for tid in tids:
                pipe.hgetall(task_key(tid, "apr"))
            return list(await pipe.execute())

        out: list[Approval] = []
        for row in await self._read("list_approvals", fetch):
            for field, j in row.items():
                if field.startswith("j:"):
                    aid = field[2:]
                    a = self._approval(j, row[f"s:{aid}"], row[f"d:{aid}"])
                    if status is None or a.status == status:
                        out.append(a)
        return sorted(out, key=lambda a: a.created_at)

    # -- agents (the inventory) ---------------------------------------------
    async def record_agent_event(self, agent: str, kind: AgentEvent, now: float, tool: str | None = None) -> None:
        commands: list[tuple[Any, ...]] = []
        self._agent_cmds(commands, agent, kind, now, tool)
        async with self._fail_closed("record_agent_event"):
            await self._send(commands)

    def _agent_cmds(self, commands: list[tuple[Any, ...]], agent: str, kind: AgentEvent, now: float,
                    tool: str | None) -> None:
        key = agent_key(agent)
        used = tool if kind == "call_allowed" and tool is not None else ""
        commands.append(("EVAL", lua.AGENT_EVENT, 2, key, f"{key}:tools", AGENT_COUNTERS[kind], _num(now), used))
        # on every event, not once per process: Redis may lose the set (a restart without its
        # append-only file) while this process sees no error; another hash slot than the agent's
        commands.append(("SADD", AGENTS, agent))

    async def agent_stats(self) -> dict[str, AgentStats]:
        agents = await self._members(AGENTS)

        async def fetch() -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            for agent in agents:
                pipe.hgetall(agent_key(agent))
                pipe.smembers(agent_key(agent, "tools"))
            return list(await pipe.execute())

        out = await self._read("agent_stats", fetch) if agents else []
        return {a: _agent_stats(a, row, tools) for a, row, tools in zip(agents, out[::2], out[1::2], strict=True)}

    async def suspend_agent(self, agent: str, reason: str, actor: str, now: float) -> bool:
        changed = await self._script("SET_SUSPENDED", [agent_key(agent)], ["1", reason, actor, _num(now)])
        await self._write("suspend_agent", [("SADD", AGENTS, agent)])
        return bool(changed)

    async def restore_agent(self, agent: str) -> bool:
        return bool(await self._script("SET_SUSPENDED", [agent_key(agent)], ["0", "", "", ""]))

    async def is_suspended(self, agent: str) -> bool:
        async def fetch() -> bool:
            return bool(await self._r.hget(agent_key(agent), "suspended") == "1")

        return await self._read("is_suspended", fetch)

    # -- content and tool integrity ---------------------------------------------
    async def add_task_data(self, task_id: str, labels: Iterable[str]) -> None:
        labels = list(labels)
        if labels:
            await self._write("add_task_data", [("SADD", task_key(task_id, "data"), *labels)])

    async def task_data(self, task_id: str) -> frozenset[str]:
        return frozenset(await self._members(task_key(task_id, "data")))

    async def remember_values(self, task_id: str, digests: Mapping[str, str]) -> None:
        key = task_key(task_id, "values")
        if digests:  # HSETNX keeps the first call a value came from
            await self._write("remember_values", [("HSETNX", key, d, c) for d, c in digests.items()])

    async def recall_values(self, task_id: str, digests: Iterable[str]) -> dict[str, str]:
        wanted = list(dict.fromkeys(digests))
        if not wanted:
            return {}

        async def fetch() -> list[Any]:
            return list(await self._r.hmget(task_key(task_id, "values"), wanted))

        found = await self._read("recall_values", fetch)
        return {d: str(c) for d, c in zip(wanted, found, strict=True) if c is not None}

    async def tool_pins(self, tool: str) -> dict[str, str]:
        async def fetch() -> dict[str, str]:
            return {str(k): str(v) for k, v in (await self._r.hgetall(pins_key(tool))).items()}

        return await self._read("tool_pins", fetch)

    async def pin_first(self, tool: str, pins: Mapping[str, str]) -> dict[str, str]:
        key = pins_key(tool)
        names = list(pins)
        if not names:
            return {}
        await self._write("pin_first", [("HSETNX", key, n, pins[n]) for n in names])

        async def fetch() -> list[Any]:
            return list(await self._r.hmget(key, names))

        return {n: str(v) for n, v in zip(names, await self._read("pin_first", fetch), strict=True)}

    async def set_pins(self, tool: str, pins: Mapping[str, str]) -> None:
        if pins:
            await self._write("set_pins", [("HSET", pins_key(tool), *[x for kv in pins.items() for x in kv])])

    # -- webhook deliveries --------------------------------------------------
    async def save_delivery(self, delivery: Delivery) -> None:
        await self._write("save_delivery", [("EVAL", lua.SAVE_DELIVERY, 2, DELIVERIES, LEASES, delivery.delivery_id,
                                             json.dumps(delivery.to_json()),
                                             f"{delivery.lease_until!r} {delivery.owner}")])

    async def claim_deliveries(self, owner: str, now: float, lease_until: float) -> list[Delivery]:
        out = await self._script("CLAIM_DELIVERIES", [DELIVERIES, LEASES], [owner, _num(now), _num(lease_until)])
        claimed = []
        for j in out[1::2]:
            d = json.loads(j)
            d.update(owner=owner, lease_until=lease_until)
            claimed.append(Delivery.from_json(d))
        return claimed

    async def delete_delivery(self, delivery_id: str) -> None:
        await self._write("delete_delivery", [("EVAL", lua.DELETE_DELIVERY, 2, DELIVERIES, LEASES, delivery_id)])

    # -- audit -------------------------------------------------------------
    async def append_audit(
        self, task_id: str, fields: dict[str, Any], agent_event: AgentEvent | None = None
    ) -> AuditRecord:
        """See _append_chained; the agent event rides in the same pipeline."""
        keys = task_keys(task_id, "audit", "audit:tail")
        also: list[tuple[Any, ...]] = []
        if agent_event is not None:
            self._agent_cmds(also, str(fields["agent"]), agent_event, float(fields["ts"]), None)
        return await self._append_chained("append_audit", "APPEND_AUDIT", task_id, fields, keys, [], also)

    async def read_audit(self, task_id: str) -> list[AuditRecord]:
        async def fetch() -> list[str]:
            return [str(v) for v in await self._r.lrange(task_key(task_id, "audit"), 0, -1)]

        lines = await self._read("read_audit", fetch)
        return [AuditRecord(json.loads(line)) for line in lines]


    # -- OAuth grants and sessions -------------------------------------------
    async def put_grant(self, kind: str, key: str, data: dict[str, Any], ttl_s: float) -> None:
        await self._write("put_grant", [("SET", grant_key(kind, key), json.dumps(data), "PX", _ttl_ms(ttl_s))])

    async def get_grant(self, kind: str, key: str) -> dict[str, Any] | None:
        async def fetch() -> str | None:
            value = await self._r.get(grant_key(kind, key))
            return None if value is None else str(value)

        raw = await self._read("get_grant", fetch)
        return json.loads(raw) if raw is not None else None

    async def take_grant(self, kind: str, key: str) -> dict[str, Any] | None:
        raw = (await self._write("take_grant", [("GETDEL", grant_key(kind, key))]))[0]
        return json.loads(raw) if raw is not None else None

    async def rotate_refresh(self, old: str, new: str, ttl_s: float) -> tuple[RefreshOutcome, dict[str, Any] | None]:
        keys = [grant_key("refresh", old), grant_key("refresh_used", old), grant_key("refresh", new)]
        outcome, raw = await self._script("ROTATE_REFRESH", keys, [_ttl_ms(ttl_s)])
        if outcome == "unknown":
            return "unknown", None
        return ("reused" if outcome == "reused" else "rotated"), json.loads(raw)

    async def register_client(self, client_id: str, data: dict[str, Any], ttl_s: float, source: str,
                              limits: RegistrationLimits, now: float) -> tuple[RegistrationOutcome, float]:
        keys = [grant_key("clients", "all"), grant_key("client", client_id), grant_key("registrations", source)]
        outcome, left_ms = await self._script("REGISTER_CLIENT", keys, [
            client_id, json.dumps(data), _ttl_ms(ttl_s), _num(now), limits.max_clients, limits.per_source,
            int(limits.window_s * 1000)])
        if outcome == "rate_limited":
            return "rate_limited", float(left_ms) / 1000
        return ("full" if outcome == "full" else "registered"), 0.0


def _agent_stats(agent: str, row: dict[str, str], tools: set[str]) -> AgentStats:
    return AgentStats(
        agent=agent,
        first_seen=_opt_float(row.get("first_seen")),
        last_seen=_opt_float(row.get("last_seen")),
        tasks_created=int(row.get("tasks_created", 0)),
        calls=int(row.get("calls", 0)),
        denied=int(row.get("denied", 0)),
        attempts=int(row.get("attempts", 0)),
        tools_used=frozenset(tools),
        suspended=row.get("suspended") == "1",
        suspended_reason=row.get("suspended_reason"),
        suspended_by=row.get("suspended_by"),
        suspended_at=_opt_float(row.get("suspended_at")),
    )


def _ttl_ms(ttl_s: float) -> int:
    return max(1, int(ttl_s * 1000))
