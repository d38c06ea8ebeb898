"""The OpenAPI 3.1 description of the guard's own API, served at `GET /openapi.json`.

Every path and method here is checked against a running guard by tests/e2e/test_openapi.py:
it exists, and its documented error answers are `application/problem+json`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from guard import __version__

__all__ = ["openapi_document"]

JSON = "application/json"
PROBLEM = "application/problem+json"
_ERRORS = {
    "400": "Malformed JSON or bad fields (`bad_request`)",
    "401": "Missing, malformed, expired or wrongly signed token (`unauthenticated`)",
    "403": "Role, ownership or policy does not allow it (`forbidden`, `denied`, …)",
    "404": "No such task, approval or tool (`not_found`, `unknown_tool`)",
    "409": "The approval is no longer pending (`approval_closed`)",
    "413": "Body over `max_body_bytes` (`payload_too_large`)",
    "429": "A rate or the task's budget is used up (`rate_limited`, `budget_exhausted`)",
    "502": "The tool failed (`upstream_unavailable`)",
    "503": "The state store is unreachable: nothing forwarded (`store_unavailable`)",
    "504": "The tool did not answer in time (`upstream_timeout`)",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    return out


S: dict[str, Any] = {"type": "string"}
N: dict[str, Any] = {"type": "number"}
I: dict[str, Any] = {"type": "integer"}  # noqa: E741
B: dict[str, Any] = {"type": "boolean"}
ANY: dict[str, Any] = {}
NS: dict[str, Any] = {"type": ["string", "null"]}

SCHEMAS: dict[str, Any] = {
    "Problem": _obj({"type": S, "title": S, "status": I, "detail": S, "code": S, "task_id": S, "call_id": S,
                     "approval_id": S, "rule_id": S}, ("title", "status", "detail", "code")),
    "TaskCreate": _obj({"purpose": S, "requested_by": S, "ttl_s": I, "max_calls": I,
                        "tools": {"type": "array", "items": S},
                        "labels": {"type": "object", "additionalProperties": S}}, ("purpose",)),
    "TaskCreated": _obj({"task_id": S, "task_token": S, "status": S, "expires_at": N, "agent": S,
                         "binding": {"enum": ["bearer", "mtls", "dpop"]}, "token_type": {"enum": ["Bearer", "DPoP"]}},
                        ("task_id", "task_token", "status", "expires_at", "agent")),
    "Task": _obj({"task_id": S, "agent": S, "purpose": S, "requested_by": NS,
                  "status": {"enum": ["active", "completed", "revoked", "expired"]}, "created_at": N,
                  "expires_at": N, "calls": I, "max_calls": {"type": ["integer", "null"]},
                  "labels": {"type": "object"}, "pending_approvals": {"type": "array", "items": S}},
                 ("task_id", "agent", "purpose", "status", "calls")),
    "TaskTools": _obj({"task_id": S, "tools": {"type": "array", "items": {"type": "object"}}}, ("task_id", "tools")),
    "TaskList": _obj({"tasks": {"type": "array", "items": _ref("Task")}, "total": I}, ("tasks",)),
    "Revoke": _obj({"reason": S}),
    "AuditRecord": _obj({"seq": I, "ts": N, "task_id": S, "event": S, "call_id": S, "agent": S, "tool": S,
                         "action": S, "effect": S, "rule_id": S, "chain": {"type": "array", "items": S},
                         "approval_id": S, "status": I, "latency_ms": N, "detail": S, "prev_hash": S, "hash": S},
                        ("seq", "ts", "task_id", "event", "agent", "prev_hash", "hash")),
    "AuditTrail": _obj({"task_id": S, "verified": B, "first_bad_seq": I, "reason": S,
                        "records": {"type": "array", "items": _ref("AuditRecord")}},
                       ("task_id", "verified", "records")),
    "Agent": _obj({"agent": S, "owner": NS, "purpose": NS, "registered": B, "first_seen": N, "last_seen": N,
                   "active_tasks": I, "calls": I, "denied": I, "tools_used": {"type": "array", "items": S},
                   "suspended": B}, ("agent",)),
    "Approval": _obj({"approval_id": S, "status": {"enum": ["pending", "approved", "denied", "expired", "consumed"]},
                      "task_id": S, "tool": S, "action": S, "args": ANY, "rule_id": S, "expires_at": N,
                      "decisions": {"type": "array", "items": {"type": "object"}}},
                     ("approval_id", "status", "task_id", "tool", "action")),
    "ApprovalList": _obj({"approvals": {"type": "array", "items": _ref("Approval")}}, ("approvals",)),
    "Decision": _obj({"decision": {"enum": ["approve", "deny"]}, "reason": S, "approver": S}, ("decision",)),
    "Introspection": _obj({"active": B, "sub": S, "scope": S, "txn": S, "aud": S, "exp": I, "call_digest": S,
                           "chain": {"type": "array", "items": S}}, ("active",)),
    "Jwks": _obj({"keys": {"type": "array", "items": {"type": "object"}}}, ("keys",)),
    "Health": _obj({"status": S}, ("status",)),
}


def _json(schema: str | dict[str, Any], description: str) -> dict[str, Any]:
    body = _ref(schema) if isinstance(schema, str) else schema
    return {"description": description, "content": {JSON: {"schema": body}}}


def _op(summary: str, ok: dict[str, Any], errors: tuple[str, ...] = (), *, ok_status: str = "200",
        body: str | None = None, secured: bool = True, tag: str = "tasks",
        params: tuple[str, ...] = (), query: tuple[str, ...] = ()) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": {ok_status: ok}}
    for code in errors:
        op["responses"][code] = {"$ref": f"#/components/responses/E{code}"}
    if body:
        op["requestBody"] = {"required": True, "content": {JSON: {"schema": _ref(body)}}}
    if not secured:
        op["security"] = []
    parameters = [{"name": p, "in": "path", "required": True, "schema": S} for p in params]
    parameters += [{"name": q, "in": "query", "required": False, "schema": S} for q in query]
    if parameters:
        op["parameters"] = parameters
    return op


def _paths() -> dict[str, Any]:
    auth = ("401", "403")
    tid, aid = ("task_id",), ("approval_id",)
    return {
        "/healthz": {"get": _op("Liveness", _json("Health", "alive"), secured=False, tag="operations")},
        "/readyz": {"get": _op("Readiness: 503 when the store is unreachable", _json("Health", "ready"),
                               secured=False, tag="operations")},
        "/metrics": {"get": _op("Prometheus metrics", {"description": "text exposition format",
                                                       "content": {"text/plain": {"schema": S}}},
                                secured=False, tag="operations")},
        "/openapi.json": {"get": _op("This document", _json({"type": "object"}, "OpenAPI 3.1"), secured=False,
                                     tag="operations")},
        "/.well-known/jwks.json": {"get": _op("The guard's public keys", _json("Jwks", "JWKS"), secured=False,
                                              tag="tokens")},
        "/v1/tasks": {
            "post": _op("Create a task (agent, IdP token)", _json("TaskCreated", "created"),
                        ("400", "401", "403", "503"), ok_status="201", body="TaskCreate"),
            "get": _op("List tasks (admin, auditor)", _json("TaskList", "tasks, newest first"),
                       ("400", *auth), query=("status", "agent", "limit")),
        },
        "/v1/tasks/{task_id}": {"get": _op("A task (owner agent, admin, auditor)", _json("Task", "the task"),
                                           (*auth, "404"), params=tid)},
        "/v1/tasks/{task_id}/tools": {"get": _op(
            "The tools the task may reach and their actions (owner agent)",
            _json("TaskTools", "{name, kind, url, actions: [{name, method, path}]} per tool"), (*auth, "404"),
            params=tid)},
        "/v1/tasks/{task_id}/complete": {"post": _op("End the task (owner agent)", _json("Task", "completed"),
                                                     (*auth, "404"), params=tid)},
        "/v1/tasks/{task_id}/revoke": {"post": _op("Revoke the task (admin)", _json("Task", "revoked"),
                                                   ("400", *auth, "404"), body="Revoke", params=tid)},
        "/v1/tasks/{task_id}/audit": {"get": _op(
            "The task's audit trail (auditor, admin); Accept: application/x-ndjson for one record a line, "
            "format=ocsf for one OCSF API Activity event (class_uid 6003) a line",
            _json("AuditTrail", "records and the chain's verification"), ("400", *auth, "404"), params=tid,
            query=("format",), tag="audit")},
        "/v1/audit": {"get": _op("Export audit records since a time (auditor, admin); format=ocsf for OCSF events",
                                 {"description": "one record (or OCSF event) a line",
                                  "content": {"application/x-ndjson": {"schema": _ref("AuditRecord")}}},
                                 ("400", *auth), query=("since", "format"), tag="audit")},
        "/v1/agents": {"get": _op("The agent inventory (admin, auditor)",
                                  _json({"type": "array", "items": _ref("Agent")}, "agents"), auth, tag="agents")},
        "/v1/agents/{sub}/suspend": {"post": _op("Suspend an agent and revoke its tasks (admin)",
                                                 _json("Agent", "suspended"), auth, body="Revoke",
                                                 params=("sub",), tag="agents")},
        "/v1/agents/{sub}/restore": {"post": _op("Lift a suspension (admin)", _json("Agent", "restored"), auth,
                                                 params=("sub",), tag="agents")},
        "/v1/agents/{sub}/history": {"get": _op(
            "The agent's history: Shared Signals about it and the suspensions they caused (admin, auditor)",
            _json(_obj({"agent": S, "records": {"type": "array", "items": _ref("AuditRecord")}}), "history"), auth,
            params=("sub",), tag="agents")},
        "/v1/signals/streams": {"get": _op(
            "The Shared Signals streams guard listens to: status, last event, SETs received and refused, "
            "failed polls (admin, auditor)", _json({"type": "array", "items": {"type": "object"}}, "streams"), auth,
            tag="agents")},
        "/v1/approvals": {"get": _op("Approvals by status, pending by default (approver, admin)",
                                     _json("ApprovalList", "approvals"), auth, query=("status",), tag="approvals")},
        "/v1/approvals/{approval_id}": {"get": _op("An approval (owner agent, approver, admin)",
                                                   _json("Approval", "the approval"), (*auth, "404"), params=aid,
                                                   tag="approvals")},
        "/v1/approvals/{approval_id}/decision": {"post": _op(
            "Approve or deny (approver, or a request signed with a webhook secret)", _json("Approval", "recorded"),
            ("400", *auth, "404", "409"), body="Decision", params=aid, tag="approvals")},
        "/v1/credentials/introspect": {"post": _op(
            "RFC 7662 introspection; consumes the credential", _json("Introspection", "active or not"),
            secured=False, tag="tokens")},
        "/tools/{tool}/{path}": {m: _op(
            "An http tool call (task token or Txn-Token); `path` may contain slashes",
            {"description": "the tool's answer"}, ("400", "401", "403", "404", "413", "429", "502", "503", "504"),
            params=("tool", "path"), tag="calls") for m in ("get", "post", "put", "patch", "delete")},
        "/mcp/{tool}": _mcp(),
    }


def _mcp() -> dict[str, Any]:
    """MCP answers in JSON-RPC: a refused request is HTTP 200 with error -32001 and the problem
    details in `error.data`; a body that is not JSON-RPC is a JSON-RPC error with HTTP 400. A request
    without a token is a 401 with the challenge (RFC 9728), whatever its body."""
    post = _op("MCP streamable HTTP request (task token or Txn-Token)",
               {"description": "the MCP server's answer, or a JSON-RPC error whose `data` is problem details"},
               ("401", "413"), params=("tool",), tag="calls")
    post["responses"]["400"] = _json({"type": "object"}, "not a JSON-RPC message: a JSON-RPC error object")
    errors = ("400", "401", "403", "404", "413", "429", "502", "503", "504")
    out = {m: _op("MCP streamable HTTP (task token or Txn-Token)", {"description": "the MCP server's answer"},
                  errors, params=("tool",), tag="calls") for m in ("get", "delete")}
    return {**out, "post": post}


@cache
def openapi_document() -> dict[str, Any]:
    responses = {f"E{code}": {"description": text, "content": {PROBLEM: {"schema": _ref("Problem")}}}
                 for code, text in _ERRORS.items()}
    return {
        "openapi": "3.1.0",
        "info": {"title": "guard", "version": __version__,
                 "description": "A zero-trust proxy between AI agents and the tools they call. Errors are "
                                "RFC 9457 problem details with a stable `code`."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "schemas": SCHEMAS,
            "responses": responses,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                                "dpop": {"type": "http", "scheme": "DPoP", "bearerFormat": "JWT",
                                         "description": "A DPoP-bound task token with a DPoP proof (RFC 9449)"},
                                "mtls": {"type": "mutualTLS", "description": "An X.509-SVID (listen.tls)"}},
        },
    }
