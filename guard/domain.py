"""Frozen values that travel between the stages of a call: the call as parsed, its caller and
action, what was minted for it; tasks, approvals, deliveries and audit records as the stores keep them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal, Protocol, TypeVar, dataclass_transform

from guard.canonical import args_digest, compact_json

TaskStatus = Literal["active", "completed", "revoked", "expired"]
Effect = Literal["allow", "deny", "step_up"]
ApprovalStatus = Literal["pending", "approved", "denied", "expired", "consumed"]

__all__ = [
    "AGENT_COUNTERS",
    "PLAIN",
    "Action",
    "Activity",
    "Admission",
    "AgentEvent",
    "AgentStats",
    "Approval",
    "ApprovalStatus",
    "AuditRecord",
    "Authorized",
    "BaselineStats",
    "CallLimits",
    "CallTrace",
    "Caller",
    "Delivery",
    "Effect",
    "Minted",
    "Presented",
    "Retention",
    "Task",
    "TaskState",
    "TaskStatus",
    "ToolCall",
    "frozen",
]

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True)
def frozen(cls: type[_T]) -> type[_T]:
    """A frozen dataclass for the type checker (mypy refuses an assignment to a field), a plain
    slotted one at run time, hashed as a frozen one. For the values made on every call: a
    frozen dataclass's `__init__` sets each field through `object.__setattr__`, which makes
    building one about six times as costly (a ToolCall, 18 fields: 6.4 µs against 1.0 µs)."""
    return dataclass(slots=True, unsafe_hash=True)(cls)


@dataclass(frozen=True, slots=True)
class Task:
    task_id: str
    agent: str
    purpose: str
    requested_by: str | None
    status: TaskStatus
    created_at: float
    expires_at: float
    max_calls: int | None = None
    tools: tuple[str, ...] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    idle_s: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "agent": self.agent,
            "purpose": self.purpose,
            "requested_by": self.requested_by,
            "status": self.status,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "max_calls": self.max_calls,
            "tools": list(self.tools) if self.tools is not None else None,
            "labels": dict(self.labels),
            "idle_s": self.idle_s,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Task:
        tools = d.get("tools")
        return cls(
            task_id=d["task_id"],
            agent=d["agent"],
            purpose=d["purpose"],
            requested_by=d.get("requested_by"),
            status=d["status"],
            created_at=float(d["created_at"]),
            expires_at=float(d["expires_at"]),
            max_calls=d.get("max_calls"),
            tools=tuple(tools) if tools is not None else None,
            labels=dict(d.get("labels") or {}),
            idle_s=d.get("idle_s"),
            ended_at=d.get("ended_at"),
            end_reason=d.get("end_reason"),
        )


@frozen
class TaskState:
    """A task as one call sees it: the task, its call count, last call and history."""

    task: Task
    calls: int
    last_call_at: float
    history: frozenset[str]  # "tool.action" of allowed calls so far

    def effective_status(self, now: float) -> TaskStatus:
        """The status, with expiry (absolute or idle) applied as of `now`."""
        t = self.task
        if t.status != "active":
            return t.status
        if now >= t.expires_at:
            return "expired"
        if t.idle_s is not None and now - self.last_call_at >= t.idle_s:
            return "expired"
        return "active"


@frozen
class CallLimits:
    """What admit_call checks and counts, atomically."""

    call_id: str
    now: float
    history_entry: str  # "tool.action" recorded when admitted
    parent_call_id: str | None = None  # chained call: the parent must still be in flight
    rates: tuple[tuple[str, int, float], ...] = ()  # (rule_id, calls, per_s)
    count: bool = True  # counts against max_calls and rates, marks in flight
    agent: str | None = None  # when set and admitted, counts an allowed call of `history_entry`'s tool for the agent

    @property
    def tool(self) -> str:
        """The tool of `history_entry`."""
        return self.history_entry.split(".", 1)[0]


AgentEvent = Literal["task_created", "call_allowed", "call_denied", "unregistered_attempt"]
# the AgentStats counter each event adds one to (both stores keep the same names)
AGENT_COUNTERS: dict[AgentEvent, str] = {
    "task_created": "tasks_created",
    "call_allowed": "calls",
    "call_denied": "denied",
    "unregistered_attempt": "attempts",
}


@frozen
class AgentStats:
    """What the store knows about one agent (sub): activity counters and its suspension."""

    agent: str
    first_seen: float | None = None
    last_seen: float | None = None
    tasks_created: int = 0
    calls: int = 0  # allowed calls
    denied: int = 0  # refused calls of its tasks
    attempts: int = 0  # task creations refused because the agent is not in the inventory
    tools_used: frozenset[str] = frozenset()
    suspended: bool = False
    suspended_reason: str | None = None
    suspended_by: str | None = None
    suspended_at: float | None = None


@frozen
class Admission:
    ok: bool
    reason: str | None = None  # task_inactive | txn_inactive | budget_exhausted | rate_limited | not_found
    rule_id: str | None = None  # the rule whose rate was hit
    retry_after: float | None = None
    calls: int = 0


@dataclass(frozen=True, slots=True)
class Approval:
    approval_id: str
    task_id: str
    call_digest: str  # digest of (tool, action, canonical args)
    tool: str
    action: str
    method: str
    path: str
    args: Any  # the call's JSON arguments (shown to approvers)
    rule_id: str
    approvers: tuple[str, ...]  # webhook names
    required: int
    status: ApprovalStatus
    created_at: float
    expires_at: float
    decisions: tuple[dict[str, Any], ...] = ()  # {approver, decision, reason, at, via}

    def to_json(self) -> dict[str, Any]:
        return {
            "approval_id": self.approval_id,
            "task_id": self.task_id,
            "call_digest": self.call_digest,
            "tool": self.tool,
            "action": self.action,
            "method": self.method,
            "path": self.path,
            "args": self.args,
            "rule_id": self.rule_id,
            "approvers": list(self.approvers),
            "required": self.required,
            "status": self.status,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "decisions": [dict(d) for d in self.decisions],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Approval:
        return cls(
            approval_id=d["approval_id"],
            task_id=d["task_id"],
            call_digest=d["call_digest"],
            tool=d["tool"],
            action=d["action"],
            method=d["method"],
            path=d["path"],
            args=d.get("args"),
            rule_id=d["rule_id"],
            approvers=tuple(d.get("approvers") or ()),
            required=int(d.get("required", 1)),
            status=d["status"],
            created_at=float(d["created_at"]),
            expires_at=float(d["expires_at"]),
            decisions=tuple(d.get("decisions") or ()),
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """One pending webhook delivery of an approval request, kept in the store until it
    succeeds or its approval is no longer pending. `owner`/`lease_until`: the instance
    delivering it; another instance may take it over once the lease has run out."""

    delivery_id: str
    approval_id: str
    task_id: str
    agent: str
    webhook: str  # the webhook's name in approvals.webhooks
    body: str  # the exact JSON payload, re-sent unchanged on every attempt
    expires_at: float  # the approval's expiry: no attempt after it
    attempts: int = 0
    owner: str = ""
    lease_until: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id,
            "approval_id": self.approval_id,
            "task_id": self.task_id,
            "agent": self.agent,
            "webhook": self.webhook,
            "body": self.body,
            "expires_at": self.expires_at,
            "attempts": self.attempts,
            "owner": self.owner,
            "lease_until": self.lease_until,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Delivery:
        return cls(
            delivery_id=d["delivery_id"],
            approval_id=d["approval_id"],
            task_id=d["task_id"],
            agent=d["agent"],
            webhook=d["webhook"],
            body=d["body"],
            expires_at=float(d["expires_at"]),
            attempts=int(d.get("attempts", 0)),
            owner=str(d.get("owner", "")),
            lease_until=float(d.get("lease_until", 0.0)),
        )


@frozen
class AuditRecord:
    """One chained audit record; `fields` holds the JSON object including seq, prev_hash, hash.
    `line` is its JSON as stored (the canonical form that was hashed, then `hash`), when the
    record was chained here: it is serialized once, not again by each place that stores it."""

    fields: dict[str, Any]
    line: bytes | None = field(default=None, compare=False, repr=False)

    def json_line(self) -> bytes:
        """The record as one JSON object (no newline)."""
        if self.line is not None:
            return self.line
        return compact_json(self.fields)

    @property
    def seq(self) -> int:
        return int(self.fields["seq"])

    @property
    def hash(self) -> str:
        return str(self.fields["hash"])


@dataclass(frozen=True, slots=True)
class Retention:
    """How long state outlives its task (config `retention`): an ended task's state is deleted
    `ended_task_s` after it ended, its audit trail `audit_s` after (None: kept)."""

    ended_task_s: float | None = 604800.0
    audit_s: float | None = None


# -- one call through the pipeline ---------------------------------------------------------


@frozen
class Presented:
    """What the caller proved besides holding a token (guard.identity.binding): the SPIFFE ID of its
    connection's verified client certificate, and a verified DPoP proof (replay not yet checked)."""

    scheme: Literal["bearer", "dpop"] = "bearer"  # of the Authorization header
    spiffe_id: str | None = None
    dpop_jkt: str | None = None
    dpop_replay_key: str | None = None
    dpop_exp: float = 0.0


