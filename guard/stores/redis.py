"""The Redis store: one shared state for many guard instances, failing closed.

Each check-and-update is one Lua script (guard/stores/redis_lua.py), run with EVALSHA. The keys
of one task share the hash tag `{<task_id>}`, so every script touches one slot:

    guard:{T}:task        hash: json (the task as created), status, ended_at, end_reason,
                          calls, last_call_at, expires_at, idle_s, max_calls, agent
    guard:{T}:hist        set of "tool.action" of allowed calls (policy `history`)
    guard:{T}:inflight    set of call ids in flight (their Txn-Tokens work)
    guard:{T}:rate:<rule> sorted set: call id scored by time, a sliding window per rule
    guard:{T}:apr         hash: every approval of the task (see redis_lua)
    guard:{T}:apr:pending hash: call digest -> id of the pending approval
    guard:{T}:apr:latest  hash: call digest -> id of the latest approval
    guard:{T}:audit       list of the task's audit records (JSON), in seq order
    guard:{T}:audit:tail  hash: seq, hash of the last record
    guard:tasks           set of every task id (list_tasks)
    guard:apr:<id>        string: the task id of an approval (get by id)
    guard:cred:<jti>      consumed credential ids, expiring a minute after the credential
    guard:agent:{<sub>}   hash: inventory counters and suspension; `…:tools` set of tools used,
                          `…:tasks` set of the agent's task ids
    guard:agents          set of every agent seen
    guard:{deliveries}    hash: delivery id -> JSON; `guard:{deliveries}:leases` id -> lease

Every Redis error becomes StoreUnavailable (503), and every store operation is bounded by one
deadline (`socket_timeout`, 1 s unless the URL says otherwise). Only idempotent reads are
retried (once, after a reconnect); a script that may have run is never retried.

The commands that change state (a call's admission, its records, its finish, and every other
write) go over one connection that the calls of this process share (redis_mux: one write per
loop iteration for all of them); the records of one task are chained in batches (redis_chain).
Reads go through redis-py's client and its connection pool. On Redis Cluster and Sentinel, and
with `wait_replicas`, see redis_cluster.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import hiredis
import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from guard.domain import (
    Admission,
    AgentEvent,
    AgentStats,
    Approval,
    AuditRecord,
    CallLimits,
    Delivery,
    Task,
    TaskState,
)
from guard.errors import StoreUnavailable
from guard.stores import redis_lua as lua
from guard.stores.base import DecideOutcome
from guard.stores.redis_chain import ChainAppender, Link
from guard.stores.redis_cluster import (
    ClusterSender,
    Sender,
    WaitingSender,
    close_sentinels,
    cluster_client,
    parse_topology,
    sentinel_client,
)
from guard.stores.redis_mux import Multiplexer

__all__ = ["RedisStore"]

log = structlog.get_logger("guard.store")
T = TypeVar("T")

TASKS = "guard:tasks"
AGENTS = "guard:agents"
DELIVERIES = "guard:{deliveries}"
LEASES = "guard:{deliveries}:leases"
AUDIT_ATTEMPTS = 32
_COUNTER: dict[str, str] = {
    "task_created": "tasks_created",
    "call_allowed": "calls",
    "call_denied": "denied",
    "unregistered_attempt": "attempts",
}
_TRANSIENT = (RedisConnectionError, RedisTimeoutError, OSError)


def _k(task_id: str, part: str) -> str:
    return f"guard:{{{task_id}}}:{part}"


def _agent_key(agent: str) -> str:
    return f"guard:agent:{{{agent}}}"


def _num(x: float | int | None) -> str:
    return "" if x is None else repr(x)


def _opt_float(s: str | None) -> float | None:
    return float(s) if s else None


class _FailClosed:
    """`async with store._fail_closed(op)`: the operation has `op_timeout` seconds, and a Redis
    or socket error, or running out of time, becomes StoreUnavailable. (A class, not
    @asynccontextmanager: it is entered on every call.)"""

    __slots__ = ("deadline", "op", "store")

    def __init__(self, store: RedisStore, op: str) -> None:
        self.store, self.op = store, op
        self.deadline = asyncio.timeout(store.op_timeout)

    async def __aenter__(self) -> None:
        await self.deadline.__aenter__()

    async def __aexit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: Any) -> None:
        try:
            await self.deadline.__aexit__(kind, e, tb)
        except TimeoutError as expired:  # the deadline cancelled the operation
            e = expired
        if e is not None and isinstance(e, TimeoutError | RedisError | OSError):
            await self.store._failed(self.op, e)  # raises StoreUnavailable


class _HiredisPacking(aioredis.Connection):
    """redis-py's asyncio connection packs commands in Python (about 14 us for a script call of
    ours); hiredis, which already parses the replies, packs the same bytes in about 2 us."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:  # "SCRIPT LOAD": the words go separately
            args = (*args[0].split(), *args[1:])
        return [hiredis.pack_command(args)]


