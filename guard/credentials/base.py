"""The provider protocol: what a credential mode gives a forwarded call.

A provider is built once and asked for each forwarded call:

    issued = await provider.issue(request)      # the headers that carry the credential to the tool

A provider fails closed: it raises a GuardError (nothing is forwarded) when it cannot make the
credential. It never logs or audits the credential itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from guard.domain import Action, Caller, TaskState, ToolCall
from guard.policy import ToolSpec

__all__ = ["CredentialRequest", "Issued", "Provider"]


@dataclass(frozen=True, slots=True)
class CredentialRequest:
    """One call that needs a credential."""

    call: ToolCall
    caller: Caller
    state: TaskState
    action: Action
    tool: ToolSpec
    ttl_s: int  # for credentials the guard signs itself


@dataclass(frozen=True, slots=True)
class Issued:
    """The headers for the tool (replacing the agent's own)."""

    headers: dict[str, str]
    jti: str | None = None  # a guard-signed credential's id (jwt mode)


class Provider(Protocol):
    mode: str  # the tool's `credential.mode` this provider serves

    async def issue(self, req: CredentialRequest) -> Issued: ...
