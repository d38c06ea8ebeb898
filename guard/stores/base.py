"""The state store protocols. Each method is one atomic operation on its backend.

One protocol per role (tasks, calls, credentials, approvals, agents, deliveries, audit chain);
`Store` combines them, and each consumer is typed on the roles it uses. Backends (memory.py,
redis/) implement `Store` and never import each other; tests/contract runs one suite over both."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from guard.domain import (
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

__all__ = [
    "BASELINE_MAX_ACTIONS",
    "AgentStore",
    "ApprovalStore",
    "AuditStore",
    "BaselineStore",
    "CallStore",
    "ContentStore",
    "CredentialStore",
    "DecideOutcome",
    "DeliveryStore",
    "GrantStore",
    "RefreshOutcome",
    "RegistrationLimits",
    "RegistrationOutcome",
    "RetentionStore",
    "SignalStore",
    "Store",
    "TaskStore",
]

BASELINE_MAX_ACTIONS = 1000  # tool.actions remembered per agent (MCP tool names are the caller's to choose)
DecideOutcome = Literal["recorded", "closed", "duplicate", "not_found"]
RefreshOutcome = Literal["rotated", "reused", "unknown"]
RegistrationOutcome = Literal["registered", "full", "rate_limited"]


@dataclass(frozen=True, slots=True)
class RegistrationLimits:
    """Dynamic client registration's limits (config `oauth.registration`)."""

    max_clients: int  # registered clients kept at once, across every instance
    per_source: int  # registrations per source address and window
    window_s: float


class TaskStore(Protocol):
    async def create_task(self, task: Task) -> None: ...

    async def get_task(self, task_id: str) -> TaskState | None:
        """The task with its call count, last call time and history; None if unknown."""

    async def end_task(self, task_id: str, status: str, now: float, reason: str | None) -> Task | None:
        """Move an active task to `status` (completed/revoked/expired) and expire its pending
        approvals, atomically. Returns the ended task, or None when it was not active."""

    async def list_tasks(self, status: str | None = None, agent: str | None = None) -> list[TaskState]: ...


class RetentionStore(Protocol):
    """What retention (guard/tasks/retention.py) asks of the store: tasks nobody ended, and ended
    tasks whose time is up."""

    retention: Retention

    async def expired_tasks(self, now: float, limit: int = 500) -> list[str]:
        """Ids of tasks still active in the store whose `expires_at` (or, in memory, idle time)
        has passed, for the caller to end (as expired), so that their state goes in turn. An
        ended task is not returned (Redis hands each id out once)."""

    async def purge_ended(self, now: float, limit: int = 1000) -> int:
        """Forget the tasks that ended `retention.ended_task_s` or more before `now` (at most
        `limit` of them): their task, history, in-flight calls, rate windows, approvals and
        pending deliveries (in Redis, expired by the TTL end_task set; here, their index
        entries), and their audit trail unless the durable audit folder or `audit_s` keeps it.
        After that get_task answers None. Returns how many were forgotten."""


class CallStore(Protocol):
    async def admit_call(self, task_id: str, limits: CallLimits) -> Admission:
        """Atomically: the task is active (not ended, not expired, not idle) and, for a
        chained call, the parent call is still in flight; then, when `limits.count`, the
        call fits `max_calls` and every rate; then counts it, records `history_entry`,
        sets last_call_at and marks `call_id` in flight. With `limits.agent`, an admitted
        call also counts as an allowed call of that agent (as record_agent_event
        "call_allowed" with the tool of `history_entry`), in the same operation."""

    async def finish_call(self, task_id: str, call_id: str) -> None:
        """The call's response was sent (or it failed): its Txn-Token stops working."""

    async def call_in_flight(self, task_id: str, call_id: str) -> bool: ...

    async def admit_and_record(
        self, task_id: str, limits: CallLimits, fields: dict[str, Any]
    ) -> tuple[Admission, AuditRecord | None]:
        """admit_call and, when admitted, append_audit(fields) (the decision record), as one
        atomic operation: a refused call changes nothing and appends nothing. The agent's
        inventory counter (`limits.agent`) may be applied later, at the latest with the call's
        record_and_finish or finish_call."""


