"""`mode: vault_lease`: a dynamic secret (a database login) leased for one task at its first call,
its TTL cut to the task's remaining lifetime, revoked when the task ends.

Concurrent first calls of a task share one lease request; another instance finds the lease in
the store (kept with the task) and uses the same one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from guard.credentials.base import CredentialRequest, Holding, Issued
from guard.credentials.flight import shared
from guard.credentials.holdings import Holdings
from guard.credentials.vault import Vault, VaultError
from guard.errors import CredentialUnavailable
from guard.log import get_logger
from guard.policy.model import LeaseSpec

__all__ = ["LeaseProvider", "lease_hint"]

log = get_logger("guard.credentials.lease")


def lease_hint(lease_id: str) -> str:
    """What the audit says of a lease: the first 8 characters of its own id (after the path)."""
    return lease_id.rsplit("/", 1)[-1][:8]


class LeaseProvider:
    mode = "vault_lease"

    def __init__(self, tool: str, spec: LeaseSpec, vault: Vault | None, holdings: Holdings,
                 still_active: Callable[[str], Awaitable[bool]]) -> None:
        self.tool = tool
        self.spec = spec
        self.vault = vault
        self.holdings = holdings
        self.still_active = still_active
        self.slot = f"lease:{tool}"
        self._local: dict[str, tuple[float, Issued]] = {}  # task_id -> (lease expiry, headers)
        self._inflight: dict[str, asyncio.Future[Issued]] = {}

    async def issue(self, req: CredentialRequest) -> Issued:
        task_id = req.state.task.task_id
        hit = self._local.get(task_id)
        if hit is not None and hit[0] > time.time():
            return hit[1]
        return await shared(self._inflight, task_id, lambda: self._take(req))

    async def _take(self, req: CredentialRequest) -> Issued:
        if self.vault is None:
            raise CredentialUnavailable("secrets.vault is not configured")
        task = req.state.task
        now = time.time()
        found = await self.holdings.held(task.task_id, self.slot)
        if found is not None and found[0].expires_at > now + 1:
            holding = found[0]
        else:
            holding = await self._lease(req, now, found[1] if found is not None else None)
        issued = self._issued(holding)
        self._local[task.task_id] = (holding.expires_at, issued)
        return issued

    async def _lease(self, req: CredentialRequest, now: float, previous: str | None) -> Holding:
        assert self.vault is not None
        task = req.state.task
        remaining = int(task.expires_at - now)
        if remaining < 1:
            raise CredentialUnavailable("the task has no lifetime left for a lease")
        out = await self.vault.read_lease(self.spec.path)
        lease_id, duration = str(out.get("lease_id") or ""), int(out.get("lease_duration") or 0)
        data = out.get("data") or {}
        if not lease_id or not isinstance(data, dict):
            raise CredentialUnavailable("the secrets manager's answer holds no lease")
        if duration == 0 or duration > remaining:  # no longer than the task may live
            try:
                duration = min(await self.vault.shorten_lease(lease_id, remaining), remaining)
            except VaultError:
                await self._revoke_quietly(lease_id, task.task_id)
                raise CredentialUnavailable("the lease could not be limited to the task's lifetime") from None
        holding = Holding(task.task_id, task.agent, self.tool, "lease", now + duration,
                          {"lease_id": lease_id, "fields": {str(k): str(v) for k, v in data.items()},
                           "id_hint": lease_hint(lease_id)})
        held, ours = await self.holdings.hold(holding, self.slot, previous)
        if not ours:  # another instance leased for this task meanwhile: use that one
            await self._revoke_quietly(lease_id, task.task_id)
            return held
        log.info("lease_taken", task_id=task.task_id, call_id=req.call.call_id, tool=self.tool,
                 lease=holding.describe(), ttl_s=duration)
        if not await self.still_active(task.task_id):  # ended while we leased: it has been given back
            raise CredentialUnavailable("the task ended", task_id=task.task_id)
        return holding

    def _issued(self, holding: Holding) -> Issued:
        fields = holding.data["fields"]
        try:
            headers = {name: template.format_map(fields) for name, template in self.spec.headers.items()}
        except (KeyError, IndexError, ValueError):
            raise CredentialUnavailable("the lease lacks a field the headers name") from None
        return Issued(headers, {"mode": self.mode, "source": self.spec.path, "lease": holding.describe()})

    async def _revoke_quietly(self, lease_id: str, task_id: str) -> None:
        assert self.vault is not None
        with contextlib.suppress(VaultError, CredentialUnavailable):
            await self.vault.revoke_lease(lease_id)
            return
        log.warning("lease_revoke_failed", task_id=task_id, tool=self.tool, lease=lease_hint(lease_id))

    async def revoke(self, holding: Holding) -> None:
        self._local.pop(holding.task_id, None)
        if self.vault is None:
            raise CredentialUnavailable("secrets.vault is not configured")
        await self.vault.revoke_lease(str(holding.data["lease_id"]))

    def forget(self, task_id: str) -> None:
        self._local.pop(task_id, None)

    def prune(self, now: float) -> None:
        for task_id in [t for t, (exp, _) in self._local.items() if exp <= now]:
            del self._local[task_id]

    async def close(self) -> None:
        return None
