"""Approval webhooks: background delivery of approval requests, with retries.

Each request is signed (signature.py). Deliveries are kept in the store until they succeed or their approval stops being
pending, so a restarted guard resumes them; each attempt and its outcome is audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import replace
from typing import Any, Literal, Protocol

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, retry_if_result, wait_random_exponential

from guard.approvals.signature import SIGNATURE_HEADER, sign
from guard.audit.log import AuditLog
from guard.config import Config
from guard.domain import Approval, Delivery, TaskState
from guard.errors import AuditUnavailable, StoreUnavailable
from guard.identity.tokens import new_id
from guard.log import get_logger
from guard.stores.base import ApprovalStore, DeliveryStore

__all__ = ["WebhookStore", "Webhooks", "approval_payload"]

log = get_logger("guard.webhooks")

LEASE_S = 30.0  # an instance holds the deliveries it works on this long, renewed every LEASE_S / 3
ATTEMPT_TIMEOUT_S = 10.0
BACKOFF_S = 0.5  # exponential backoff with full jitter: up to 0.5, 1, 2, 4 … s
BACKOFF_MAX_S = 30.0

Outcome = Literal["done", "failed"]


def approval_payload(approval: Approval, state: TaskState, public_url: str) -> dict[str, Any]:
    task = state.task
    return {
        "type": "approval.requested",
        "approval_id": approval.approval_id,
        "task": {"task_id": task.task_id, "agent": task.agent, "purpose": task.purpose,
                 "requested_by": task.requested_by},
        "call": {"tool": approval.tool, "action": approval.action, "method": approval.method,
                 "path": approval.path, "args": approval.args},
        "rule_id": approval.rule_id,
        "expires_at": approval.expires_at,
        "decision_url": f"{public_url.rstrip('/')}/v1/approvals/{approval.approval_id}/decision",
    }


class WebhookStore(ApprovalStore, DeliveryStore, Protocol):
    """What approvals and their webhook deliveries need of the store."""


class Webhooks:
    """Delivers approval requests in the background; owned by the app's lifecycle."""

    def __init__(self, cfg: Config, store: WebhookStore, audit: AuditLog) -> None:
        self.store = store
        self.audit = audit
        self.public_url = cfg.base_url
        # a webhook without its secret is left out altogether: it is never called, and nothing
        # signed with an empty key is accepted (load_config refuses such a config anyway)
        hooks = [w for w in cfg.approvals.webhooks if cfg.environ.get(w.secret_env)]
        self.urls = {w.name: w.url for w in hooks}
        self.secrets = {w.name: cfg.environ[w.secret_env] for w in hooks}
        self.owner = new_id("inst")
        self._jobs: dict[str, asyncio.Task[None]] = {}
        self._finished: dict[str, float] = {}  # delivery id -> when; a claim racing a finish must not revive it
        self._sweeper: asyncio.Task[None] | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Resume the deliveries left in the store, then keep their lease while running."""
        self._http = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())
        with contextlib.suppress(StoreUnavailable):
            await self._claim()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def close(self) -> None:
        """Stop delivering; unfinished deliveries stay in the store for the next start."""
        jobs = [j for j in (self._sweeper, *self._jobs.values()) if j is not None]
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        with contextlib.suppress(StoreUnavailable):  # let a restarted guard take them over at once
            for d in await self.store.claim_deliveries(self.owner, time.time(), 0.0):
                log.info("webhook_released", approval_id=d.approval_id, webhook=d.webhook)
        if self._http is not None:
            await self._http.close()

    async def request(self, approval: Approval, state: TaskState) -> None:
        """Persist one delivery per approver webhook and start delivering in the background."""
        body = json.dumps(approval_payload(approval, state, self.public_url), separators=(",", ":"),
                          ensure_ascii=False)
        for name in approval.approvers:
            if name not in self.urls:
                await self.audit.append(approval.task_id, "webhook_failed", state.task.agent,
                                        approval_id=approval.approval_id, webhook=name, attempt=0,
                                        detail="unknown_webhook")
                log.error("webhook_unknown", task_id=approval.task_id, approval_id=approval.approval_id, webhook=name)
                continue
            d = Delivery(new_id("dlv"), approval.approval_id, approval.task_id, state.task.agent, name, body,
                         approval.expires_at, owner=self.owner, lease_until=time.time() + LEASE_S)
            await self.store.save_delivery(d)
            self._spawn(d)

    def _spawn(self, d: Delivery) -> None:
        job = self._jobs.get(d.delivery_id)
        if (job is not None and not job.done()) or d.delivery_id in self._finished:
            return
        job = asyncio.get_running_loop().create_task(self._deliver(d))
        self._jobs[d.delivery_id] = job
        job.add_done_callback(lambda _: self._jobs.pop(d.delivery_id, None))

    def _finished_now(self, delivery_id: str) -> None:
        now = time.monotonic()
        self._finished[delivery_id] = now
        for old in [k for k, at in self._finished.items() if at < now - 4 * LEASE_S]:
            del self._finished[old]

    async def _claim(self) -> None:
        now = time.time()
        for d in await self.store.claim_deliveries(self.owner, now, now + LEASE_S):
            self._spawn(d)

    async def _sweep(self) -> None:
        """Renew our lease and take over deliveries whose instance went away."""
        while True:
            await asyncio.sleep(LEASE_S / 3)
            try:
                await self._claim()
            except StoreUnavailable:
                log.warning("webhook_sweep_failed")

    async def _deliver(self, d: Delivery) -> None:
        current = d

        async def attempt() -> Outcome:
            nonlocal current
            outcome, current = await self._attempt(current)
            return outcome

        backoff = wait_random_exponential(multiplier=BACKOFF_S, max=BACKOFF_MAX_S)

        def wait(rs: RetryCallState) -> float:  # the last attempt lands just before expiry
            return max(0.0, min(backoff(rs), current.expires_at - 1.0 - time.time()))

        def stop(rs: RetryCallState) -> bool:
            return time.time() >= current.expires_at - 1.0

        async def gave_up(rs: RetryCallState) -> Outcome:
            await self._finish(current, "webhook_abandoned", "the approval expired before a delivery succeeded")
            return "failed"

        retrying = AsyncRetrying(
            wait=wait,
            stop=stop,
            retry=retry_if_result(lambda o: o == "failed")
            | retry_if_exception_type((StoreUnavailable, AuditUnavailable)),
            retry_error_callback=gave_up,
        )
        try:
            await retrying(attempt)
        except (StoreUnavailable, AuditUnavailable):
            log.error("webhook_abandoned", task_id=d.task_id, approval_id=d.approval_id, webhook=d.webhook)

    async def _attempt(self, d: Delivery) -> tuple[Outcome, Delivery]:
        a = await self.store.get_approval(d.approval_id)
        now = time.time()
        if a is None or a.status != "pending" or a.expires_at <= now:
            closed = "expired" if a is None or a.status == "pending" else a.status
            await self._finish(d, "webhook_cancelled", f"approval {closed}")
            return "done", d
        d = replace(d, attempts=d.attempts + 1)
        status, error = await self._post(d, min(ATTEMPT_TIMEOUT_S, max(0.1, d.expires_at - now)))
        fields = {"approval_id": d.approval_id, "webhook": d.webhook, "attempt": d.attempts, "status": status}
        if status is not None and 200 <= status < 300:
            await self.audit.append(d.task_id, "webhook_delivered", d.agent, **fields)
            self._finished_now(d.delivery_id)
            await self.store.delete_delivery(d.delivery_id)
            log.info("webhook_delivered", task_id=d.task_id, approval_id=d.approval_id, webhook=d.webhook,
                     attempt=d.attempts, status=status)
            return "done", d
        await self.audit.append(d.task_id, "webhook_failed", d.agent, detail=error, **fields)
        await self.store.save_delivery(d)
        log.warning("webhook_failed", task_id=d.task_id, approval_id=d.approval_id, webhook=d.webhook,
                    attempt=d.attempts, status=status, reason=error)
        return "failed", d

    async def _post(self, d: Delivery, timeout_s: float) -> tuple[int | None, str | None]:
        assert self._http is not None
        body = d.body.encode()
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: sign(self.secrets[d.webhook], body),
                   "Guard-Delivery-Id": d.delivery_id}
        try:
            async with self._http.post(self.urls[d.webhook], data=body, headers=headers, allow_redirects=False,
                                       timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
                await r.read()
                return r.status, None if 200 <= r.status < 300 else "http_status"
        except TimeoutError:
            return None, "timeout"
        except aiohttp.ClientError:
            return None, "connection_error"

    async def _finish(self, d: Delivery, event: str, detail: str) -> None:
        await self.audit.append(d.task_id, event, d.agent, approval_id=d.approval_id, webhook=d.webhook,
                                attempt=d.attempts, detail=detail)
        self._finished_now(d.delivery_id)
        await self.store.delete_delivery(d.delivery_id)
        log.info(event, task_id=d.task_id, approval_id=d.approval_id, webhook=d.webhook, attempt=d.attempts)
