"""`Transmitter`: guard's own Shared Signals, CAEP `session-revoked` SETs pushed (RFC 8935) to each
configured receiver for every task this instance revokes or lets expire and every agent it suspends,
whoever triggered it (a person, a signal, idle expiry, a refresh token reused).

    tx = Transmitter(cfg, keys, audit, http)
    ends.on_ended_here(tx.task_ended); ends.on_suspended_here(tx.agent_suspended)
    tx.start() ... await tx.close()

Each SET is signed with guard's key (`kid` in its header, the key at /.well-known/jwks.json, named by
/.well-known/ssf-configuration), `typ: secevent+jwt`. Each receiver has its own queue and worker, so
SETs reach it in order; a delivery is retried with backoff up to `attempts` (tenacity), a 400 is not
retried. Queuing never waits: a receiver that is down never slows a revocation (a full queue drops
its oldest SET, logged). Each outcome is audited `signal_sent` (or `signal_failed`) with the jti, in
the trail of the task it is about, or in the agent's history trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from guard.audit.log import AuditLog
from guard.config import Config, ReceiverCfg
from guard.domain import Task
from guard.identity.tokens import GuardKeys
from guard.log import get_logger
from guard.signals.receiver import CAEP, agent_trail
from guard.signals.sets import SET_TYP

__all__ = ["SESSION_REVOKED", "Transmitter", "ssf_configuration", "subject_of"]

log = get_logger("guard.signals")
SESSION_REVOKED = CAEP + "session-revoked"
QUEUE_MAX = 10_000
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class _Retry(Exception):
    """A delivery worth trying again (the receiver unreachable, or answering 5xx/429)."""

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.status = status


@dataclass(frozen=True, slots=True)
class _Outgoing:
    trail: str  # the audit trail the outcome goes to
    agent: str
    task_id: str | None
    claims: dict[str, Any]


def subject_of(agent: str, task_id: str | None) -> dict[str, Any]:
    """The SET's sub_id: the agent (a URI such as a SPIFFE ID, else opaque), with the task as the
    session in a complex subject."""
    app = {"format": "uri", "uri": agent} if _URI.match(agent) else {"format": "opaque", "id": agent}
    if task_id is None:
        return app
    return {"format": "complex", "application": app, "session": {"format": "opaque", "id": task_id}}


def ssf_configuration(cfg: Config) -> dict[str, Any]:
    """/.well-known/ssf-configuration (SSF 1.0 transmitter metadata): who signs and where the keys are."""
    base = cfg.base_url.rstrip("/")
    return {"spec_version": "1_0", "issuer": cfg.issuer, "jwks_uri": f"{base}/.well-known/jwks.json",
            "delivery_methods_supported": ["urn:ietf:rfc:8935"],
            "events_supported": [SESSION_REVOKED],
            "critical_subject_members": []}


class Transmitter:
    def __init__(self, cfg: Config, receivers: list[ReceiverCfg], keys: GuardKeys, audit: AuditLog,
                 http: aiohttp.ClientSession) -> None:
        self.cfg, self.receivers, self.keys, self.audit, self.http = cfg, receivers, keys, audit, http
        self._queues = [asyncio.Queue[_Outgoing](QUEUE_MAX) for _ in receivers]
        self._workers: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._workers = [loop.create_task(self._deliver_forever(r, q)) for r, q in zip(self.receivers, self._queues,
                                                                                          strict=True)]

    async def close(self) -> None:
        for w in self._workers:
            w.cancel()
        for w in self._workers:
            with contextlib.suppress(asyncio.CancelledError):
                await w

    # -- what is sent ---------------------------------------------------------------------------
    def task_ended(self, task: Task) -> None:
        if task.status not in ("revoked", "expired"):
            return  # a completed task was not revoked: nothing to say
        reason = f"task {task.status}: {task.end_reason or ''}".strip()[:200]
        self._queue(task.task_id, task.agent, task.task_id, reason)

    def agent_suspended(self, agent: str, reason: str) -> None:
        self._queue(agent_trail(agent), agent, None, f"agent suspended: {reason}"[:200])

    def _queue(self, trail: str, agent: str, task_id: str | None, reason: str) -> None:
        now = int(time.time())
        event = {"event_timestamp": now, "initiating_entity": "policy", "reason_admin": {"en": reason}}
        for r, q in zip(self.receivers, self._queues, strict=True):
            claims = {"iss": self.cfg.issuer, "aud": r.audience, "iat": now, "jti": uuid.uuid4().hex,
                      "sub_id": subject_of(agent, task_id), "events": {SESSION_REVOKED: event}}
            if task_id is not None:
                claims["txn"] = task_id
            if q.full():
                dropped = q.get_nowait()
                log.error("signal_dropped", receiver=r.url, jti=dropped.claims["jti"], task_id=dropped.task_id)
            q.put_nowait(_Outgoing(trail, agent, task_id, claims))

    def sign(self, claims: dict[str, Any]) -> str:
        pair = self.keys.current
        return jwt.encode(claims, pair.key, algorithm=pair.alg, headers={"kid": pair.kid, "typ": SET_TYP})

    # -- delivery -------------------------------------------------------------------------------
    async def _deliver_forever(self, r: ReceiverCfg, q: asyncio.Queue[_Outgoing]) -> None:
        while True:
            item = await q.get()
            try:
                await self._deliver(r, item)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not stop the worker
                log.exception("signal_delivery_crashed", receiver=r.url)

    async def _deliver(self, r: ReceiverCfg, item: _Outgoing) -> None:
        token = self.sign(item.claims)
        headers = {"Content-Type": "application/secevent+jwt", "Accept": "application/json"}
        if r.token is not None:
            headers["Authorization"] = f"Bearer {self._secret(r)}"
        status: int | None = None
        try:
            async for attempt in AsyncRetrying(stop=stop_after_attempt(r.attempts), wait=wait_exponential(0.2, max=5),
                                               retry=retry_if_exception_type(_Retry), reraise=True):
                with attempt:
                    status = await self._post(r, token, headers)
        except _Retry as e:
            await self._outcome("signal_failed", r, item, e.status, str(e))
            return
        if status == 202 or (status is not None and 200 <= status < 300):
            await self._outcome("signal_sent", r, item, status, None)
        else:
            await self._outcome("signal_failed", r, item, status, "refused by the receiver")

    async def _post(self, r: ReceiverCfg, token: str, headers: dict[str, str]) -> int:
        try:
            async with self.http.post(r.url, data=token, headers=headers,
                                      timeout=aiohttp.ClientTimeout(total=10)) as resp:
                await resp.read()
                if resp.status >= 500 or resp.status == 429:
                    raise _Retry(f"receiver answered {resp.status}", resp.status)
                return resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            raise _Retry(type(e).__name__) from e

    def _secret(self, r: ReceiverCfg) -> str:
        assert r.token is not None
        if r.token.env is not None:
            return self.cfg.environ.get(r.token.env, "")
        assert r.token.file is not None
        with open(r.token.file, encoding="utf-8") as f:
            return f.read().strip()

    async def _outcome(self, event: str, r: ReceiverCfg, item: _Outgoing, status: int | None,
                       error: str | None) -> None:
        fields: dict[str, Any] = {"receiver": r.url, "jti": item.claims["jti"], "event_type": SESSION_REVOKED,
                                  "status": status}
        if error is not None:
            fields["detail"] = error
        (log.info if event == "signal_sent" else log.warning)(event, task_id=item.task_id, agent=item.agent, **fields)
        try:
            await self.audit.append(item.trail, event, item.agent, **fields)
        except Exception:
            log.exception("signal_audit_failed", task_id=item.task_id, jti=item.claims["jti"])
