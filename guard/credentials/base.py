"""The provider protocol: what a credential mode gives a call, and how a per-task holding is revoked.

A provider is built once per tool (per policy set) and asked for each forwarded call:

    issued = await provider.issue(request)      # headers for the tool, and what the audit may say
    await provider.revoke(holding)              # per-task providers only: at task end

Providers raise `CredentialUnavailable` when they cannot answer (fail closed: nothing is forwarded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from guard.domain import Action, Caller, TaskState, ToolCall, frozen
from guard.policy.model import ToolSpec

__all__ = ["CredentialRequest", "Holding", "HoldsNothing", "Issued", "Provider"]


@frozen
class CredentialRequest:
    """One call that needs a credential."""

    call: ToolCall
    caller: Caller
    state: TaskState
    action: Action
    tool: ToolSpec
    ttl_s: int  # for credentials the guard signs itself


@frozen
class Issued:
    """The headers for the tool and the audit's `credential` field (never a secret)."""

    headers: dict[str, str]
    audit: dict[str, Any] | None = None
    jti: str | None = None  # a guard-signed credential's id (jwt mode)


@dataclass(frozen=True, slots=True)
class Holding:
    """Something taken for one task that must be given back when it ends (a lease, a token),
    as kept in the store: `data` is sealed there (it may carry the secret itself)."""

    task_id: str
    agent: str
    tool: str
    kind: str  # lease | token
    expires_at: float
    data: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """For the audit and logs: a lease id prefix or a token id, never the secret."""
        return str(self.data.get("id_hint", ""))


class Provider(Protocol):
    mode: str

    async def issue(self, req: CredentialRequest) -> Issued: ...

    async def revoke(self, holding: Holding) -> None:
        """Give back one holding of a task that ended; raise to have it retried."""

    def forget(self, task_id: str) -> None:
        """Drop what this instance remembers of a task that ended."""

    def prune(self, now: float) -> None:
        """Drop what this instance remembers past its expiry."""

    async def close(self) -> None: ...


class HoldsNothing:
    """The part of `Provider` for one that keeps nothing per task (jwt, static, none): nothing to
    revoke, forget, prune or close."""

    async def revoke(self, holding: Holding) -> None:
        return None

    def forget(self, task_id: str) -> None:
        return None

    def prune(self, now: float) -> None:
        return None

    async def close(self) -> None:
        return None
