"""The values a call carries through the pipeline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from guard.canonical import args_digest
from guard.domain import TaskState

__all__ = ["PLAIN", "Action", "Authorized", "Caller", "Minted", "Presented", "ToolCall"]


@dataclass(frozen=True, slots=True)
class Presented:
    """What the caller proved besides holding a token (guard.binding): the SPIFFE ID of its
    connection's verified client certificate, and a verified DPoP proof (replay not yet checked)."""

    scheme: Literal["bearer", "dpop"] = "bearer"  # of the Authorization header
    spiffe_id: str | None = None
    dpop_jkt: str | None = None
    dpop_replay_key: str | None = None
    dpop_exp: float = 0.0


PLAIN = Presented()


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One request through the guard, as parsed by the HTTP or MCP front end."""

    call_id: str
    kind: Literal["http", "mcp"]
    tool: str
    method: str  # the HTTP method the tool will receive
    path: str  # the tool path, raw (percent-encoded as received), beginning with "/"
    query: str  # raw query string, without "?"
    body: bytes
    bearer: str | None  # Authorization: Bearer …
    txn_token: str | None  # Txn-Token header
    prefer_wait: float = 0.0
    content_type: str = ""
    mcp_action: str | None = None  # MCP: the tool name of tools/call
    mcp_args: Any = None  # MCP: params.arguments
    counted: bool = True  # False for MCP traffic that is not a tools/call
    connected: Callable[[], bool] | None = None  # False once the client went away (ends a hold)
    presented: Presented = PLAIN  # mTLS identity and DPoP proof of the request

    @property
    def path_qs(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


@dataclass(frozen=True, slots=True)
class Caller:
    agent: str
    task_id: str
    chain: tuple[str, ...]  # tools that led here (empty for a direct call)
    parent_call_id: str | None  # the call whose Txn-Token was presented
    via: Literal["task_token", "txn_token"]
    binding: Literal["bearer", "mtls", "dpop"] = "bearer"  # how its token is bound to it
    spiffe_id: str | None = None  # the workload the token is bound to (cnf.spiffe_id)


@dataclass(frozen=True)
class Action:
    tool: str
    name: str
    args: Any

    @cached_property
    def digest(self) -> str:
        """Binds approvals and the decision record to tool, action and canonical args (computed
        when first needed: a refused call never needs it)."""
        return args_digest(self.tool, self.name, self.args)


@dataclass(frozen=True, slots=True)
class Minted:
    headers: dict[str, str]  # credential header (if any), Txn-Token, Guard-Task-Id, Guard-Call-Id
    credential_jti: str | None
    audit: dict[str, Any] | None = None  # call_forwarded's `credential`: {mode, source, version|token_id|lease}


@dataclass(frozen=True, slots=True)
class Authorized:
    call: ToolCall
    caller: Caller
    state: TaskState
    action: Action
    rule_id: str | None
    upstream: str
    timeout_s: float
    minted: Minted
    audit_fields: dict[str, Any] = field(default_factory=dict)
