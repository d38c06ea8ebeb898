"""The credential provider protocol: given the call it is for, a provider returns the headers that
carry the call's credential to the tool (and the credential's id, when it has one).

A provider fails closed: it raises a GuardError (nothing is forwarded) when it cannot make the
credential. It never logs or audits the credential itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from guard.domain import Action, Caller, Task, ToolCall
from guard.policy import ToolSpec

__all__ = ["Credential", "CredentialProvider", "CredentialRequest"]


@dataclass(frozen=True, slots=True)
class CredentialRequest:
    """What a provider may bind a credential to: one call of one task, to one tool and action."""

    call: ToolCall
    caller: Caller
    task: Task
    action: Action
    tool: ToolSpec
    ttl_s: int  # how long the credential may live
    now: int  # unix seconds, the same for every token of the call

    @property
    def scope(self) -> str:
        return f"{self.tool.name}.{self.action.name}"


@dataclass(frozen=True, slots=True)
class Credential:
    headers: dict[str, str]  # added to the forwarded request (replacing the agent's own)
    jti: str | None = None  # the credential's id, when it has one (single-use credentials)


class CredentialProvider(Protocol):
    mode: str  # the tool's `credential.mode` this provider serves

    async def issue(self, request: CredentialRequest) -> Credential:
        """The credential of one forwarded call, or a GuardError when it cannot be made."""
        ...