class CredentialStore(Protocol):
    async def consume_credential(self, jti: str, exp: float) -> bool:
        """True the first time a jti is consumed, False ever after (until exp)."""

    # -- per-task credentials (leases, tokens), kept with the task -----------
    async def hold_credential(self, task_id: str, slot: str, value: str, previous: str | None = None) -> str:
        """Compare-and-set the task's holding `slot` to `value` when it holds `previous` (None:
        nothing); returns what the slot holds afterwards (ours, or another instance's)."""

    async def held_credential(self, task_id: str, slot: str) -> str | None: ...

    async def claim_credentials(self, task_id: str) -> dict[str, str]:
        """Atomically take (and delete) every holding of the task: only one caller gets them."""

    async def credential_tasks(self) -> list[str]:
        """Tasks that may hold credentials (for the expiry sweep)."""

    async def consume_dpop_jti(self, key: str, exp: float) -> bool:
        """True the first time a DPoP proof (`key`: a digest of its key and jti) is used, False
        ever after (until exp); kept apart from credential jtis."""


class ApprovalStore(Protocol):
    async def open_approval(self, approval: Approval) -> tuple[Approval, bool]:
        """The pending approval for (task_id, call_digest) if there is one, else store this
        one. Returns (approval, created)."""

    async def get_approval(self, approval_id: str) -> Approval | None: ...

    async def decide_approval(
        self, approval_id: str, decision: dict[str, Any], now: float
    ) -> tuple[DecideOutcome, Approval | None]:
        """Record one approver's decision ({approver, decision: approve|deny, reason, at, via})
        on a pending, unexpired approval. One deny denies; `required` distinct approvals
        approve. The same approver twice is a duplicate."""

    async def consume_approval(self, task_id: str, call_digest: str, now: float) -> Approval | None:
        """Atomically turn the approved, unexpired approval for this call into consumed."""

    async def latest_approval(self, task_id: str, call_digest: str) -> Approval | None:
        """The most recent approval (any status) for this exact call."""

    async def list_approvals(self, task_id: str | None = None, status: str | None = None) -> list[Approval]: ...


class AgentStore(Protocol):
    """The inventory."""

    async def record_agent_event(self, agent: str, kind: AgentEvent, now: float, tool: str | None = None) -> None:
        """Count one event of an agent (first_seen once, last_seen always); `call_allowed`
        adds `tool` to its tools used."""

    async def agent_stats(self) -> dict[str, AgentStats]:
        """Every agent ever seen or suspended, by sub."""

    async def suspend_agent(self, agent: str, reason: str, actor: str, now: float) -> bool:
        """Mark the agent suspended; False when it already was (the first reason stays)."""

    async def restore_agent(self, agent: str) -> bool:
        """Lift a suspension; False when the agent was not suspended."""

    async def is_suspended(self, agent: str) -> bool: ...


class DeliveryStore(Protocol):
    """Webhook deliveries."""

    async def save_delivery(self, delivery: Delivery) -> None:
        """Insert or replace a pending webhook delivery (by delivery_id)."""

    async def claim_deliveries(self, owner: str, now: float, lease_until: float) -> list[Delivery]:
        """Atomically take every pending delivery that `owner` already holds or whose lease
        ran out before `now`: set its owner and lease_until, and return them."""

    async def delete_delivery(self, delivery_id: str) -> None:
        """The delivery succeeded or is no longer needed."""


class AuditStore(Protocol):
    async def append_audit(
        self, task_id: str, fields: dict[str, Any], agent_event: AgentEvent | None = None
    ) -> AuditRecord:
        """Append to the task's chain: fills seq, prev_hash and hash. With `agent_event`, the
        record's agent also gets that inventory event (as record_agent_event at the record's
        `ts`), in the same round trip; it is counted once, however often the append is retried."""

    async def read_audit(self, task_id: str) -> list[AuditRecord]:
        """The task's chain as this store keeps it (the memory store with a durable audit folder
        keeps only tails: AuditLog reads the trail from the folder)."""

    async def record_and_finish(self, task_id: str, call_id: str, fields: dict[str, Any]) -> AuditRecord:
        """append_audit(fields) (the call's last record) and finish_call, as one operation."""