PLAIN = Presented()


class CallTrace(Protocol):
    """A call's span while telemetry is on (guard.telemetry); `ToolCall.trace` is None when it is off,
    and nothing on the call's path does any tracing work then."""

    def stage(self, name: str) -> None:
        """The stage `name` starts (a child span); the one before it ends."""

    def decided(self, caller: Caller, effect: str, rule_id: str | None, action: str | None) -> None:
        """The call's task, agent and decision, for the call span's attributes."""

    def to_tool(self, call: ToolCall) -> ToolCall:
        """`call` as the tool will receive it: an MCP request carries the forward span's `traceparent`
        in `params._meta` (before the credential, whose `call_digest` covers the body sent)."""

    def forwarding(self) -> dict[str, str]:
        """The forward span starts; the headers that carry it to the tool (`traceparent`)."""

    def answered(self, status: int) -> None:
        """The tool's HTTP status."""


@frozen
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
    audience: str = "guard"  # the task token's `aud`: an OAuth access token's is its MCP endpoint (resource)
    trace: CallTrace | None = None  # its span, when telemetry is on (guard.telemetry)

    @property
    def path_qs(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path


@frozen
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


@frozen
class Minted:
    headers: dict[str, str]  # credential header (if any), Txn-Token, Guard-Task-Id, Guard-Call-Id
    credential_jti: str | None
    audit: dict[str, Any] | None = None  # call_forwarded's `credential`: {mode, source, version|token_id|lease}


@frozen
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


# -- baselines (guard.signals.baseline) ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Activity:
    """An agent's activity after one more call was counted (BaselineStore.observe_activity)."""

    first_at: float  # the agent's first counted call
    known: bool  # the agent had called this tool.action before
    hour_calls: int  # calls in the current clock hour, this one included
    busiest: int  # the most calls of any earlier hour


@dataclass(frozen=True, slots=True)
class BaselineStats:
    """An agent's baseline as the inventory shows it."""

    first_at: float | None
    actions: frozenset[str]
    busiest: int
    hour_calls: int