class RedisStore:
    def __init__(self, url: str, wait_replicas: int = 0) -> None:
        """`url`: one Redis, a Redis Cluster or Sentinel (redis_cluster); `wait_replicas`: writes
        wait for that many replicas (WAIT) before they count as done."""
        self.url = url
        topology = parse_topology(url)
        options: dict[str, Any] = {"decode_responses": True, "socket_connect_timeout": 0.5,
                                   "socket_timeout": topology.op_timeout, "health_check_interval": 5}
        self._r: Any
        if topology.kind == "cluster":
            self._r = cluster_client(topology, **options)
            self.op_timeout: float = topology.op_timeout
            sender: Sender = ClusterSender(self._r, self.op_timeout, wait_replicas, int(self.op_timeout * 500))
        else:
            if topology.kind == "sentinel":
                self._r = sentinel_client(topology, _HiredisPacking, retry=Retry(NoBackoff(), 0), **options)
            else:
                packing: dict[str, Any] = {"connection_class": _HiredisPacking} if url.startswith("redis://") else {}
                self._r = aioredis.from_url(
                    url,
                    **packing,
                    **options,
                    retry=Retry(NoBackoff(), 0),  # never re-send a command that may have run
                )
            # One deadline per store operation (_FailClosed) instead of redis-py's per socket read
            # and write: its write timeout costs a task per command on Python 3.11.
            kwargs = self._r.connection_pool.connection_kwargs
            self.op_timeout = float(kwargs.get("socket_timeout") or 1.0)
            kwargs["socket_timeout"] = None
            mux = Multiplexer(self._r.connection_pool.make_connection)
            # WAIT's own timeout is half the operation's deadline, so a lagging replica answers
            # 503 rather than the deadline dropping the shared connection
            sender = WaitingSender(mux, wait_replicas, int(self.op_timeout * 500)) if wait_replicas else mux
        self._sender = sender
        self._scripts = {
            name: self._r.register_script(getattr(lua, name))
            for name in ("ADMIT_CALL", "END_TASK", "OPEN_APPROVAL", "DECIDE_APPROVAL", "CONSUME_APPROVAL",
                         "LATEST_APPROVAL", "APPEND_AUDIT", "SET_SUSPENDED", "CLAIM_DELIVERIES",
                         "ADMIT_AND_RECORD", "RECORD_AND_FINISH")
        }
        # the appends to each task's audit chain, batched (redis_chain)
        self._chain = ChainAppender(self._sender.send,
                                    {n: (s.sha, getattr(lua, n)) for n, s in self._scripts.items()}, AUDIT_ATTEMPTS)
        # inventory counters of admitted calls, sent in the round trip that finishes the call
        self._agent_calls: dict[tuple[str, str], tuple[str, str]] = {}

    # -- plumbing ------------------------------------------------------------
    async def connect(self) -> None:
        """Check that Redis answers (a few bounded tries); start anyway when it does not:
        every request then answers 503 store_unavailable until it comes back."""
        try:
            async for attempt in AsyncRetrying(stop=stop_after_attempt(3), wait=wait_exponential(0.1, max=1),
                                               retry=retry_if_exception_type(_TRANSIENT), reraise=True):
                with attempt:
                    async with asyncio.timeout(self.op_timeout):
                        await self._r.ping()
        except (RedisError, OSError) as e:
            log.warning("store_unreachable", error=type(e).__name__)

    def _fail_closed(self, op: str) -> _FailClosed:
        return _FailClosed(self, op)

    async def _failed(self, op: str, e: BaseException) -> None:
        """A store operation failed: say so."""
        detail = str(e)[:200] if isinstance(e, ResponseError) else None  # a script error names its line
        log.warning("store_failed", op=op, error=type(e).__name__, detail=detail)
        if isinstance(e, ReadOnlyError):  # a failover: reconnect to whoever is primary now
            await self._sender.reset()
            if hasattr(self._r, "connection_pool"):
                await self._r.connection_pool.disconnect()
        elif isinstance(e, TimeoutError):  # Redis stopped answering: do not wait on that connection
            await self._sender.reset()
        raise StoreUnavailable("the state store is unreachable") from e

    async def _send(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """The replies of the commands, sent together on the shared connection (an error reply in
        its place as its exception). Call it inside _fail_closed: the deadline bounds the wait."""
        return await self._sender.send(commands)

    async def _eval(self, script: str, keys: list[str], args: list[Any],
                    also: list[tuple[Any, ...]] | None = None) -> Any:
        """EVALSHA a script of redis_lua, and the commands `also` in the same round trip (they run
        whatever the script answers). A Redis that lost its scripts (NOSCRIPT: nothing ran) gets
        the script's source with EVAL (which caches it again). An error reply of the script raises."""
        command = ("EVALSHA", self._scripts[script].sha, len(keys), *keys, *args)
        out = await self._send([command, *(also or ())])
        if isinstance(out[0], NoScriptError):  # EVAL runs the source and caches it again
            out = await self._send([("EVAL", getattr(lua, script), *command[2:])])
        if isinstance(out[0], Exception):
            raise out[0]
        return out[0]

    async def _read(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        """An idempotent read: one more try on a fresh connection after a transient error."""
        async with self._fail_closed(op):
            async for attempt in AsyncRetrying(stop=stop_after_attempt(2), wait=wait_exponential(0.05, max=0.2),
                                               retry=retry_if_exception_type(_TRANSIENT), reraise=True):
                with attempt:
                    return await fn()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        async with self._fail_closed(name.lower()):
            return await self._eval(name, keys, args)

    async def _write(self, op: str, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Commands that change state, in one round trip; an error reply raises."""
        async with self._fail_closed(op):
            out = await self._send(commands)
        for reply in out:
            if isinstance(reply, Exception):
                await self._failed(op, reply)
        return out

    async def _members(self, key: str) -> list[str]:
        async def fetch() -> set[str]:
            return {str(m) for m in await self._r.smembers(key)}

        return sorted(await self._read("smembers", fetch))

    async def ping(self) -> None:
        await self._read("ping", self._r.ping)

    async def close(self) -> None:
        await self._sender.close()
        if not isinstance(self._sender, ClusterSender):  # which closed its client already
            await close_sentinels(self._r)
            await self._r.aclose()

    # -- tasks -------------------------------------------------------------
    async def create_task(self, task: Task) -> None:
        row: dict[Any, str] = {
            "json": json.dumps(task.to_json()), "status": task.status, "agent": task.agent,
            "ended_at": _num(task.ended_at), "end_reason": task.end_reason or "", "calls": "0",
            "last_call_at": _num(task.created_at), "expires_at": _num(task.expires_at),
            "idle_s": _num(task.idle_s), "max_calls": _num(task.max_calls),
        }
        await self._write("create_task", [
            ("HSET", _k(task.task_id, "task"), *(x for kv in row.items() for x in kv)),
            ("SADD", TASKS, task.task_id),
            ("SADD", f"{_agent_key(task.agent)}:tasks", task.task_id),
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
                pipe.hgetall(_k(tid, "task"))
                pipe.smembers(_k(tid, "hist"))
            return list(await pipe.execute())

        out = await self._read("get_task", fetch) if task_ids else []
        return [self._state(row, hist) for row, hist in zip(out[::2], out[1::2], strict=True) if row]

    async def get_task(self, task_id: str) -> TaskState | None:
        states = await self._states([task_id])
        return states[0] if states else None

    async def end_task(self, task_id: str, status: str, now: float, reason: str | None) -> Task | None:
        keys = [_k(task_id, "task"), _k(task_id, "inflight"), _k(task_id, "apr:pending"), _k(task_id, "apr")]
        out = await self._script("END_TASK", keys, [status, _num(now), reason or ""])
        if not out:
            return None
        return self._task({"json": out[0], "status": out[1], "ended_at": out[2], "end_reason": out[3]})

    async def list_tasks(self, status: str | None = None, agent: str | None = None) -> list[TaskState]:
        ids = await self._members(TASKS if agent is None else f"{_agent_key(agent)}:tasks")
        return [
            s for s in await self._states(ids)
            if (status is None or s.task.status == status) and (agent is None or s.task.agent == agent)
        ]

    # -- calls -------------------------------------------------------------
    async def admit_call(self, task_id: str, limits: CallLimits) -> Admission:
        keys = [_k(task_id, "task"), _k(task_id, "hist"), _k(task_id, "inflight")]
        args: list[Any] = [_num(limits.now), limits.call_id, limits.history_entry, limits.parent_call_id or "",
                           "1" if limits.count else "0"]
        for rule_id, calls, per_s in limits.rates:
            keys.append(_k(task_id, f"rate:{rule_id}"))
            args += [rule_id, calls, _num(float(per_s))]
        ok, reason, rule_id, retry_after, calls = await self._script("ADMIT_CALL", keys, args)
        if ok and limits.count and limits.agent is not None:
            await self.record_agent_event(limits.agent, "call_allowed", limits.now,
                                          limits.history_entry.split(".", 1)[0])
        return Admission(bool(ok), reason or None, rule_id or None, _opt_float(retry_after), int(calls or 0))

    async def finish_call(self, task_id: str, call_id: str) -> None:
        commands: list[tuple[Any, ...]] = [("SREM", _k(task_id, "inflight"), call_id)]
        self._queue_agent_call(commands, task_id, call_id)
        async with self._fail_closed("finish_call"):
            await self._send(commands)

    async def call_in_flight(self, task_id: str, call_id: str) -> bool:
        async def fetch() -> bool:
            return bool(await self._r.sismember(_k(task_id, "inflight"), call_id))

        return await self._read("call_in_flight", fetch)

    async def admit_and_record(
        self, task_id: str, limits: CallLimits, fields: dict[str, Any]
    ) -> tuple[Admission, AuditRecord | None]:
        """One script admits the call and appends its decision record, chained in this task's
        next batch (redis_chain); when another instance appended meanwhile, it changes nothing and
        answers the current tail, and the record is chained again on it. The agent's counter rides
        along with the call's finish (same round trip as its last record)."""
        keys = [_k(task_id, "task"), _k(task_id, "hist"), _k(task_id, "inflight"),
                _k(task_id, "audit"), _k(task_id, "audit:tail")]
        admit: list[Any] = [_num(limits.now), limits.call_id, limits.history_entry, limits.parent_call_id or "",
                            "1" if limits.count else "0"]
        rates: list[Any] = []
        for rule_id, calls, per_s in limits.rates:
            keys.append(_k(task_id, f"rate:{rule_id}"))
            rates += [rule_id, calls, _num(float(per_s))]
        link = Link("ADMIT_AND_RECORD", keys, admit, rates, fields, [], conflict=2)
        async with self._fail_closed("admit_and_record"):
            (ok, reason, rule_id, retry_after, calls), record = await self._chain.append(task_id, link)
        if not ok or record is None:
            return Admission(False, reason or None, rule_id or None, _opt_float(retry_after), int(calls)), None
        if limits.count and limits.agent is not None:
            self._defer_agent_call(task_id, limits.call_id, limits.agent, limits.history_entry)
        return Admission(True, calls=int(calls or 0)), record

    async def record_and_finish(self, task_id: str, call_id: str, fields: dict[str, Any]) -> AuditRecord:
        """One script appends the record and ends the call; the agent's counter of the call goes
        in the same round trip (separate commands: another hash slot, not atomic with it)."""
        keys = [_k(task_id, "audit"), _k(task_id, "audit:tail"), _k(task_id, "inflight")]
        also: list[tuple[Any, ...]] = []
        self._queue_agent_call(also, task_id, call_id)
        return await self._append_chained("record_and_finish", "RECORD_AND_FINISH", task_id, fields, keys,
                                          [call_id], also)

    async def _append_chained(
        self, op: str, script: str, task_id: str, fields: dict[str, Any], keys: list[str], args: list[Any],
        also: list[tuple[Any, ...]],
    ) -> AuditRecord:
        """Chain the record in this task's next batch (redis_chain) and run `script` (KEYS: audit
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

    def _defer_agent_call(self, task_id: str, call_id: str, agent: str, history_entry: str) -> None:
        if len(self._agent_calls) >= 100_000:  # calls never finished (a bug elsewhere): stay bounded
            log.warning("agent_counters_dropped", count=len(self._agent_calls))
            self._agent_calls.clear()
        self._agent_calls[(task_id, call_id)] = (agent, history_entry.split(".", 1)[0])

    # -- credentials -------------------------------------------------------
    async def consume_credential(self, jti: str, exp: float) -> bool:
        ttl_ms = max(1000, int((exp - time.time() + 60) * 1000))
        out = await self._write("consume_credential", [("SET", f"guard:cred:{jti}", "1", "NX", "PX", ttl_ms)])
        return out[0] is not None

    # -- approvals ---------------------------------------------------------
    @staticmethod
    def _approval(j: str, status: str, decisions: str) -> Approval:
        d = json.loads(j)
        d.update(status=status, decisions=json.loads(decisions))
        return Approval.from_json(d)

    @staticmethod
    def _apr_keys(task_id: str, *parts: str) -> list[str]:
        return [_k(task_id, p) for p in parts]

    async def open_approval(self, approval: Approval) -> tuple[Approval, bool]:
        tid, aid = approval.task_id, approval.approval_id
        await self._write("open_approval", [("SET", f"guard:apr:{aid}", tid)])  # findable before anyone knows the id
        args = [aid, approval.call_digest, _num(approval.created_at), _num(approval.expires_at),
                approval.required, json.dumps(approval.to_json())]
        created, j, status, decisions = await self._script(
            "OPEN_APPROVAL", self._apr_keys(tid, "apr:pending", "apr:latest", "apr"), args)
        if not created:
            await self._write("open_approval", [("DEL", f"guard:apr:{aid}")])
        return self._approval(j, status, decisions), bool(created)

    async def get_approval(self, approval_id: str) -> Approval | None:
        tid = await self._approval_task(approval_id)
        if tid is None:
            return None
        f = [f"{p}:{approval_id}" for p in ("j", "s", "d")]

        async def fetch() -> list[str | None]:
            return [None if v is None else str(v) for v in await self._r.hmget(_k(tid, "apr"), f)]

        j, status, decisions = await self._read("get_approval", fetch)
        return self._approval(j, status or "", decisions or "[]") if j else None

    async def _approval_task(self, approval_id: str) -> str | None:
        async def fetch() -> str | None:
            tid = await self._r.get(f"guard:apr:{approval_id}")
            return str(tid) if tid is not None else None

        return await self._read("get_approval", fetch)

    async def decide_approval(
        self, approval_id: str, decision: dict[str, Any], now: float
    ) -> tuple[DecideOutcome, Approval | None]:
        tid = await self._approval_task(approval_id)
        if tid is None:
            return "not_found", None
        args = [approval_id, str(decision["approver"]), str(decision["decision"]), json.dumps(decision), _num(now)]
        out = await self._script("DECIDE_APPROVAL", self._apr_keys(tid, "apr:pending", "apr"), args)
        if out[0] == "not_found":
            return "not_found", None
        return out[0], self._approval(out[1], out[2], out[3])

    async def consume_approval(self, task_id: str, call_digest: str, now: float) -> Approval | None:
        out = await self._script("CONSUME_APPROVAL", self._apr_keys(task_id, "apr:latest", "apr"),
                                 [call_digest, _num(now)])
        return self._approval(out[1], out[2], out[3]) if out else None

    async def latest_approval(self, task_id: str, call_digest: str) -> Approval | None:
        keys = self._apr_keys(task_id, "apr:latest", "apr:pending", "apr")
        out = await self._script("LATEST_APPROVAL", keys, [call_digest, _num(time.time())])
        return self._approval(out[1], out[2], out[3]) if out else None

    async def list_approvals(self, task_id: str | None = None, status: str | None = None) -> list[Approval]:
        tids = [task_id] if task_id is not None else await self._members(TASKS)

        async def fetch() -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            for tid in tids:
                pipe.hgetall(_k(tid, "apr"))
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
        key = _agent_key(agent)
        used = tool if kind == "call_allowed" and tool is not None else ""
        commands.append(("EVAL", lua.AGENT_EVENT, 2, key, f"{key}:tools", _COUNTER[kind], _num(now), used))
        # on every event, not once per process: Redis may lose the set (a restart without its
        # append-only file) while this process sees no error; another hash slot than the agent's
        commands.append(("SADD", AGENTS, agent))

    async def agent_stats(self) -> dict[str, AgentStats]:
        agents = await self._members(AGENTS)

        async def fetch() -> list[Any]:
            pipe = self._r.pipeline(transaction=False)
            for agent in agents:
                pipe.hgetall(_agent_key(agent))
                pipe.smembers(f"{_agent_key(agent)}:tools")
            return list(await pipe.execute())

        out = await self._read("agent_stats", fetch) if agents else []
        return {a: _agent_stats(a, row, tools) for a, row, tools in zip(agents, out[::2], out[1::2], strict=True)}

    async def suspend_agent(self, agent: str, reason: str, actor: str, now: float) -> bool:
        changed = await self._script("SET_SUSPENDED", [_agent_key(agent)], ["1", reason, actor, _num(now)])
        await self._write("suspend_agent", [("SADD", AGENTS, agent)])
        return bool(changed)

    async def restore_agent(self, agent: str) -> bool:
        return bool(await self._script("SET_SUSPENDED", [_agent_key(agent)], ["0", "", "", ""]))

    async def is_suspended(self, agent: str) -> bool:
        async def fetch() -> bool:
            return bool(await self._r.hget(_agent_key(agent), "suspended") == "1")

        return await self._read("is_suspended", fetch)

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
        keys = [_k(task_id, "audit"), _k(task_id, "audit:tail")]
        also: list[tuple[Any, ...]] = []
        if agent_event is not None:
            self._agent_cmds(also, str(fields["agent"]), agent_event, float(fields["ts"]), None)
        return await self._append_chained("append_audit", "APPEND_AUDIT", task_id, fields, keys, [], also)

    async def read_audit(self, task_id: str) -> list[AuditRecord]:
        async def fetch() -> list[str]:
            return [str(v) for v in await self._r.lrange(_k(task_id, "audit"), 0, -1)]

        lines = await self._read("read_audit", fetch)
        return [AuditRecord(json.loads(line)) for line in lines]


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