class GrantStore(Protocol):
    """OAuth grants and people's sessions (guard.oauth)."""

    async def put_grant(self, kind: str, key: str, data: dict[str, Any], ttl_s: float) -> None:
        """Store a small JSON object under (kind, key) for `ttl_s` seconds (an authorization
        request, a code, a registered client, a sign-in session). Keys are digests, never secrets."""

    async def get_grant(self, kind: str, key: str) -> dict[str, Any] | None:
        """The object under (kind, key), or None when missing or expired."""

    async def take_grant(self, kind: str, key: str) -> dict[str, Any] | None:
        """Atomically read and delete: the first caller gets the object, every later one None
        (single-use codes, sign-in states, logout)."""

    async def rotate_refresh(self, old: str, new: str, ttl_s: float) -> tuple[RefreshOutcome, dict[str, Any] | None]:
        """A refresh token's digest `old` is used once: when it is the current one of its family,
        mark it used and store its object under `new` ("rotated", the object). When it was used
        before: ("reused", the object), and nothing changes. Unknown or expired: ("unknown", None).
        A family's first token is stored with put_grant("refresh", digest, object, ttl)."""

    async def register_client(self, client_id: str, data: dict[str, Any], ttl_s: float, source: str,
                              limits: RegistrationLimits, now: float) -> tuple[RegistrationOutcome, float]:
        """Count a registration attempt of `source` in its window (the window starts at its first
        attempt and lasts `limits.window_s`); over `limits.per_source`: ("rate_limited", seconds
        until the window ends), nothing stored. Else, when `limits.max_clients` clients (unexpired)
        are kept already: ("full", 0). Else store `data` as put_grant("client", client_id, data,
        ttl_s) would, and count it until it expires: ("registered", 0). One atomic step."""


class SignalStore(Protocol):
    """Shared Signals (guard.signals)."""

    async def consume_signal_jti(self, key: str, exp: float) -> bool:
        """True the first time a SET (`key`: a digest of its transmitter and jti) is seen, by any
        instance, False ever after (until exp); kept apart from credential and DPoP jtis."""


class BaselineStore(Protocol):
    """Agents' baselines (guard.signals.baseline): the tool.actions each used and its calls per hour."""

    async def observe_activity(self, agent: str, key: str, now: float) -> Activity:
        """Count one call of `agent` to `key` ("tool.action") at `now`, atomically: the agent's
        first call time is set once, `known` says whether it used `key` before (an agent keeps at
        most BASELINE_MAX_ACTIONS; past that a new one stays unknown), the current clock hour's
        count goes up, and the count of the hour before it is kept as `busiest` when higher."""

    async def baseline_stats(self, agents: list[str]) -> dict[str, BaselineStats]:
        """The baselines of these agents (those that have one)."""


class ContentStore(Protocol):
    """Content and tool integrity (guard.content): a task's data labels and the digests of values
    it received (they end with the task's state), and MCP tool definition pins (for every instance)."""

    async def add_task_data(self, task_id: str, labels: Iterable[str]) -> None:
        """Add data labels to the task (a set: adding one twice changes nothing)."""

    async def task_data(self, task_id: str) -> frozenset[str]:
        """The task's data labels (empty for an unknown task)."""

    async def remember_values(self, task_id: str, digests: Mapping[str, str]) -> None:
        """Remember value digests for the task, each with the call it came from (the first one kept)."""

    async def recall_values(self, task_id: str, digests: Iterable[str]) -> dict[str, str]:
        """The digests among `digests` the task remembers, with the call each came from."""

    async def tool_pins(self, tool: str) -> dict[str, str]:
        """The pinned definition digest of each MCP tool name of `tool`."""

    async def pin_first(self, tool: str, pins: Mapping[str, str]) -> dict[str, str]:
        """Pin each name not pinned yet (trust on first use); answers every pin of these names as
        it is after the operation (a name pinned before keeps its pin)."""

    async def set_pins(self, tool: str, pins: Mapping[str, str]) -> None:
        """Replace the pins of these names (an admin accepted the current definitions)."""


class Store(TaskStore, RetentionStore, CallStore, CredentialStore, ApprovalStore, AgentStore, DeliveryStore,
            AuditStore, GrantStore, ContentStore, SignalStore, BaselineStore, Protocol):
    """Everything stateful. Backends raise StoreUnavailable when they cannot answer."""

    async def ping(self) -> None: ...

    async def close(self) -> None: ...
