"""Step-up: bind an approval to the exact call, hold it with `Prefer: wait`, consume it once."""

from __future__ import annotations

import time

from guard.approvals.service import Approvals, effective_status
from guard.domain import Action, Approval, Caller, TaskState, ToolCall
from guard.errors import ApprovalDenied, ApprovalRequired, TaskInactive
from guard.identity.tokens import new_id
from guard.policy import Decision

__all__ = ["settle_approval"]


async def settle_approval(
    call: ToolCall, caller: Caller, state: TaskState, action: Action, decision: Decision, approvals: Approvals
) -> str:
    """Returns the id of the approval this call consumes, or raises approval_required/denied."""
    store = approvals.store
    ids = {"task_id": caller.task_id, "call_id": call.call_id, "rule_id": decision.rule_id}
    consumed = await store.consume_approval(caller.task_id, action.digest, time.time())
    if consumed is not None:
        await approvals.consumed(consumed, call.call_id, state)
        return consumed.approval_id
    latest = await store.latest_approval(caller.task_id, action.digest)
    # denied, or past expires_at while pending or granted and never used: refused, never reopened
    status = effective_status(latest, time.time()) if latest is not None else None
    if latest is not None and status in ("denied", "expired"):
        raise ApprovalDenied(f"the approval for this call was {status}", approval_id=latest.approval_id, **ids)
    if latest is None or latest.status != "pending":
        now = time.time()
        draft = Approval(
            approval_id=new_id("apr"),
            task_id=caller.task_id,
            call_digest=action.digest,
            tool=action.tool,
            action=action.name,
            method=call.method,
            path=call.path_qs,
            args=action.args,
            rule_id=decision.rule_id or "",
            approvers=decision.approvers,
            required=decision.approvals_required,
            status="pending",
            created_at=now,
            expires_at=now + approvals.ttl_s,
        )
        latest, created = await store.open_approval(draft)
        if created:
            await approvals.requested(latest, state, call.call_id)
    if call.prefer_wait > 0:
        status = await approvals.wait(latest.approval_id, min(call.prefer_wait, approvals.max_wait_s), call.connected,
                                      (caller.task_id, caller.agent))
        if status == "task_ended":
            raise TaskInactive("the task ended while the call was held", **ids)
        if status == "approved" and (call.connected is None or call.connected()):
            consumed = await store.consume_approval(caller.task_id, action.digest, time.time())
            if consumed is not None:
                await approvals.consumed(consumed, call.call_id, state)
                return consumed.approval_id
        elif status in ("denied", "expired"):
            raise ApprovalDenied(f"the approval for this call was {status}", approval_id=latest.approval_id, **ids)
    err = ApprovalRequired("an approver must approve this exact call", approval_id=latest.approval_id, **ids)
    err.headers["Retry-After"] = str(max(1, min(30, int(latest.expires_at - time.time()))))
    raise err


