"""Approvals: list them, read one, and decide it (as an approver with a JWT, or signed with a webhook secret)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from guard.approvals.signature import SIGNATURE_HEADER, TOLERANCE_S, SignatureError, signed_at, signer_of
from guard.canonical import sha256_hex
from guard.deps import Deps
from guard.domain import Approval
from guard.errors import ApprovalClosed, BadRequest, DuplicateDecision, Forbidden, NotFound, Unauthenticated
from guard.identity.auth import ADMIN, APPROVER, require_role
from guard.log import get_logger
from guard.routes.call import task_principal
from guard.routes.common import DEPS, authorized, json_response, read_body

__all__ = ["routes"]

routes = web.RouteTableDef()
log = get_logger("guard.approvals")
MAX_DECISION_BYTES = 16384


class DecisionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    decision: Literal["approve", "deny"]
    reason: str | None = Field(None, max_length=1000)
    approver: str | None = Field(None, min_length=1, max_length=320)  # only read from signed requests
    # binds a signed decision to one approval: the signature covers the body, not the URL
    approval_id: str | None = Field(None, max_length=128)


@dataclass(frozen=True, slots=True)
class Decider:
    approver: str
    via: str  # "jwt" or "webhook:<name>"
    webhook: str | None


async def _approval(deps: Deps, approval_id: str) -> Approval:
    a = await deps.store.get_approval(approval_id)
    if a is None:
        raise NotFound("no such approval", approval_id=approval_id)
    return a


@routes.get("/v1/approvals")
async def list_approvals(request: web.Request) -> web.Response:
    """Approver, admin: `?status=pending` (the default) or any approval status, with task context."""
    await authorized(request, APPROVER, ADMIN)
    deps = request.app[DEPS]
    status = request.query.get("status", "pending")
    approvals = await deps.approvals.pending() if status == "pending" else await deps.store.list_approvals(None, status)
    out = []
    for a in sorted(approvals, key=lambda a: a.created_at):
        item = deps.approvals.describe(a)
        item.update(method=a.method, path=a.path, created_at=a.created_at, required=a.required)
        state = await deps.store.get_task(a.task_id)
        if state is not None:
            t = state.task
            item["task"] = {"task_id": t.task_id, "agent": t.agent, "purpose": t.purpose,
                            "requested_by": t.requested_by}
        out.append(item)
    return json_response({"approvals": out})


@routes.get("/v1/approvals/{approval_id}")
async def get_approval(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    who = await task_principal(request, deps)  # a bound task token only from its holder
    a = await _approval(deps, request.match_info["approval_id"])
    state = await deps.store.get_task(a.task_id)
    txn = who.claims.get("txn")
    owner = state is not None and who.sub == state.task.agent and txn in (None, a.task_id)
    if not owner:
        if txn is not None:  # a task token speaks only for its own task
            raise Forbidden("this task token is for another task", approval_id=a.approval_id)
        require_role(who, APPROVER, ADMIN)
    return json_response(deps.approvals.describe(a))


def _parse(body: bytes) -> DecisionRequest:
    try:
        return DecisionRequest.model_validate(json.loads(body or b"{}"))
    except (ValueError, UnicodeDecodeError) as e:
        if isinstance(e, ValidationError):
            err = e.errors()[0]
            raise BadRequest(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}") from e
        raise BadRequest("malformed JSON body") from e


async def _decider(request: web.Request, deps: Deps, body: bytes, req: DecisionRequest) -> Decider:
    """Who decides: the webhook whose secret signed the raw body (naming `approver`), or the
    approver authenticated by the bearer token."""
    signature = request.headers.get(SIGNATURE_HEADER)
    if signature is not None:
        try:
            webhook = signer_of(signature, body, deps.approvals.webhooks.secrets)
        except SignatureError as e:
            raise Unauthenticated(str(e)) from e
        # each signed request counts once: a captured one cannot be replayed (here or on another approval)
        once = f"sig:{webhook}:{signed_at(signature)}:{sha256_hex(body)}"  # what the MAC covers
        if not await deps.store.consume_credential(once, time.time() + 2 * TOLERANCE_S):
            raise Unauthenticated("this signed request was already used; sign each request afresh")
        if not req.approver:
            raise BadRequest("approver: a signed decision must name the approver")
        return Decider(req.approver, f"webhook:{webhook}", webhook)
    who = await authorized(request, APPROVER)
    return Decider(who.sub, "jwt", None)


async def _check_duties(deps: Deps, a: Approval, decider: Decider) -> str:
    """Separation of duties; returns the task's agent (for the audit record)."""
    if decider.webhook is not None and decider.webhook not in a.approvers:
        raise Forbidden(f"webhook {decider.webhook!r} is not an approver of rule {a.rule_id}",
                        approval_id=a.approval_id, rule_id=a.rule_id)
    state = await deps.store.get_task(a.task_id)
    if state is None:
        raise NotFound("the approval's task is gone", approval_id=a.approval_id)
    task = state.task
    me = decider.approver.casefold()
    conflict = None
    if task.requested_by is not None and me == task.requested_by.casefold():
        conflict = "requested the task"
    elif me == task.agent.casefold():
        conflict = "is the task's agent"
    if conflict is not None:
        await deps.audit.append(a.task_id, "approval_decision_refused", task.agent, approval_id=a.approval_id,
                                approver=decider.approver, via=decider.via, detail="separation_of_duties")
        raise Forbidden(f"the approver {conflict}: separation of duties", approval_id=a.approval_id,
                        task_id=a.task_id)
    return task.agent


@routes.post("/v1/approvals/{approval_id}/decision")
async def decide(request: web.Request) -> web.Response:
    deps = request.app[DEPS]
    body = await read_body(request, MAX_DECISION_BYTES)
    req = _parse(body)
    decider = await _decider(request, deps, body, req)
    a = await _approval(deps, request.match_info["approval_id"])
    if req.approval_id is not None and req.approval_id != a.approval_id:
        raise BadRequest("approval_id: the decision names another approval", approval_id=a.approval_id)
    agent = await _check_duties(deps, a, decider)
    decision: dict[str, Any] = {"approver": decider.approver, "decision": req.decision, "reason": req.reason,
                                "at": time.time(), "via": decider.via}
    outcome, updated = await deps.store.decide_approval(a.approval_id, decision, time.time())
    ids = {"approval_id": a.approval_id, "task_id": a.task_id}
    if outcome == "not_found" or updated is None:
        raise NotFound("no such approval", **ids)
    if outcome == "closed":
        raise ApprovalClosed(f"the approval is {updated.status}", **ids)
    if outcome == "duplicate":
        raise DuplicateDecision(f"{decider.approver} already decided this approval", **ids)
    await deps.approvals.decided(updated, agent, decision)
    return json_response(deps.approvals.describe(updated))
