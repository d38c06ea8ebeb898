"""Every Redis key of the store, built here and nowhere else. The keys of one task share the
hash tag `{<task_id>}`, so every script touches one slot:

    guard:{T}:task        hash: json (the task as created), status, ended_at, end_reason,
                          calls, last_call_at, expires_at, idle_s, max_calls, agent
    guard:{T}:hist        set of "tool.action" of allowed calls (policy `history`)
    guard:{T}:inflight    set of call ids in flight (their Txn-Tokens work)
    guard:{T}:rate:<rule> sorted set: call id scored by time, a sliding window per rule
    guard:{T}:apr         hash: every approval of the task (see scripts.py)
    guard:{T}:apr:pending hash: call digest -> id of the pending approval
    guard:{T}:apr:latest  hash: call digest -> id of the latest approval
    guard:{T}:audit       list of the task's audit records (JSON), in seq order
    guard:{T}:audit:tail  hash: seq, hash of the last record
    guard:tasks           set of every task id (list_tasks)
    guard:tasks:expiring  sorted set: task id by expires_at (retention ends tasks nobody ended)
    guard:tasks:ended     sorted set: "<task id> <agent>" by ended_at (retention's index)
    guard:apr:<id>        string: the task id of an approval (get by id)
    guard:{T}:data        set of the task's data labels (content and tool integrity)
    guard:{T}:values      hash: digest of a value the task received -> the call it came from
    guard:pins:<tool>     hash: MCP tool name -> pinned definition digest
    guard:{T}:creds       hash: the task's credential holdings (leases, tokens), slot -> sealed value
    guard:cred:<jti>      consumed credential ids, expiring a minute after the credential
    guard:creds:tasks     set of the tasks holding credentials (the expiry sweep reads it)
    guard:dpop:<digest>   a used DPoP proof (digest of its key and jti), until it could no longer be fresh
    guard:set:<digest>    a received Shared Signals SET (digest of its transmitter and jti), until it is stale
    guard:agent:{<sub>}   hash: inventory counters and suspension; `…:tools` set of tools used,
                          `…:tasks` set of the agent's task ids; `…:baseline` hash (first_at, hour,
                          count, busiest) and `…:actions` set of tool.actions (guard.signals.baseline)
    guard:agents          set of every agent seen
    guard:{deliveries}    hash: delivery id -> JSON; `guard:{deliveries}:leases` id -> lease
    guard:{oauth}:<kind>:<key>  string (JSON, expiring): OAuth requests, codes, clients, sessions,
                          refresh tokens (keys are digests); `…:refresh_used:<key>` a used refresh token
    guard:approvals       the pub/sub channel of decided approvals (guard/stores/notify.py)
    guard:task_ends       the pub/sub channel of ended tasks (guard/tasks/ends.py)
"""

from __future__ import annotations

__all__ = [
    "AGENTS",
    "APPROVALS_CHANNEL",
    "CREDENTIAL_TASKS",
    "DELIVERIES",
    "ENDED",
    "EXPIRING",
    "LEASES",
    "TASKS",
    "TASK_ENDS_CHANNEL",
    "agent_key",
    "approval_key",
    "credential_key",
    "dpop_key",
    "grant_key",
    "pins_key",
    "signal_key",
    "task_key",
    "task_keys",
]

TASKS = "guard:tasks"
EXPIRING = "guard:tasks:expiring"
ENDED = "guard:tasks:ended"
AGENTS = "guard:agents"
DELIVERIES = "guard:{deliveries}"
LEASES = "guard:{deliveries}:leases"
APPROVALS_CHANNEL = "guard:approvals"
CREDENTIAL_TASKS = "guard:creds:tasks"  # tasks holding per-task credentials (leases, tokens)
TASK_ENDS_CHANNEL = "guard:task_ends"


def task_key(task_id: str, part: str) -> str:
    return f"guard:{{{task_id}}}:{part}"


def task_keys(task_id: str, *parts: str) -> list[str]:
    """The keys of `parts` of a task, a new list (a caller may add to it)."""
    prefix = task_key(task_id, "")
    return [prefix + p for p in parts]


def agent_key(agent: str, part: str | None = None) -> str:
    """The agent's hash, or its `tools` / `tasks` set."""
    key = f"guard:agent:{{{agent}}}"
    return key if part is None else f"{key}:{part}"


def pins_key(tool: str) -> str:
    return f"guard:pins:{tool}"


def credential_key(jti: str) -> str:
    return f"guard:cred:{jti}"


def approval_key(approval_id: str) -> str:
    return f"guard:apr:{approval_id}"


def dpop_key(digest: str) -> str:
    return f"guard:dpop:{digest}"


def signal_key(digest: str) -> str:
    return f"guard:set:{digest}"


def grant_key(kind: str, key: str) -> str:
    """An OAuth grant or session (guard.oauth): all of them share the hash tag `{oauth}`."""
    return f"guard:{{oauth}}:{kind}:{key}"
